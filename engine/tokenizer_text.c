/* CLIP text normalisation and pre-tokenizer (openai/CLIP simple_tokenizer.py: basic_clean,
 * whitespace_clean, lower(), the split regex), in Python's semantics.
 *
 * basic_clean runs ftfy.fix_text; ftfy's mojibake repair is out of scope, this implements its
 * character maps (ftfy/chardata.py: control characters removed, Latin ligatures split,
 * halfwidth/fullwidth forms and U+3000 to standard width, curly quotes straightened) and its
 * final NFC. html.unescape follows Python's html module (numeric references with the HTML5
 * replacement rules, the 252 HTML 4 named entities plus &apos;, which include every name HTML5
 * accepts without ';', so the "longest legacy prefix" rule is exact). Other HTML5 names
 * (&check; ...) stay as they are.
 *
 * SPDX-License-Identifier: GPL-3.0-or-later */
#include "tokenizer.h"

#include <glib.h>
#include <stdlib.h>
#include <string.h>

#define CLIP_TEXT_MAX_BYTES (1u << 20)

/* Python `regex` module \s (Unicode White_Space). */
static int is_regex_space(gunichar c)
{
    return (c >= 0x09 && c <= 0x0d) || c == 0x20 || c == 0x85 || c == 0xa0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200a) || c == 0x2028 || c == 0x2029 || c == 0x202f ||
           c == 0x205f || c == 0x3000;
}

/* Python str.isspace(), used by str.strip(). */
static int is_py_space(gunichar c)
{
    return is_regex_space(c) || (c >= 0x1c && c <= 0x1f);
}

/* ---- ftfy character maps ------------------------------------------------------------- */

/* ftfy CONTROL_CHARS */
static int ftfy_is_control(gunichar c)
{
    return c <= 0x08 || c == 0x0b || (c >= 0x0e && c <= 0x1f) || c == 0x7f ||
           (c >= 0x206a && c <= 0x206f) || c == 0xfeff || (c >= 0xfff9 && c <= 0xfffc) ||
           (c >= 0x1d173 && c <= 0x1d17a) || (c >= 0xe0000 && c <= 0xe007f);
}

/* ftfy LIGATURES, or NULL */
static const char *ftfy_ligature(gunichar c)
{
    switch (c) {
    case 0x132: return "IJ";
    case 0x133: return "ij";
    case 0xfb00: return "ff";
    case 0xfb01: return "fi";
    case 0xfb02: return "fl";
    case 0xfb03: return "ffi";
    case 0xfb04: return "ffl";
    case 0xfb05: return "\xc5\xbft"; /* U+017F LATIN SMALL LETTER LONG S, t */
    case 0xfb06: return "st";
    default: return NULL;
    }
}

static void ftfy_subset(GString *out, const char *s)
{
    for (const char *p = s; *p; p = g_utf8_next_char(p)) {
        gunichar c = g_utf8_get_char(p);
        const char *lig = ftfy_ligature(c);
        if (ftfy_is_control(c))
            continue;
        if (lig) {
            g_string_append(out, lig);
        } else if (c == 0x3000) {
            g_string_append_c(out, ' ');
        } else if (c >= 0xff01 && c <= 0xffef) { /* WIDTH_MAP: NFKC of the form */
            char *w = g_utf8_normalize(p, g_utf8_next_char(p) - p, G_NORMALIZE_NFKC);
            if (w)
                g_string_append(out, w);
            else
                g_string_append_unichar(out, c);
            g_free(w);
        } else if (c >= 0x2018 && c <= 0x201b) {
            g_string_append_c(out, '\'');
        } else if (c >= 0x201c && c <= 0x201f) {
            g_string_append_c(out, '"');
        } else {
            g_string_append_len(out, p, g_utf8_next_char(p) - p);
        }
    }
}

/* ---- html.unescape --------------------------------------------------------------------- */

typedef struct {
    const char name[10];
    uint32_t cp;
} HtmlEntity;

/* Python html.entities: name2codepoint + apos and the upper-case legacy aliases, each as
 * "name;" and, where HTML5 accepts it, "name". Values from html5. Sorted for bsearch. */
static const HtmlEntity html_entities[] = {
    {"AElig", 0xC6}, {"AElig;", 0xC6}, {"AMP", 0x26}, {"AMP;", 0x26}, {"Aacute", 0xC1},
    {"Aacute;", 0xC1}, {"Acirc", 0xC2}, {"Acirc;", 0xC2}, {"Agrave", 0xC0}, {"Agrave;", 0xC0},
    {"Alpha;", 0x391}, {"Aring", 0xC5}, {"Aring;", 0xC5}, {"Atilde", 0xC3}, {"Atilde;", 0xC3},
    {"Auml", 0xC4}, {"Auml;", 0xC4}, {"Beta;", 0x392}, {"COPY", 0xA9}, {"COPY;", 0xA9},
    {"Ccedil", 0xC7}, {"Ccedil;", 0xC7}, {"Chi;", 0x3A7}, {"Dagger;", 0x2021}, {"Delta;", 0x394},
    {"ETH", 0xD0}, {"ETH;", 0xD0}, {"Eacute", 0xC9}, {"Eacute;", 0xC9}, {"Ecirc", 0xCA},
    {"Ecirc;", 0xCA}, {"Egrave", 0xC8}, {"Egrave;", 0xC8}, {"Epsilon;", 0x395}, {"Eta;", 0x397},
    {"Euml", 0xCB}, {"Euml;", 0xCB}, {"GT", 0x3E}, {"GT;", 0x3E}, {"Gamma;", 0x393},
    {"Iacute", 0xCD}, {"Iacute;", 0xCD}, {"Icirc", 0xCE}, {"Icirc;", 0xCE}, {"Igrave", 0xCC},
    {"Igrave;", 0xCC}, {"Iota;", 0x399}, {"Iuml", 0xCF}, {"Iuml;", 0xCF}, {"Kappa;", 0x39A},
    {"LT", 0x3C}, {"LT;", 0x3C}, {"Lambda;", 0x39B}, {"Mu;", 0x39C}, {"Ntilde", 0xD1},
    {"Ntilde;", 0xD1}, {"Nu;", 0x39D}, {"OElig;", 0x152}, {"Oacute", 0xD3}, {"Oacute;", 0xD3},
    {"Ocirc", 0xD4}, {"Ocirc;", 0xD4}, {"Ograve", 0xD2}, {"Ograve;", 0xD2}, {"Omega;", 0x3A9},
    {"Omicron;", 0x39F}, {"Oslash", 0xD8}, {"Oslash;", 0xD8}, {"Otilde", 0xD5}, {"Otilde;", 0xD5},
    {"Ouml", 0xD6}, {"Ouml;", 0xD6}, {"Phi;", 0x3A6}, {"Pi;", 0x3A0}, {"Prime;", 0x2033},
    {"Psi;", 0x3A8}, {"QUOT", 0x22}, {"QUOT;", 0x22}, {"REG", 0xAE}, {"REG;", 0xAE},
    {"Rho;", 0x3A1}, {"Scaron;", 0x160}, {"Sigma;", 0x3A3}, {"THORN", 0xDE}, {"THORN;", 0xDE},
    {"Tau;", 0x3A4}, {"Theta;", 0x398}, {"Uacute", 0xDA}, {"Uacute;", 0xDA}, {"Ucirc", 0xDB},
    {"Ucirc;", 0xDB}, {"Ugrave", 0xD9}, {"Ugrave;", 0xD9}, {"Upsilon;", 0x3A5}, {"Uuml", 0xDC},
    {"Uuml;", 0xDC}, {"Xi;", 0x39E}, {"Yacute", 0xDD}, {"Yacute;", 0xDD}, {"Yuml;", 0x178},
    {"Zeta;", 0x396}, {"aacute", 0xE1}, {"aacute;", 0xE1}, {"acirc", 0xE2}, {"acirc;", 0xE2},
    {"acute", 0xB4}, {"acute;", 0xB4}, {"aelig", 0xE6}, {"aelig;", 0xE6}, {"agrave", 0xE0},
    {"agrave;", 0xE0}, {"alefsym;", 0x2135}, {"alpha;", 0x3B1}, {"amp", 0x26}, {"amp;", 0x26},
    {"and;", 0x2227}, {"ang;", 0x2220}, {"apos;", 0x27}, {"aring", 0xE5}, {"aring;", 0xE5},
    {"asymp;", 0x2248}, {"atilde", 0xE3}, {"atilde;", 0xE3}, {"auml", 0xE4}, {"auml;", 0xE4},
    {"bdquo;", 0x201E}, {"beta;", 0x3B2}, {"brvbar", 0xA6}, {"brvbar;", 0xA6}, {"bull;", 0x2022},
    {"cap;", 0x2229}, {"ccedil", 0xE7}, {"ccedil;", 0xE7}, {"cedil", 0xB8}, {"cedil;", 0xB8},
    {"cent", 0xA2}, {"cent;", 0xA2}, {"chi;", 0x3C7}, {"circ;", 0x2C6}, {"clubs;", 0x2663},
    {"cong;", 0x2245}, {"copy", 0xA9}, {"copy;", 0xA9}, {"crarr;", 0x21B5}, {"cup;", 0x222A},
    {"curren", 0xA4}, {"curren;", 0xA4}, {"dArr;", 0x21D3}, {"dagger;", 0x2020}, {"darr;", 0x2193},
    {"deg", 0xB0}, {"deg;", 0xB0}, {"delta;", 0x3B4}, {"diams;", 0x2666}, {"divide", 0xF7},
    {"divide;", 0xF7}, {"eacute", 0xE9}, {"eacute;", 0xE9}, {"ecirc", 0xEA}, {"ecirc;", 0xEA},
    {"egrave", 0xE8}, {"egrave;", 0xE8}, {"empty;", 0x2205}, {"emsp;", 0x2003}, {"ensp;", 0x2002},
    {"epsilon;", 0x3B5}, {"equiv;", 0x2261}, {"eta;", 0x3B7}, {"eth", 0xF0}, {"eth;", 0xF0},
    {"euml", 0xEB}, {"euml;", 0xEB}, {"euro;", 0x20AC}, {"exist;", 0x2203}, {"fnof;", 0x192},
    {"forall;", 0x2200}, {"frac12", 0xBD}, {"frac12;", 0xBD}, {"frac14", 0xBC}, {"frac14;", 0xBC},
    {"frac34", 0xBE}, {"frac34;", 0xBE}, {"frasl;", 0x2044}, {"gamma;", 0x3B3}, {"ge;", 0x2265},
    {"gt", 0x3E}, {"gt;", 0x3E}, {"hArr;", 0x21D4}, {"harr;", 0x2194}, {"hearts;", 0x2665},
    {"hellip;", 0x2026}, {"iacute", 0xED}, {"iacute;", 0xED}, {"icirc", 0xEE}, {"icirc;", 0xEE},
    {"iexcl", 0xA1}, {"iexcl;", 0xA1}, {"igrave", 0xEC}, {"igrave;", 0xEC}, {"image;", 0x2111},
    {"infin;", 0x221E}, {"int;", 0x222B}, {"iota;", 0x3B9}, {"iquest", 0xBF}, {"iquest;", 0xBF},
    {"isin;", 0x2208}, {"iuml", 0xEF}, {"iuml;", 0xEF}, {"kappa;", 0x3BA}, {"lArr;", 0x21D0},
    {"lambda;", 0x3BB}, {"lang;", 0x27E8}, {"laquo", 0xAB}, {"laquo;", 0xAB}, {"larr;", 0x2190},
    {"lceil;", 0x2308}, {"ldquo;", 0x201C}, {"le;", 0x2264}, {"lfloor;", 0x230A},
    {"lowast;", 0x2217}, {"loz;", 0x25CA}, {"lrm;", 0x200E}, {"lsaquo;", 0x2039},
    {"lsquo;", 0x2018}, {"lt", 0x3C}, {"lt;", 0x3C}, {"macr", 0xAF}, {"macr;", 0xAF},
    {"mdash;", 0x2014}, {"micro", 0xB5}, {"micro;", 0xB5}, {"middot", 0xB7}, {"middot;", 0xB7},
    {"minus;", 0x2212}, {"mu;", 0x3BC}, {"nabla;", 0x2207}, {"nbsp", 0xA0}, {"nbsp;", 0xA0},
    {"ndash;", 0x2013}, {"ne;", 0x2260}, {"ni;", 0x220B}, {"not", 0xAC}, {"not;", 0xAC},
    {"notin;", 0x2209}, {"nsub;", 0x2284}, {"ntilde", 0xF1}, {"ntilde;", 0xF1}, {"nu;", 0x3BD},
    {"oacute", 0xF3}, {"oacute;", 0xF3}, {"ocirc", 0xF4}, {"ocirc;", 0xF4}, {"oelig;", 0x153},
    {"ograve", 0xF2}, {"ograve;", 0xF2}, {"oline;", 0x203E}, {"omega;", 0x3C9}, {"omicron;", 0x3BF},
    {"oplus;", 0x2295}, {"or;", 0x2228}, {"ordf", 0xAA}, {"ordf;", 0xAA}, {"ordm", 0xBA},
    {"ordm;", 0xBA}, {"oslash", 0xF8}, {"oslash;", 0xF8}, {"otilde", 0xF5}, {"otilde;", 0xF5},
    {"otimes;", 0x2297}, {"ouml", 0xF6}, {"ouml;", 0xF6}, {"para", 0xB6}, {"para;", 0xB6},
    {"part;", 0x2202}, {"permil;", 0x2030}, {"perp;", 0x22A5}, {"phi;", 0x3C6}, {"pi;", 0x3C0},
    {"piv;", 0x3D6}, {"plusmn", 0xB1}, {"plusmn;", 0xB1}, {"pound", 0xA3}, {"pound;", 0xA3},
    {"prime;", 0x2032}, {"prod;", 0x220F}, {"prop;", 0x221D}, {"psi;", 0x3C8}, {"quot", 0x22},
    {"quot;", 0x22}, {"rArr;", 0x21D2}, {"radic;", 0x221A}, {"rang;", 0x27E9}, {"raquo", 0xBB},
    {"raquo;", 0xBB}, {"rarr;", 0x2192}, {"rceil;", 0x2309}, {"rdquo;", 0x201D}, {"real;", 0x211C},
    {"reg", 0xAE}, {"reg;", 0xAE}, {"rfloor;", 0x230B}, {"rho;", 0x3C1}, {"rlm;", 0x200F},
    {"rsaquo;", 0x203A}, {"rsquo;", 0x2019}, {"sbquo;", 0x201A}, {"scaron;", 0x161},
    {"sdot;", 0x22C5}, {"sect", 0xA7}, {"sect;", 0xA7}, {"shy", 0xAD}, {"shy;", 0xAD},
    {"sigma;", 0x3C3}, {"sigmaf;", 0x3C2}, {"sim;", 0x223C}, {"spades;", 0x2660}, {"sub;", 0x2282},
    {"sube;", 0x2286}, {"sum;", 0x2211}, {"sup1", 0xB9}, {"sup1;", 0xB9}, {"sup2", 0xB2},
    {"sup2;", 0xB2}, {"sup3", 0xB3}, {"sup3;", 0xB3}, {"sup;", 0x2283}, {"supe;", 0x2287},
    {"szlig", 0xDF}, {"szlig;", 0xDF}, {"tau;", 0x3C4}, {"there4;", 0x2234}, {"theta;", 0x3B8},
    {"thetasym;", 0x3D1}, {"thinsp;", 0x2009}, {"thorn", 0xFE}, {"thorn;", 0xFE}, {"tilde;", 0x2DC},
    {"times", 0xD7}, {"times;", 0xD7}, {"trade;", 0x2122}, {"uArr;", 0x21D1}, {"uacute", 0xFA},
    {"uacute;", 0xFA}, {"uarr;", 0x2191}, {"ucirc", 0xFB}, {"ucirc;", 0xFB}, {"ugrave", 0xF9},
    {"ugrave;", 0xF9}, {"uml", 0xA8}, {"uml;", 0xA8}, {"upsih;", 0x3D2}, {"upsilon;", 0x3C5},
    {"uuml", 0xFC}, {"uuml;", 0xFC}, {"weierp;", 0x2118}, {"xi;", 0x3BE}, {"yacute", 0xFD},
    {"yacute;", 0xFD}, {"yen", 0xA5}, {"yen;", 0xA5}, {"yuml", 0xFF}, {"yuml;", 0xFF},
    {"zeta;", 0x3B6}, {"zwj;", 0x200D}, {"zwnj;", 0x200C},
};
_Static_assert(sizeof html_entities / sizeof html_entities[0] == 365, "html entity table");

static int entity_cmp(const void *key, const void *elem)
{
    return strcmp(key, ((const HtmlEntity *)elem)->name);
}

static const HtmlEntity *entity_find(const char *name, size_t len)
{
    char key[sizeof html_entities[0].name];
    if (len >= sizeof key)
        return NULL;
    memcpy(key, name, len);
    key[len] = '\0';
    return bsearch(key, html_entities, sizeof html_entities / sizeof html_entities[0],
                   sizeof html_entities[0], entity_cmp);
}

/* html._replace_charref for a numeric reference (num saturated above 0x10FFFF). */
static void append_charref(GString *out, uint32_t num)
{
    /* html._invalid_charrefs 0x80..0x9f: Windows-1252 (0 where the byte maps to itself) */
    static const uint16_t cp1252[32] = {
        0x20ac, 0, 0x201a, 0x0192, 0x201e, 0x2026, 0x2020, 0x2021,
        0x02c6, 0x2030, 0x0160, 0x2039, 0x0152, 0, 0x017d, 0,
        0, 0x2018, 0x2019, 0x201c, 0x201d, 0x2022, 0x2013, 0x2014,
        0x02dc, 0x2122, 0x0161, 0x203a, 0x0153, 0, 0x017e, 0x0178};
    if (num == 0) {
        g_string_append_unichar(out, 0xfffd);
    } else if (num == 0x0d) {
        g_string_append_c(out, '\r');
    } else if (num >= 0x80 && num <= 0x9f) {
        g_string_append_unichar(out, cp1252[num - 0x80] ? cp1252[num - 0x80] : num);
    } else if ((num >= 0xd800 && num <= 0xdfff) || num > 0x10ffff) {
        g_string_append_unichar(out, 0xfffd);
    } else if ((num >= 0x01 && num <= 0x08) || num == 0x0b || (num >= 0x0e && num <= 0x1f) ||
               (num >= 0x7f && num <= 0x9f) || (num >= 0xfdd0 && num <= 0xfdef) ||
               (num & 0xfffe) == 0xfffe) {
        /* html._invalid_codepoints: dropped */
    } else {
        g_string_append_unichar(out, num);
    }
}

/* Parses a numeric reference after "&#" at p (regex #[0-9]+;? | #[xX][0-9a-fA-F]+;?).
 * Returns the bytes consumed after "&#", 0 when it is not one. */
static size_t parse_numeric(const char *p, uint32_t *num)
{
    int hex = (p[0] == 'x' || p[0] == 'X') && g_ascii_isxdigit(p[1]);
    size_t i = hex ? 1 : 0;
    uint32_t v = 0;
    if (!hex && !g_ascii_isdigit(p[0]))
        return 0;
    for (; hex ? g_ascii_isxdigit(p[i]) : g_ascii_isdigit(p[i]); i++) {
        uint32_t d = (uint32_t)(hex ? g_ascii_xdigit_value(p[i]) : g_ascii_digit_value(p[i]));
        v = v > 0x10ffff ? v : v * (hex ? 16u : 10u) + d; /* saturates above 0x10FFFF */
    }
    if (p[i] == ';')
        i++;
    *num = v;
    return i;
}

/* Python html.unescape of s into out. */
static void html_unescape(GString *out, const char *s)
{
    const char *p = s;
    while (*p) {
        const char *amp = strchr(p, '&');
        if (!amp) {
            g_string_append(out, p);
            return;
        }
        g_string_append_len(out, p, amp - p);
        p = amp + 1;
        if (*p == '#') {
            uint32_t num;
            size_t n = parse_numeric(p + 1, &num);
            if (n) {
                append_charref(out, num);
                p += 1 + n;
            } else {
                g_string_append_c(out, '&');
            }
            continue;
        }
        /* named: [^\t\n\f <&#;]{1,32};? */
        const char *q = p;
        size_t bounds[34]; /* byte offset of each character boundary in the name */
        size_t nch = 0;
        bounds[0] = 0;
        while (nch < 32 && *q && !strchr("\t\n\f <&#;", *q)) {
            q = g_utf8_next_char(q);
            bounds[++nch] = (size_t)(q - p);
        }
        if (nch == 0) {
            g_string_append_c(out, '&');
            continue;
        }
        if (*q == ';') {
            q++;
            bounds[++nch] = (size_t)(q - p);
        }
        const HtmlEntity *e = entity_find(p, bounds[nch]);
        for (size_t x = nch - 1; !e && x >= 2; x--) { /* longest legacy prefix */
            e = entity_find(p, bounds[x]);
            if (e) {
                g_string_append_unichar(out, e->cp);
                g_string_append_len(out, p + bounds[x], (gssize)(bounds[nch] - bounds[x]));
                p = q;
                break;
            }
        }
        if (p == q)
            continue;
        if (e) {
            g_string_append_unichar(out, e->cp);
        } else {
            g_string_append_c(out, '&');
            g_string_append_len(out, p, q - p);
        }
        p = q;
    }
}

/* ---- whitespace and case ----------------------------------------------------------------- */

/* text.strip(); re.sub(r'\s+', ' ', text); text.strip() (whitespace_clean after basic_clean). */
static void whitespace_clean(GString *out, const char *s)
{
    const char *end = s + strlen(s);
    while (*s && is_py_space(g_utf8_get_char(s)))
        s = g_utf8_next_char(s);
    while (end > s) {
        const char *prev = g_utf8_prev_char(end);
        if (!is_py_space(g_utf8_get_char(prev)))
            break;
        end = prev;
    }
    int in_space = 0;
    for (const char *p = s; p < end; p = g_utf8_next_char(p)) {
        if (is_regex_space(g_utf8_get_char(p))) {
            in_space = 1;
            continue;
        }
        if (in_space)
            g_string_append_c(out, ' ');
        in_space = 0;
        g_string_append_len(out, p, g_utf8_next_char(p) - p);
    }
    /* a trailing run of regex \s can only hold str.isspace() characters: stripped above */
}

/* Unicode Case_Ignorable (Mn Me Cf Lm Sk + Word_Break MidLetter/MidNumLet/Single_Quote) */
static int is_case_ignorable(gunichar c)
{
    switch (g_unichar_type(c)) {
    case G_UNICODE_NON_SPACING_MARK:
    case G_UNICODE_ENCLOSING_MARK:
    case G_UNICODE_FORMAT:
    case G_UNICODE_MODIFIER_LETTER:
    case G_UNICODE_MODIFIER_SYMBOL:
        return 1;
    default:
        break;
    }
    return c == 0x27 || c == 0x2e || c == 0x3a || c == 0xb7 || c == 0x387 || c == 0x55f ||
           c == 0x5f4 || c == 0x2018 || c == 0x2019 || c == 0x2024 || c == 0x2027 ||
           c == 0xfe13 || c == 0xfe52 || c == 0xfe55 || c == 0xff07 || c == 0xff0e || c == 0xff1a;
}

/* Unicode Cased (Lu Ll Lt + Other_Lowercase/Other_Uppercase, approximated by "has a case
 * mapping") */
static int is_cased(gunichar c)
{
    GUnicodeType t = g_unichar_type(c);
    return t == G_UNICODE_UPPERCASE_LETTER || t == G_UNICODE_LOWERCASE_LETTER ||
           t == G_UNICODE_TITLECASE_LETTER || g_unichar_tolower(c) != c ||
           g_unichar_toupper(c) != c;
}

/* Python str.lower(): full lower-case mapping (U+0130 -> i + U+0307, Final_Sigma), locale
 * independent (g_utf8_strdown would follow a Turkish or Lithuanian locale). */
static void py_lower(GString *out, const char *s)
{
    glong n = 0;
    gunichar *u = g_utf8_to_ucs4_fast(s, -1, &n);
    for (glong i = 0; i < n; i++) {
        gunichar c = u[i];
        if (c == 0x130) {
            g_string_append(out, "i\xcc\x87");
        } else if (c == 0x3a3) { /* \p{cased}\p{ignorable}* SIGMA !(\p{ignorable}*\p{cased}) */
            glong j = i - 1;
            while (j >= 0 && is_case_ignorable(u[j]))
                j--;
            int final = j >= 0 && is_cased(u[j]);
            if (final) {
                j = i + 1;
                while (j < n && is_case_ignorable(u[j]))
                    j++;
                final = j == n || !is_cased(u[j]);
            }
            g_string_append_unichar(out, final ? 0x3c2 : 0x3c3);
        } else if ((c >= 0x2160 && c <= 0x216f) || (c >= 0x24b6 && c <= 0x24cf)) {
            /* Roman numerals (Nl) and circled letters (So) have lower-case mappings that
             * g_unichar_tolower ignores (it maps only Lu and Lt) */
            g_string_append_unichar(out, c + (c < 0x2170 ? 0x10 : 0x1a));
        } else {
            g_string_append_unichar(out, g_unichar_tolower(c));
        }
    }
    g_free(u);
}

char *clip_text_clean(const char *text, DbError *err)
{
    size_t len = strlen(text);
    if (!g_utf8_validate(text, (gssize)len, NULL)) {
        db_fail(err, DB_ERR_ARG, "prompt is not valid UTF-8");
        return NULL;
    }
    if (len > CLIP_TEXT_MAX_BYTES) {
        db_fail(err, DB_ERR_ARG, "prompt is too long (%zu bytes, at most %u)", len,
                CLIP_TEXT_MAX_BYTES);
        return NULL;
    }
    GString *a = g_string_sized_new(len + 16);
    ftfy_subset(a, text);
    char *nfc = g_utf8_normalize(a->str, (gssize)a->len, G_NORMALIZE_NFC);
    g_string_truncate(a, 0);
    html_unescape(a, nfc ? nfc : "");
    g_free(nfc);
    GString *b = g_string_sized_new(a->len + 16);
    html_unescape(b, a->str);
    g_string_truncate(a, 0);
    whitespace_clean(a, b->str);
    g_string_truncate(b, 0);
    py_lower(b, a->str);
    g_string_free(a, TRUE);
    return g_string_free(b, FALSE);
}

/* ---- pre-tokenizer ------------------------------------------------------------------------ */

/* Length of the literal lit (ASCII) at s[p..len) under IGNORECASE (simple case folding: the
 * only non-ASCII characters that fold to ASCII letters are U+017F -> s and U+212A -> k), else 0. */
static size_t match_ci(const char *s, size_t len, size_t p, const char *lit)
{
    size_t q = p;
    for (; *lit; lit++) {
        if (q >= len)
            return 0;
        gunichar c = g_utf8_get_char(s + q);
        if (c == 0x17f)
            c = 's';
        else if (c == 0x212a)
            c = 'k';
        else if (c < 0x80)
            c = (gunichar)g_ascii_tolower((gchar)c);
        if (c != (gunichar)*lit)
            return 0;
        q = (size_t)(g_utf8_next_char(s + q) - s);
    }
    return q - p;
}

static int is_letter(gunichar c)
{
    switch (g_unichar_type(c)) {
    case G_UNICODE_UPPERCASE_LETTER:
    case G_UNICODE_LOWERCASE_LETTER:
    case G_UNICODE_TITLECASE_LETTER:
    case G_UNICODE_MODIFIER_LETTER:
    case G_UNICODE_OTHER_LETTER:
        return 1;
    default:
        return 0;
    }
}

static int is_number(gunichar c)
{
    GUnicodeType t = g_unichar_type(c);
    return t == G_UNICODE_DECIMAL_NUMBER || t == G_UNICODE_LETTER_NUMBER ||
           t == G_UNICODE_OTHER_NUMBER;
}

/* Matched by no alternative: \s, and U+0345 (with IGNORECASE the `regex` module excludes it
 * from [^\s\p{L}\p{N}] because it case-folds to a letter, yet \p{L} does not match it). */
static int is_skipped(gunichar c)
{
    return is_regex_space(c) || c == 0x345;
}

/* <\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+
 * with IGNORECASE: alternatives tried in order at each position, the first that matches wins. */
int clip_text_next_piece(const char *s, size_t len, size_t *pos, size_t *start, size_t *end)
{
    static const char *const literals[] = {"<|startoftext|>", "<|endoftext|>", "'s", "'t",
                                           "'re", "'ve", "'m", "'ll", "'d"};
    size_t p = *pos;
    while (p < len && is_skipped(g_utf8_get_char(s + p)))
        p = (size_t)(g_utf8_next_char(s + p) - s);
    if (p >= len)
        return 0;
    *start = p;
    for (size_t k = 0; k < sizeof literals / sizeof literals[0]; k++) {
        size_t n = match_ci(s, len, p, literals[k]);
        if (n) {
            *pos = *end = p + n;
            return 1;
        }
    }
    gunichar c = g_utf8_get_char(s + p);
    int kind = is_letter(c) ? 1 : is_number(c) ? 2 : 3;
    p = (size_t)(g_utf8_next_char(s + p) - s);
    if (kind != 2) {
        while (p < len) {
            c = g_utf8_get_char(s + p);
            int k = is_letter(c) ? 1 : is_number(c) || is_skipped(c) ? 2 : 3;
            if (k != kind)
                break;
            p = (size_t)(g_utf8_next_char(s + p) - s);
        }
    }
    *pos = *end = p;
    return 1;
}
