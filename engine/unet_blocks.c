/* UNet blocks, each callable on its own (per-block checkpointing recomputes them):
 *   ResnetBlock2D, Transformer2DModel (+ BasicTransformerBlock), Downsample2D, Upsample2D.
 * Sources: diffusers models/resnet.py, attention.py, attention_processor.py,
 * transformers/transformer_2d.py, downsampling.py, upsampling.py (semantics as in
 * tests/reference/sd_unet.py). Activations NCHW; tokens [B, H*W, C] inside transformers.
 * SPDX-License-Identifier: GPL-3.0-or-later */
#include "unet.h"

#include "kernels.h"
#include "weights.h"

#include <math.h>
#include <stdint.h>
#include <string.h>

/* Rows of the feed-forward processed at once: bounds its [rows, 8C] hidden buffer. */
#define FF_ROWS 2048

static size_t zmax(size_t a, size_t b) { return a > b ? a : b; }

/* ---- weight widening ------------------------------------------------------------------
 * Every forward widens all ~860M half-precision weights of SD 1.5 once, so the widening
 * must run at memory speed: F16C (8 per instruction) where the CPU has it, a vectorisable
 * shift for BF16; anything else (F32 in place, unaligned data) goes through weight_f32.
 * Exact either way: f16 and bf16 values are all representable in f32. */

#define WIDEN_CHUNK ((size_t)1 << 16)

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
__attribute__((target("avx,f16c"))) static void widen_f16c(float *dst, const unsigned char *src,
                                                            size_t n)
{
    size_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(src + 2 * i))));
    for (; i < n; i++) {
        uint16_t h;
        memcpy(&h, src + 2 * i, 2);
        dst[i] = f16_to_f32(h);
    }
}
static int have_f16c(void) { return __builtin_cpu_supports("f16c"); }
#else
static void widen_f16c(float *dst, const unsigned char *src, size_t n) { (void)dst, (void)src, (void)n; }
static int have_f16c(void) { return 0; }
#endif

static void widen_bf16(float *dst, const unsigned char *src, size_t n)
{
    uint32_t *d = (uint32_t *)(void *)dst;
    for (size_t i = 0; i < n; i++) {
        uint16_t h;
        memcpy(&h, src + 2 * i, 2);
        d[i] = (uint32_t)h << 16;
    }
}

/* w's values as f32 [nelem]: the mapped data when usable in place, else widened into scratch. */
static const float *widen(const DbWeight *w, float *scratch)
{
    const DbDtype dt = w->t.dtype;
    const int f16 = dt == DB_DTYPE_F16 && have_f16c();
    if (!f16 && dt != DB_DTYPE_BF16)
        return weight_f32(w, scratch);
    const unsigned char *src = w->t.data;
    const size_t n = w->t.nelem, nchunk = (n + WIDEN_CHUNK - 1) / WIDEN_CHUNK;
#pragma omp parallel for schedule(static)
    for (size_t c = 0; c < nchunk; c++) {
        const size_t off = c * WIDEN_CHUNK, len = n - off < WIDEN_CHUNK ? n - off : WIDEN_CHUNK;
        if (f16)
            widen_f16c(scratch + off, src + 2 * off, len);
        else
            widen_bf16(scratch + off, src + 2 * off, len);
    }
    return scratch;
}

const float *unet_weight(const UnetLin *l, const UnetWork *wk)
{
    return l->wf ? l->wf : widen(l->w, wk->wscratch);
}

/* ---- ResnetBlock2D ------------------------------------------------------------------- */

/* Work: n [B, max(Cin,Cout), HW] (normalised + SiLU input of each conv, then the shortcut
 * output), h [B, Cout, HW], tproj [B, Cout], GroupNorm mean/rstd [B, G]. */
size_t unet_resnet_work_size(size_t cin, size_t cout, size_t B, size_t HW, size_t groups)
{
    return B * zmax(cin, cout) * HW + B * cout * HW + B * cout + 2 * B * groups;
}

/* diffusers ResnetBlock2D, time_embedding_norm "default":
 *   h   = conv1(SiLU(GroupNorm1(x))) + time_emb_proj(SiLU(temb))[:, :, None, None]
 *   h   = conv2(SiLU(GroupNorm2(h)))          (dropout 0)
 *   out = shortcut(x) + h                      shortcut: 1x1 conv when Cin != Cout
 * temb_act [B, T] is SiLU(temb), shared by every resnet. Returns conv2d_forward's status. */
int unet_resnet_forward(float *out, const UnetWork *wk, const float *inp, const float *temb_act,
                         const UnetResnet *p, size_t B, size_t H, size_t W, size_t T,
                         size_t groups, float eps)
{
    const size_t HW = H * W, cin = (size_t)p->cin, cout = (size_t)p->cout;
    float *n = wk->work;
    float *h = n + B * zmax(cin, cout) * HW;
    float *tproj = h + B * cout * HW;
    float *mean = tproj + B * cout;
    float *rstd = mean + B * groups;

    groupnorm_forward(n, mean, rstd, inp, p->norm1.w, p->norm1.b, B, cin, HW, groups, eps, 1);
    int rc = conv2d_forward(h, n, unet_weight(&p->conv1, wk), p->conv1.b, wk->conv_scratch,
                            wk->conv_scratch_n, B, cin, H, W, cout, 3, 1, 1, 1);
    linear_forward(tproj, temb_act, unet_weight(&p->time_emb_proj, wk), p->time_emb_proj.b, B, T,
                   cout);
#pragma omp parallel for schedule(static)
    for (size_t bc = 0; bc < B * cout; bc++) {
        float *hp = h + bc * HW;
        const float t = tproj[bc];
        for (size_t i = 0; i < HW; i++)
            hp[i] += t;
    }
    groupnorm_forward(n, mean, rstd, h, p->norm2.w, p->norm2.b, B, cout, HW, groups, eps, 1);
    rc |= conv2d_forward(out, n, unet_weight(&p->conv2, wk), p->conv2.b, wk->conv_scratch,
                         wk->conv_scratch_n, B, cout, H, W, cout, 3, 1, 1, 1);
    if (p->conv_shortcut.w) {
        rc |= conv2d_forward(n, inp, unet_weight(&p->conv_shortcut, wk), p->conv_shortcut.b,
                             NULL, 0, B, cin, H, W, cout, 1, 1, 0, 0);
        residual_add(out, n, B * cout * HW);
    } else {
        residual_add(out, inp, B * cout * HW);
    }
    return rc;
}

/* ---- Transformer2DModel -------------------------------------------------------------- */

/* proj_in on NCHW input, tokens out (1x1 conv and Linear are the same map here):
 * tok [B, HW, C] = x [B, C, HW]^T @ w [C, C]^T + bias [C]. */
static void proj_in_forward(float *tok, const float *x, const float *w, const float *bias,
                            size_t B, size_t C, size_t HW)
{
#pragma omp parallel for schedule(static)
    for (size_t r = 0; r < B * HW; r++)
        memcpy(tok + r * C, bias, C * sizeof *tok);
    for (size_t b = 0; b < B; b++)
        gemm(1, 1, HW, C, C, 1.0f, x + b * C * HW, HW, w, C, 1.0f, tok + b * HW * C, C);
}

/* proj_out plus the block residual, NCHW out:
 * out [B, C, HW] = w [C, C] @ tok [B, HW, C]^T + bias [C] + res [B, C, HW]. */
static void proj_out_forward(float *out, const float *tok, const float *res, const float *w,
                             const float *bias, size_t B, size_t C, size_t HW)
{
#pragma omp parallel for schedule(static)
    for (size_t bc = 0; bc < B * C; bc++) {
        const float bv = bias[bc % C];
        const float *r = res + bc * HW;
        float *o = out + bc * HW;
        for (size_t i = 0; i < HW; i++)
            o[i] = r[i] + bv;
    }
    for (size_t b = 0; b < B; b++)
        gemm(0, 1, C, HW, C, 1.0f, w, C, tok + b * HW * C, C, 1.0f, out + b * C * HW, HW);
}

/* Work: gn [B, C, HW]; tok, ln, q, att [B*HW, C]; k, v [B*max(HW, S), C]; ff hidden
 * [rows, 8C] and gated [rows, 4C] with rows = min(B*HW, FF_ROWS); GroupNorm stats [B, G]. */
size_t unet_transformer_work_size(size_t C, size_t B, size_t HW, size_t S, size_t groups)
{
    const size_t N = B * HW, rows = N < FF_ROWS ? N : FF_ROWS;
    return B * C * HW + 4 * N * C + 2 * B * zmax(HW, S) * C + rows * 12 * C + 2 * B * groups;
}

/* Multi-head attention (diffusers Attention, AttnProcessor): out [B*Nq, C] =
 * to_out(softmax(q k^T / sqrt(D)) v) with q = x @ Wq^T, k = ctx @ Wk^T, v = ctx @ Wv^T
 * (no q/k/v bias), x [B, Nq, C], ctx [B, Nk, Ckv]. */
static void attn_forward(float *out, float *q, float *k, float *v, float *att, const UnetWork *wk,
                         const float *x, const float *ctx, const UnetLin *wq, const UnetLin *wkk,
                         const UnetLin *wv, const UnetLin *wo, size_t B, size_t Nq, size_t Nk,
                         size_t C, size_t Ckv, size_t heads)
{
    const size_t D = C / heads;
    linear_forward(q, x, unet_weight(wq, wk), wq->b, B * Nq, C, C);
    linear_forward(k, ctx, unet_weight(wkk, wk), wkk->b, B * Nk, Ckv, C);
    linear_forward(v, ctx, unet_weight(wv, wk), wv->b, B * Nk, Ckv, C);
    attention_forward(att, NULL, q, k, v, B, Nq, Nk, heads, D, (float)(1.0 / sqrt((double)D)), 0);
    linear_forward(out, att, unet_weight(wo, wk), wo->b, B * Nq, C, C);
}

/* diffusers Transformer2DModel (continuous input) with one BasicTransformerBlock:
 *   t = proj_in(GroupNorm(x, eps 1e-6)) as tokens [B, HW, C]
 *   t = t + attn1(LN1(t))                 self-attention
 *   t = t + attn2(LN2(t), ctx)            cross-attention
 *   t = t + ff(LN3(t))                    ff = Linear(4C -> C)(GEGLU(Linear(C -> 8C)))
 *   out = proj_out(t) (back to NCHW) + x */
void unet_transformer_forward(float *out, const UnetWork *wk, const float *inp, const float *ctx,
                              const UnetTransformer *p, size_t B, size_t H, size_t W, size_t S,
                              size_t X, size_t groups)
{
    const size_t HW = H * W, C = (size_t)p->c, N = B * HW, heads = (size_t)p->heads;
    const size_t rows = N < FF_ROWS ? N : FF_ROWS;
    float *gn = wk->work;
    float *tok = gn + B * C * HW;
    float *ln = tok + N * C;
    float *q = ln + N * C;
    float *att = q + N * C;
    float *k = att + N * C;
    float *v = k + B * zmax(HW, S) * C;
    float *ffh = v + B * zmax(HW, S) * C;
    float *ffg = ffh + rows * 8 * C;
    float *mean = ffg + rows * 4 * C;
    float *rstd = mean + B * groups;

    groupnorm_forward(gn, mean, rstd, inp, p->norm.w, p->norm.b, B, C, HW, groups, 1e-6f, 0);
    proj_in_forward(tok, gn, unet_weight(&p->proj_in, wk), p->proj_in.b, B, C, HW);

    layernorm_forward(ln, NULL, NULL, tok, p->norm1.w, p->norm1.b, N, C, 1e-5f);
    attn_forward(gn, q, k, v, att, wk, ln, ln, &p->q1, &p->k1, &p->v1, &p->o1, B, HW, HW, C, C,
                 heads);
    residual_add(tok, gn, N * C);

    layernorm_forward(ln, NULL, NULL, tok, p->norm2.w, p->norm2.b, N, C, 1e-5f);
    attn_forward(gn, q, k, v, att, wk, ln, ctx, &p->q2, &p->k2, &p->v2, &p->o2, B, HW, S, C, X,
                 heads);
    residual_add(tok, gn, N * C);

    /* both FF weights stay widened across the row chunks: scratch holds ff_in then ff_out */
    layernorm_forward(ln, NULL, NULL, tok, p->norm3.w, p->norm3.b, N, C, 1e-5f);
    const float *w_in = p->ff_in.wf ? p->ff_in.wf : widen(p->ff_in.w, wk->wscratch);
    const float *w_out = p->ff_out.wf ? p->ff_out.wf : widen(p->ff_out.w, wk->wscratch + 8 * C * C);
    for (size_t r0 = 0; r0 < N; r0 += rows) {
        const size_t nr = N - r0 < rows ? N - r0 : rows;
        linear_forward(ffh, ln + r0 * C, w_in, p->ff_in.b, nr, C, 8 * C);
        geglu_forward(ffg, ffh, nr, 4 * C);
        linear_forward(gn + r0 * C, ffg, w_out, p->ff_out.b, nr, 4 * C, C);
    }
    residual_add(tok, gn, N * C);

    proj_out_forward(out, tok, inp, unet_weight(&p->proj_out, wk), p->proj_out.b, B, C, HW);
}

/* ---- Downsample2D / Upsample2D ------------------------------------------------------- */

/* diffusers Downsample2D (use_conv, padding 1): out [B, C, H/2, W/2]. */
int unet_downsample_forward(float *out, const UnetWork *wk, const float *inp, const UnetLin *p,
                            size_t B, size_t C, size_t H, size_t W)
{
    return conv2d_forward(out, inp, unet_weight(p, wk), p->b, wk->conv_scratch,
                          wk->conv_scratch_n, B, C, H, W, C, 3, 2, 1, 1);
}

size_t unet_upsample_work_size(size_t C, size_t B, size_t HW) { return B * C * HW * 4; }

/* diffusers Upsample2D (use_conv): nearest x2 (F.interpolate scale_factor 2), conv 3x3. */
int unet_upsample_forward(float *out, const UnetWork *wk, const float *inp, const UnetLin *p,
                          size_t B, size_t C, size_t H, size_t W)
{
    float *up = wk->work;
    upsample_nearest2x_forward(up, inp, B, C, H, W);
    return conv2d_forward(out, up, unet_weight(p, wk), p->b, wk->conv_scratch, wk->conv_scratch_n,
                          B, C, 2 * H, 2 * W, C, 3, 1, 1, 1);
}
