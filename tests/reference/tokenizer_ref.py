# SPDX-License-Identifier: GPL-3.0-or-later
"""Reference CLIP tokenizer: a pure-Python port of openai/CLIP clip/simple_tokenizer.py (the
`regex` module, html, gzip), plus the loader of transformers' CLIPTokenizer files
(vocab.json + merges.txt) and a writer of those files.

ftfy is not available here: basic_clean uses ftfy_subset(), the character maps of ftfy's
fix_text (control characters removed, Latin ligatures split, halfwidth/fullwidth forms and
U+3000 to standard width, curly quotes straightened, NFC), which engine/tokenizer_text.c
implements too. ftfy's mojibake repair, terminal-escape removal and its own html unescaping are
not reproduced. Everything else (html.unescape twice, \\s+ collapse, strip, str.lower, the split
regex, BPE) is the reference code's own semantics.

Usage:
  tokenizer_ref.py --bpe FILE [--hf DIR] [--pad N] < prompts       print 77 ids per prompt
  tokenizer_ref.py --bpe FILE --check DRIVER [--prompts-file F]    compare the C tokenizer
  tokenizer_ref.py --write-hf DIR --bpe FILE [--pad-token T]       write tokenizer/ files

Importable: write_hf_tokenizer(dirpath, bpe_gz_path, pad_token).
"""
import argparse
import gzip
import html
import json
import os
import random
import subprocess
import sys
import tempfile
import unicodedata

import regex as re

NUM_MERGES = 49152 - 256 - 2
CONTEXT = 77
BOS, EOS = 49406, 49407


def bytes_to_unicode():
    """Byte -> printable character map of simple_tokenizer.py (vocabulary order)."""
    bs = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
          + list(range(ord("®"), ord("ÿ") + 1)))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


# ---- ftfy subset (ftfy/chardata.py maps) ----------------------------------------------------

def _control_chars():
    ranges = [range(0x00, 0x09), [0x0B], range(0x0E, 0x20), [0x7F], range(0x206A, 0x2070),
              [0xFEFF], range(0xFFF9, 0xFFFD), range(0x1D173, 0x1D17B), range(0xE0000, 0xE0080)]
    return {c: None for r in ranges for c in r}


_LIGATURES = {ord("Ĳ"): "IJ", ord("ĳ"): "ij", ord("ﬀ"): "ff", ord("ﬁ"): "fi", ord("ﬂ"): "fl",
              ord("ﬃ"): "ffi", ord("ﬄ"): "ffl", ord("ﬅ"): "ſt", ord("ﬆ"): "st"}


def _width_map():
    m = {0x3000: " "}
    for i in range(0xFF01, 0xFFF0):
        alt = unicodedata.normalize("NFKC", chr(i))
        if alt != chr(i):
            m[i] = alt
    return m


_FTFY_MAP = {**_width_map(), **_LIGATURES, **_control_chars()}
for _c in range(0x2018, 0x201C):
    _FTFY_MAP[_c] = "'"
for _c in range(0x201C, 0x2020):
    _FTFY_MAP[_c] = '"'


def ftfy_subset(text):
    return unicodedata.normalize("NFC", text.translate(_FTFY_MAP))


def basic_clean(text):
    text = ftfy_subset(text)  # the reference: ftfy.fix_text(text)
    text = html.unescape(html.unescape(text))
    return text.strip()


def whitespace_clean(text):
    text = re.sub(r"\s+", " ", text)
    return text.strip()


PAT = re.compile(r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
                 re.IGNORECASE)


class Tokenizer:
    """simple_tokenizer.SimpleTokenizer, from the .gz file or from vocab.json + merges.txt."""

    def __init__(self, encoder, merges):
        self.byte_encoder = bytes_to_unicode()
        self.encoder = encoder
        self.bpe_ranks = dict(zip(merges, range(len(merges))))
        self.cache = {"<|startoftext|>": "<|startoftext|>", "<|endoftext|>": "<|endoftext|>"}

    @classmethod
    def from_bpe(cls, path):
        raw = open(path, "rb").read()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
        merges = raw.decode("utf-8").split("\n")[1:NUM_MERGES + 1]
        merges = [tuple(m.split()) for m in merges]
        vocab = list(bytes_to_unicode().values())
        vocab = vocab + [v + "</w>" for v in vocab]
        vocab += ["".join(m) for m in merges]
        vocab += ["<|startoftext|>", "<|endoftext|>"]
        return cls(dict(zip(vocab, range(len(vocab)))), merges)

    @classmethod
    def from_hf(cls, vocab_json, merges_txt):
        encoder = json.load(open(vocab_json, encoding="utf-8"))
        merges = open(merges_txt, encoding="utf-8").read().strip().split("\n")[1:NUM_MERGES + 1]
        return cls(encoder, [tuple(m.split()) for m in merges])

    def bpe(self, token):
        if token in self.cache:
            return self.cache[token]
        word = tuple(token[:-1]) + (token[-1] + "</w>",)
        while len(word) > 1:
            pairs = set(zip(word, word[1:]))
            bigram = min(pairs, key=lambda p: self.bpe_ranks.get(p, float("inf")))
            if bigram not in self.bpe_ranks:
                break
            first, second = bigram
            new_word = []
            i = 0
            while i < len(word):
                if i < len(word) - 1 and word[i] == first and word[i + 1] == second:
                    new_word.append(first + second)
                    i += 2
                else:
                    new_word.append(word[i])
                    i += 1
            word = tuple(new_word)
        return " ".join(word)

    def clean(self, text):
        return whitespace_clean(basic_clean(text)).lower()

    def encode(self, text):
        ids = []
        for token in re.findall(PAT, self.clean(text)):
            token = "".join(self.byte_encoder[b] for b in token.encode("utf-8"))
            ids.extend(self.encoder[t] for t in self.bpe(token).split(" "))
        return ids

    def encode_padded(self, text, pad_id=EOS, ctx=CONTEXT):
        """(ids, truncated): BOS, up to ctx-2 tokens, EOS, pad (HF truncation=True)."""
        ids = self.encode(text)
        keep = ids[:ctx - 2]
        out = [BOS] + keep + [EOS]
        return out + [pad_id] * (ctx - len(out)), len(ids) - len(keep)


# ---- Hugging Face tokenizer/ files ------------------------------------------------------------

def _added_token(content):
    return {"__type": "AddedToken", "content": content, "lstrip": False, "normalized": True,
            "rstrip": False, "single_word": False}


def write_hf_tokenizer(dirpath, bpe_gz_path, pad_token="<|endoftext|>"):
    """Writes vocab.json, merges.txt, tokenizer_config.json and special_tokens_map.json as the
    diffusers SD1 (pad_token "<|endoftext|>") and SD2 (pad_token "!") tokenizer/ folders hold
    them. Returns (vocab_json_path, merges_txt_path)."""
    tok = Tokenizer.from_bpe(bpe_gz_path)
    os.makedirs(dirpath, exist_ok=True)
    vocab_path = os.path.join(dirpath, "vocab.json")
    merges_path = os.path.join(dirpath, "merges.txt")
    with open(vocab_path, "w", encoding="utf-8") as f:
        json.dump(tok.encoder, f, ensure_ascii=False)
    ordered = sorted(tok.bpe_ranks.items(), key=lambda kv: kv[1])
    with open(merges_path, "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n")
        for (a, b), _ in ordered:
            f.write(a + " " + b + "\n")
    pad = pad_token
    config = {
        "add_prefix_space": False,
        "bos_token": _added_token("<|startoftext|>"),
        "do_lower_case": True,
        "eos_token": _added_token("<|endoftext|>"),
        "errors": "replace",
        "model_max_length": CONTEXT,
        "name_or_path": "openai/clip-vit-large-patch14",
        "pad_token": pad,
        "special_tokens_map_file": "./special_tokens_map.json",
        "tokenizer_class": "CLIPTokenizer",
        "unk_token": _added_token("<|endoftext|>"),
    }
    special = {
        "bos_token": {k: v for k, v in _added_token("<|startoftext|>").items() if k != "__type"},
        "eos_token": {k: v for k, v in _added_token("<|endoftext|>").items() if k != "__type"},
        "pad_token": pad,
        "unk_token": {k: v for k, v in _added_token("<|endoftext|>").items() if k != "__type"},
    }
    with open(os.path.join(dirpath, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2)
    with open(os.path.join(dirpath, "special_tokens_map.json"), "w", encoding="utf-8") as f:
        json.dump(special, f, indent=2)
    return vocab_path, merges_path


# ---- prompts ------------------------------------------------------------------------------------

EDGE_CASES = [
    "a photo of sks dog", "", "   ", "A PHOTO OF SKS DOG", "Hello, World!!! ...?",
    "1234567890 3.14159 1,000,000", "it's what they're doing, we've i'm you'll he'd don't",
    "IT'S THEY'RE", "café naïve résumé Ångström façade", "cafe\u0301 nai\u0308ve",
    "一只狗在草地上", "собака на траве", "犬が草の上にいる", "كلب على العشب",
    "a dog 🐶🐕 with emoji 🎉👍🏽", "Tom &amp; Jerry &lt;3 &gt; &quot;hi&quot; &#39;x&#39;",
    "&#65;&#x42;&#X43; &nbsp;nbsp &amp;amp; &ampx &copy2024 &notit; &#0; &#128; &#x110000;",
    "&amp;lt;b&amp;gt; &#38;#65; &#xD800; &#12 &# &#x; & alone",
    "a  photo\tof\n\nsks\r\n  dog  \u3000 \u00a0 x\u2003y\u2028z\x85w",
    "<|startoftext|>a dog<|endoftext|> <|STARTOFTEXT|> x<|endoftext|>y !<|endoftext|>",
    "\u201csmart quotes\u201d and \u2018single\u2019 dog\u2019s", "ﬁne ﬂower ﬀ ﬅ ĲSSEL",
    "ＦＵＬＬ ｗｉｄｔｈ １２３ ！ ｶﾀｶﾅ", "\ufeffbom\u200bzero\u200dwidth \x01\x07\x1b[31mred",
    "ΟΔΥΣΣΕΥΣ Σ ΑΣ. ΑΣ'Β İstanbul ǅemal ẞ", "x\u0345y !\u0345! α\u0345",
    "'s 't 're 've 'm 'll 'd ''s '\u017f x'sy", "don't-stop_me #hashtag @user a+b=c 50% $100",
    "Ⅻ ½ ² ①  ٣ ३ 𝟘", "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "a " * 100, "photo of sks dog, " * 20, "dog" * 50, "!!!???..." * 10,
]


def dreambooth_prompts(path):
    """Every prompt template of prompts_and_classes.txt with each class, token 'sks'."""
    lines = open(path, encoding="utf-8").read().split("\n")
    classes, templates = [], []
    section = None
    for line in lines:
        s = line.strip()
        if s == "Classes":
            section = "classes"
        elif s.startswith("Prompts"):
            section = None
        elif section == "classes" and "," in s and s != "subject_name,class":
            classes.append(s.split(",", 1)[1])
        m = re.match(r"^'(.*)'\.format\(unique_token, class_token\)", s)
        if m:
            templates.append(m.group(1))
    assert classes and templates, f"{path}: no classes or templates found"
    out = []
    for t in dict.fromkeys(templates):
        for c in dict.fromkeys(classes):
            out.append(t.format("sks", c))
    return out


def random_prompts(n, seed=1234):
    """Random mixes of scripts, case, whitespace, entities and punctuation (fixed seed)."""
    rng = random.Random(seed)
    pools = [
        "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ", "0123456789", " \t\n\u3000\u00a0\u2009",
        ".,;:!?'\"-_()[]{}<>|/\\@#$%^&*+=~`", "éèêëàâäôöûüçñßøåæœÉÈÀÇÑÖÜ", "αβγδεζηθΣσςΩωΑΒΓΔ",
        "абвгдеёжзийклмнопрстуфхцчшщъыьэюяАБВГДЕЁЖЗ", "的一是不了人我在有他这为之大来以个中上们",
        "あいうえおかきくけこアイウエオカキクケコ", "ابتثجحخدذرزسشصضطظعغفقكلمنهوي",
        "😀🐶🐱🎉👍🏽❤️✨🌈🔥", "\u0301\u0308\u0345\u200b\u200d\ufe0f", "ＡＢＣａｂｃ１２３！",
        "İıŁłĲĳﬁﬂ\u2018\u2019\u201c\u201dŉǅ",
    ]
    frags = ["&amp;", "&lt;", "&gt;", "&quot;", "&#39;", "&#x41;", "&nbsp;", "&amp;amp;", "&copy",
             "<|startoftext|>", "<|endoftext|>", "'s", "'re", "'ll", " sks ", " dog "]
    out = []
    for _ in range(n):
        parts = []
        for _ in range(rng.randint(1, 40)):
            if rng.random() < 0.12:
                parts.append(rng.choice(frags))
            else:
                pool = rng.choice(pools)
                parts.append("".join(rng.choice(pool) for _ in range(rng.randint(1, 6))))
        out.append("".join(parts))
    return out


def escape(prompt_bytes):
    """One line for tokenize_dump --escaped: \\\\, \\xHH for controls, DEL and non-ASCII."""
    out = []
    for b in prompt_bytes:
        if b == 0x5C:
            out.append("\\\\")
        elif b < 0x20 or b >= 0x7F:
            out.append("\\x%02x" % b)
        else:
            out.append(chr(b))
    return "".join(out)


def expected_line(tok, prompt_bytes, pad_id):
    try:
        text = prompt_bytes.decode("utf-8")
    except UnicodeDecodeError:
        return "ERROR"
    ids, truncated = tok.encode_padded(text, pad_id)
    return " ".join(map(str, ids)) + " t=%d" % truncated


def run_driver(driver, load_args, pad_id, prompts):
    data = "".join(escape(p) + "\n" for p in prompts)
    r = subprocess.run([driver, *load_args, "--pad", str(pad_id), "--escaped", "--truncated"],
                       input=data.encode("ascii"), capture_output=True, timeout=300)
    if r.returncode != 0:
        sys.exit(f"FAIL: {driver} {' '.join(load_args)} exited {r.returncode}: "
                 f"{r.stderr.decode(errors='replace')}")
    return r.stdout.decode("ascii").split("\n")[:len(prompts)]


def check(args):
    prompts = [p.encode("utf-8") for p in EDGE_CASES]
    if args.prompts_file:
        prompts += [p.encode("utf-8") for p in dreambooth_prompts(args.prompts_file)]
    prompts += [p.encode("utf-8") for p in random_prompts(args.random)]
    prompts += [b"bad \xff utf8", b"\xc3\x28", b"trunc \xe2\x82", b"\xed\xa0\x80 surrogate"]
    tok = Tokenizer.from_bpe(args.bpe)
    failures = 0
    with tempfile.TemporaryDirectory() as d:
        vocab, merges = write_hf_tokenizer(d, args.bpe, "<|endoftext|>")
        hf = Tokenizer.from_hf(vocab, merges)
        for pad_id, load_args in ((EOS, ["--bpe", args.bpe]), (EOS, ["--hf", vocab, merges]),
                                  (0, ["--hf", vocab, merges])):
            got = run_driver(args.check, load_args, pad_id, prompts)
            for p, g in zip(prompts, got):
                want = expected_line(tok, p, pad_id)
                if load_args[0] == "--hf" and want != "ERROR":
                    assert want == expected_line(hf, p, pad_id), p
                if g != want:
                    failures += 1
                    if failures <= 10:
                        print(f"MISMATCH ({' '.join(load_args[:1])}, pad {pad_id}) {p!r}\n"
                              f"  want {want}\n  got  {g}")
    print(f"{len(prompts)} prompts x 3 runs, {failures} mismatches")
    return 1 if failures else 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bpe", required=True, help="bpe_simple_vocab_16e6.txt.gz")
    ap.add_argument("--hf", help="tokenizer/ folder with vocab.json + merges.txt")
    ap.add_argument("--pad", type=int, default=EOS)
    ap.add_argument("--check", metavar="DRIVER", help="tokenize_dump executable to compare")
    ap.add_argument("--prompts-file", help="DreamBooth prompts_and_classes.txt")
    ap.add_argument("--random", type=int, default=500, help="random prompts in --check")
    ap.add_argument("--write-hf", metavar="DIR")
    ap.add_argument("--pad-token", default="<|endoftext|>")
    args = ap.parse_args()
    if args.write_hf:
        write_hf_tokenizer(args.write_hf, args.bpe, args.pad_token)
        return 0
    if args.check:
        return check(args)
    tok = (Tokenizer.from_hf(os.path.join(args.hf, "vocab.json"), os.path.join(args.hf, "merges.txt"))
           if args.hf else Tokenizer.from_bpe(args.bpe))
    lines = sys.stdin.buffer.read().split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    for line in lines:
        print(expected_line(tok, line, args.pad))
    return 0


if __name__ == "__main__":
    sys.exit(main())
