/* UNet blocks for training: forwards that save what their backward needs (and add LoRA
 * adapters, fp32 master weights of a training view), and their backwards, read bottom-up.
 * Each pair is callable on its own, so per-block checkpointing recomputes a block's
 * train_forward right before its backward (unet_backward.c).
 *
 * Saved activations ("acts", one carve per block, layout in *_carve) and backward scratch
 * ("scratch") are caller buffers of *_acts_size / *_bwd_size floats. R is the largest LoRA
 * rank of the view (0 without LoRA); each adapted layer saves xa = inp @ down^T [N, R].
 * Gradients: parameters through the view's dw/db/dlora pointers (NULL: frozen, the weight
 * GEMM is skipped), inputs accumulated (+=) into dinp, dtemb [B, T], dctx [B, S, X].
 * Semantics as unet_blocks.c (diffusers ResnetBlock2D, Transformer2DModel, Downsample2D,
 * Upsample2D).
 * SPDX-License-Identifier: GPL-3.0-or-later */
#include "unet.h"

#include "kernels.h"

#include <math.h>
#include <string.h>

static size_t zmax(size_t a, size_t b) { return a > b ? a : b; }

/* Carving: TAKE(ptr, n) hands out the next n floats (only counting when base is NULL). */
#define TAKE(ptr, n) ((ptr) = base ? base + off : NULL, off += (n))

/* ---- layers with their adapters ------------------------------------------------------- */

/* out [N, OC] = inp [N, IC] @ W^T + b (+ LoRA; xa [N, R] saved). */
static void lin_fwd(float *out, float *xa, const UnetWork *wk, const float *inp, const UnetLin *l,
                    size_t N, size_t IC, size_t OC)
{
    linear_forward(out, inp, unet_weight(l, wk), l->b, N, IC, OC);
    if (l->lora.down)
        lora_linear_forward(out, xa, inp, l->lora.down, l->lora.up, l->lora.scale, N, IC, OC,
                            l->lora.rank);
}

/* Backward of lin_fwd: dinp [N, IC] += (may be NULL), the layer's own gradients; dxa scratch. */
static void lin_bwd(float *dinp, float *dxa, const float *xa, const float *dout, const float *inp,
                    const UnetLin *l, const UnetWork *wk, size_t N, size_t IC, size_t OC)
{
    if (dinp || l->dw || l->db)
        linear_backward(dinp, l->dw, l->db, dout, inp, unet_weight(l, wk), N, IC, OC);
    if (l->lora.down)
        lora_linear_backward(dinp, l->dlora.ddown, l->dlora.dup, dxa, xa, dout, inp, l->lora.down,
                             l->lora.up, l->lora.scale, N, IC, OC, l->lora.rank);
}

/* out [B, OC, OH, OW] = conv K x K (stride, pad) of inp [B, C, H, W] (+ LoRA, xa saved). */
static int conv_fwd(float *out, float *xa, const UnetWork *wk, const float *inp, const UnetLin *l,
                    size_t B, size_t C, size_t H, size_t W, size_t OC, size_t K, size_t stride,
                    size_t pad)
{
    int rc = conv2d_forward(out, inp, unet_weight(l, wk), l->b, wk->conv_scratch,
                            wk->conv_scratch_n, B, C, H, W, OC, K, stride, pad, pad);
    if (l->lora.down)
        rc |= lora_conv2d_forward(out, xa, inp, l->lora.down, l->lora.up, l->lora.scale,
                                  wk->conv_scratch, wk->conv_scratch_n, B, C, H, W, OC,
                                  l->lora.rank, K, stride, pad, pad);
    return rc;
}

static int conv_bwd(float *dinp, float *dxa, const float *xa, const float *dout, const float *inp,
                    const UnetLin *l, const UnetWork *wk, size_t B, size_t C, size_t H, size_t W,
                    size_t OC, size_t K, size_t stride, size_t pad)
{
    int rc = 0;
    if (dinp || l->dw || l->db)
        rc = conv2d_backward(dinp, l->dw, l->db, dout, inp, unet_weight(l, wk), wk->conv_scratch,
                             wk->conv_scratch_n, B, C, H, W, OC, K, stride, pad, pad);
    if (l->lora.down)
        rc |= lora_conv2d_backward(dinp, l->dlora.ddown, l->dlora.dup, dxa, xa, dout, inp,
                                   l->lora.down, l->lora.up, l->lora.scale, wk->conv_scratch,
                                   wk->conv_scratch_n, B, C, H, W, OC, l->lora.rank, K, stride,
                                   pad, pad);
    return rc;
}

/* ---- ResnetBlock2D ------------------------------------------------------------------- */

typedef struct {
    float *mean1, *rstd1, *n1, *h1, *mean2, *rstd2, *n2, *tproj;
    float *xa_c1, *xa_t, *xa_c2, *xa_sc;
} ResActs;

static size_t res_carve(ResActs *a, float *base, size_t cin, size_t cout, size_t B, size_t HW,
                        size_t G, size_t R)
{
    size_t off = 0;
    TAKE(a->mean1, B * G), TAKE(a->rstd1, B * G), TAKE(a->mean2, B * G), TAKE(a->rstd2, B * G);
    TAKE(a->n1, B * cin * HW);   /* SiLU(GroupNorm1(x)): conv1 input */
    TAKE(a->h1, B * cout * HW);  /* conv1 + time projection: GroupNorm2 input */
    TAKE(a->n2, B * cout * HW);  /* SiLU(GroupNorm2(h1)): conv2 input */
    TAKE(a->tproj, B * cout);
    TAKE(a->xa_c1, B * R * HW), TAKE(a->xa_t, B * R), TAKE(a->xa_c2, B * R * HW);
    TAKE(a->xa_sc, B * R * HW);
    return off;
}

size_t unet_resnet_acts_size(size_t cin, size_t cout, size_t B, size_t HW, size_t G, size_t R)
{
    ResActs a;
    return res_carve(&a, NULL, cin, cout, B, HW, G, R);
}

/* dn [B, max(Cin, Cout), HW], dh [B, Cout, HW], dtproj [B, Cout], dxa [B, R, HW]. */
size_t unet_resnet_bwd_size(size_t cin, size_t cout, size_t B, size_t HW, size_t R)
{
    return B * zmax(cin, cout) * HW + B * cout * HW + B * cout + B * R * HW;
}

/* The shortcut output (a 1x1 conv when Cin != Cout) is not read by the backward: it goes to
 * wk->work [B, Cout, HW]. */
int unet_resnet_train_forward(float *out, float *acts, const UnetWork *wk, const float *inp,
                              const float *temb_act, const UnetResnet *p, size_t B, size_t H,
                              size_t W, size_t T, size_t G, float eps, size_t R)
{
    const size_t HW = H * W, cin = (size_t)p->cin, cout = (size_t)p->cout;
    ResActs a;
    res_carve(&a, acts, cin, cout, B, HW, G, R);
    groupnorm_forward(a.n1, a.mean1, a.rstd1, inp, p->norm1.w, p->norm1.b, B, cin, HW, G, eps, 1);
    int rc = conv_fwd(a.h1, a.xa_c1, wk, a.n1, &p->conv1, B, cin, H, W, cout, 3, 1, 1);
    lin_fwd(a.tproj, a.xa_t, wk, temb_act, &p->time_emb_proj, B, T, cout);
#pragma omp parallel for schedule(static)
    for (size_t bc = 0; bc < B * cout; bc++)
        for (size_t i = 0; i < HW; i++)
            a.h1[bc * HW + i] += a.tproj[bc];
    groupnorm_forward(a.n2, a.mean2, a.rstd2, a.h1, p->norm2.w, p->norm2.b, B, cout, HW, G, eps, 1);
    rc |= conv_fwd(out, a.xa_c2, wk, a.n2, &p->conv2, B, cout, H, W, cout, 3, 1, 1);
    if (p->conv_shortcut.w) {
        rc |= conv_fwd(wk->work, a.xa_sc, wk, inp, &p->conv_shortcut, B, cin, H, W, cout, 1, 1,
                       0);
        residual_add(out, wk->work, B * cout * HW);
    } else {
        residual_add(out, inp, B * cout * HW);
    }
    return rc;
}

/* Backward of unet_resnet_train_forward (bottom-up):
 *   out = shortcut(x) + conv2(n2)      -> dn2, and d shortcut input
 *   n2 = SiLU(GN2(h1))                 -> dh1
 *   h1 = conv1(n1) + tproj[:, :, None] -> dtproj = sum over pixels of dh1 -> dtemb_act
 *   n1 = SiLU(GN1(x))                  -> dx */
int unet_resnet_backward(float *dinp, float *dtemb, const float *acts, const float *dout,
                         const float *inp, const float *temb_act, const UnetResnet *p,
                         const UnetWork *wk, float *scratch, size_t B, size_t H, size_t W,
                         size_t T, size_t G, size_t R)
{
    const size_t HW = H * W, cin = (size_t)p->cin, cout = (size_t)p->cout;
    ResActs a;
    res_carve(&a, (float *)acts, cin, cout, B, HW, G, R);
    float *dn = scratch, *dh = dn + B * zmax(cin, cout) * HW, *dtp = dh + B * cout * HW;
    float *dxa = dtp + B * cout;

    memset(dn, 0, B * cout * HW * sizeof *dn);
    int rc = conv_bwd(dn, dxa, a.xa_c2, dout, a.n2, &p->conv2, wk, B, cout, H, W, cout, 3, 1, 1);
    memset(dh, 0, B * cout * HW * sizeof *dh);
    groupnorm_backward(dh, p->norm2.dw, p->norm2.db, a.mean2, a.rstd2, dn, a.h1, p->norm2.w,
                       p->norm2.b, B, cout, HW, G, 1);
    const UnetLin *tp = &p->time_emb_proj;
    if (dtemb || tp->dw || tp->db || tp->lora.down) {
#pragma omp parallel for schedule(static)
        for (size_t bc = 0; bc < B * cout; bc++) {
            double s = 0.0;
            for (size_t i = 0; i < HW; i++)
                s += dh[bc * HW + i];
            dtp[bc] = (float)s;
        }
        lin_bwd(dtemb, dxa, a.xa_t, dtp, temb_act, tp, wk, B, T, cout);
    }
    /* d n1 feeds only GroupNorm1's backward: skipped (and conv1 run for its own gradients
     * only) when neither dinp nor norm1 need it */
    const int need_dn1 = dinp || p->norm1.dw || p->norm1.db;
    if (need_dn1)
        memset(dn, 0, B * cin * HW * sizeof *dn);
    rc |= conv_bwd(need_dn1 ? dn : NULL, dxa, a.xa_c1, dh, a.n1, &p->conv1, wk, B, cin, H, W,
                   cout, 3, 1, 1);
    if (need_dn1)
        groupnorm_backward(dinp, p->norm1.dw, p->norm1.db, a.mean1, a.rstd1, dn, inp, p->norm1.w,
                           p->norm1.b, B, cin, HW, G, 1);
    if (p->conv_shortcut.w)
        rc |= conv_bwd(dinp, dxa, a.xa_sc, dout, inp, &p->conv_shortcut, wk, B, cin, H, W, cout,
                       1, 1, 0);
    else if (dinp)
        residual_backward(dinp, dout, B * cout * HW);
    return rc;
}

/* ---- Transformer2DModel -------------------------------------------------------------- */

/* tok [B, HW, C] = x [B, C, HW] transposed; the adjoint adds back. */
static void to_tokens(float *tok, const float *x, size_t B, size_t C, size_t HW)
{
#pragma omp parallel for schedule(static)
    for (size_t bi = 0; bi < B * HW; bi++) {
        const size_t b = bi / HW, i = bi % HW;
        for (size_t c = 0; c < C; c++)
            tok[bi * C + c] = x[(b * C + c) * HW + i];
    }
}

/* x [B, C, HW] = tok [B, HW, C] transposed + add [B, C, HW] (add may be NULL). */
static void from_tokens(float *x, const float *tok, const float *add, size_t B, size_t C,
                        size_t HW)
{
#pragma omp parallel for schedule(static)
    for (size_t bc = 0; bc < B * C; bc++) {
        const size_t b = bc / C, c = bc % C;
        for (size_t i = 0; i < HW; i++)
            x[bc * HW + i] = tok[(b * HW + i) * C + c] + (add ? add[bc * HW + i] : 0.0f);
    }
}

enum { XA_PI, XA_Q1, XA_K1, XA_V1, XA_O1, XA_Q2, XA_O2, XA_FI, XA_FO, XA_PO, XA_K2, XA_V2, XA_N };

typedef struct {
    float *tmp, *gnt, *gmean, *grstd, *t0, *t1, *t2, *t3, *ln1, *ln2, *ln3;
    float *lm1, *lr1, *lm2, *lr2, *lm3, *lr3;
    float *q1, *k1, *v1, *a1, *lse1, *q2, *k2, *v2, *a2, *lse2, *ffh, *ffg;
    float *xa[XA_N];
} TfActs;

static size_t tf_carve(TfActs *a, float *base, size_t C, size_t heads, size_t B, size_t HW,
                       size_t S, size_t G, size_t R)
{
    const size_t N = B * HW, NC = N * C;
    size_t off = 0;
    /* tmp (GroupNorm output, then proj_out output) and ffg (GEGLU output) are not saved: the
     * train forward puts them in wk->work, the backward recomputes ffg when ff_out trains */
    a->tmp = a->ffg = NULL;
    TAKE(a->gnt, NC), TAKE(a->gmean, B * G), TAKE(a->grstd, B * G);
    TAKE(a->t0, NC), TAKE(a->t1, NC), TAKE(a->t2, NC), TAKE(a->t3, NC);
    TAKE(a->ln1, NC), TAKE(a->ln2, NC), TAKE(a->ln3, NC);
    TAKE(a->lm1, N), TAKE(a->lr1, N), TAKE(a->lm2, N), TAKE(a->lr2, N), TAKE(a->lm3, N);
    TAKE(a->lr3, N);
    TAKE(a->q1, NC), TAKE(a->k1, NC), TAKE(a->v1, NC), TAKE(a->a1, NC), TAKE(a->lse1, B * heads * HW);
    TAKE(a->q2, NC), TAKE(a->k2, B * S * C), TAKE(a->v2, B * S * C), TAKE(a->a2, NC);
    TAKE(a->lse2, B * heads * HW);
    TAKE(a->ffh, 8 * NC);
    for (int i = 0; i < XA_N; i++)
        TAKE(a->xa[i], (i >= XA_K2 ? B * S : N) * R);
    return off;
}

size_t unet_transformer_acts_size(size_t C, size_t heads, size_t B, size_t HW, size_t S, size_t G,
                                  size_t R)
{
    TfActs a;
    return tf_carve(&a, NULL, C, heads, B, HW, S, G, R);
}

/* dtok, dt, dln, datt, dq [N, C]; dk, dv [B*max(HW, S), C]; dffh [N, 8C]; dffg [N, 4C];
 * dxa [max(N, B*S), R]. */
size_t unet_transformer_bwd_size(size_t C, size_t B, size_t HW, size_t S, size_t R)
{
    const size_t N = B * HW;
    return 5 * N * C + 2 * B * zmax(HW, S) * C + 12 * N * C + zmax(N, B * S) * R;
}

void unet_transformer_train_forward(float *out, float *acts, const UnetWork *wk, const float *inp,
                                    const float *ctx, const UnetTransformer *p, size_t B, size_t H,
                                    size_t W, size_t S, size_t X, size_t G, size_t R)
{
    const size_t HW = H * W, C = (size_t)p->c, N = B * HW, heads = (size_t)p->heads;
    const size_t D = C / heads;
    const float scale = (float)(1.0 / sqrt((double)D));
    TfActs a;
    tf_carve(&a, acts, C, heads, B, HW, S, G, R);
    a.tmp = a.ffg = wk->work; /* [N, 4C]: tmp and ffg are never live together */

    groupnorm_forward(a.tmp, a.gmean, a.grstd, inp, p->norm.w, p->norm.b, B, C, HW, G, 1e-6f, 0);
    to_tokens(a.gnt, a.tmp, B, C, HW);
    lin_fwd(a.t0, a.xa[XA_PI], wk, a.gnt, &p->proj_in, N, C, C);

    layernorm_forward(a.ln1, a.lm1, a.lr1, a.t0, p->norm1.w, p->norm1.b, N, C, 1e-5f);
    lin_fwd(a.q1, a.xa[XA_Q1], wk, a.ln1, &p->q1, N, C, C);
    lin_fwd(a.k1, a.xa[XA_K1], wk, a.ln1, &p->k1, N, C, C);
    lin_fwd(a.v1, a.xa[XA_V1], wk, a.ln1, &p->v1, N, C, C);
    attention_forward(a.a1, a.lse1, a.q1, a.k1, a.v1, B, HW, HW, heads, D, scale, 0);
    lin_fwd(a.t1, a.xa[XA_O1], wk, a.a1, &p->o1, N, C, C);
    residual_add(a.t1, a.t0, N * C);

    layernorm_forward(a.ln2, a.lm2, a.lr2, a.t1, p->norm2.w, p->norm2.b, N, C, 1e-5f);
    lin_fwd(a.q2, a.xa[XA_Q2], wk, a.ln2, &p->q2, N, C, C);
    lin_fwd(a.k2, a.xa[XA_K2], wk, ctx, &p->k2, B * S, X, C);
    lin_fwd(a.v2, a.xa[XA_V2], wk, ctx, &p->v2, B * S, X, C);
    attention_forward(a.a2, a.lse2, a.q2, a.k2, a.v2, B, HW, S, heads, D, scale, 0);
    lin_fwd(a.t2, a.xa[XA_O2], wk, a.a2, &p->o2, N, C, C);
    residual_add(a.t2, a.t1, N * C);

    layernorm_forward(a.ln3, a.lm3, a.lr3, a.t2, p->norm3.w, p->norm3.b, N, C, 1e-5f);
    lin_fwd(a.ffh, a.xa[XA_FI], wk, a.ln3, &p->ff_in, N, C, 8 * C);
    geglu_forward(a.ffg, a.ffh, N, 4 * C);
    lin_fwd(a.t3, a.xa[XA_FO], wk, a.ffg, &p->ff_out, N, 4 * C, C);
    residual_add(a.t3, a.t2, N * C);

    lin_fwd(a.tmp, a.xa[XA_PO], wk, a.t3, &p->proj_out, N, C, C);
    from_tokens(out, a.tmp, inp, B, C, HW);
}

/* Backward of one attention: dres [N, C] is d(output of to_out); datt, dq, dk, dv, dxa scratch;
 * dx [N, C] += d of the query input x; dctx [B*Nk, Ckv] += d of the key/value input (when
 * kv is a different tensor than x, else dctx == dx). */
static void attn_bwd(float *dx, float *dctx, float *datt, float *dq, float *dk, float *dv,
                     float *dxa, const float *dres, const float *x, const float *kv,
                     const float *q, const float *k, const float *v, const float *att,
                     const float *lse, float *const *xa, const UnetLin *wq, const UnetLin *wkk,
                     const UnetLin *wv, const UnetLin *wo, const UnetWork *wk, size_t B, size_t Nq,
                     size_t Nk, size_t C, size_t Ckv, size_t heads)
{
    const size_t D = C / heads;
    memset(datt, 0, B * Nq * C * sizeof *datt);
    lin_bwd(datt, dxa, xa[3], dres, att, wo, wk, B * Nq, C, C);
    memset(dq, 0, B * Nq * C * sizeof *dq);
    memset(dk, 0, B * Nk * C * sizeof *dk);
    memset(dv, 0, B * Nk * C * sizeof *dv);
    attention_backward(dq, dk, dv, att, lse, datt, q, k, v, B, Nq, Nk, heads, D,
                       (float)(1.0 / sqrt((double)D)), 0);
    lin_bwd(dx, dxa, xa[0], dq, x, wq, wk, B * Nq, C, C);
    lin_bwd(dctx, dxa, xa[1], dk, kv, wkk, wk, B * Nk, Ckv, C);
    lin_bwd(dctx, dxa, xa[2], dv, kv, wv, wk, B * Nk, Ckv, C);
}

/* Backward of unet_transformer_train_forward, bottom-up: proj_out (tokens), feed-forward,
 * cross-attention (K/V gradients into dctx), self-attention, proj_in, GroupNorm; the block
 * residual passes dout to dinp. dt carries d(residual stream) through the three sub-blocks. */
void unet_transformer_backward(float *dinp, float *dctx, const float *acts, const float *dout,
                               const float *inp, const float *ctx, const UnetTransformer *p,
                               const UnetWork *wk, float *scratch, size_t B, size_t H, size_t W,
                               size_t S, size_t X, size_t G, size_t R)
{
    const size_t HW = H * W, C = (size_t)p->c, N = B * HW, NC = N * C, heads = (size_t)p->heads;
    TfActs a;
    tf_carve(&a, (float *)acts, C, heads, B, HW, S, G, R);
    float *dtok = scratch, *dt = dtok + NC, *dln = dt + NC, *datt = dln + NC, *dq = datt + NC;
    float *dk = dq + NC, *dv = dk + B * zmax(HW, S) * C, *dffh = dv + B * zmax(HW, S) * C;
    float *dffg = dffh + 8 * NC, *dxa = dffg + 4 * NC;

    to_tokens(dtok, dout, B, C, HW);
    memset(dt, 0, NC * sizeof *dt);
    lin_bwd(dt, dxa, a.xa[XA_PO], dtok, a.t3, &p->proj_out, wk, N, C, C);

    /* t3 = t2 + ff(LN3(t2)); ff_out's input GEGLU(ffh) recomputed (into datt..dv, free
     * until the attentions: 2 N C + 2 B max(HW, S) C >= 4 N C floats) only for its own
     * gradients */
    const float *ffg = NULL;
    if (p->ff_out.dw || p->ff_out.lora.down) {
        geglu_forward(datt, a.ffh, N, 4 * C);
        ffg = datt;
    }
    memset(dffg, 0, 4 * NC * sizeof *dffg);
    lin_bwd(dffg, dxa, a.xa[XA_FO], dt, ffg, &p->ff_out, wk, N, 4 * C, C);
    memset(dffh, 0, 8 * NC * sizeof *dffh);
    geglu_backward(dffh, dffg, a.ffh, N, 4 * C);
    memset(dln, 0, NC * sizeof *dln);
    lin_bwd(dln, dxa, a.xa[XA_FI], dffh, a.ln3, &p->ff_in, wk, N, C, 8 * C);
    layernorm_backward(dt, p->norm3.dw, p->norm3.db, a.lm3, a.lr3, dln, a.t2, p->norm3.w, N, C);

    /* t2 = t1 + attn2(LN2(t1), ctx) */
    float *const xa2[4] = {a.xa[XA_Q2], a.xa[XA_K2], a.xa[XA_V2], a.xa[XA_O2]};
    memset(dln, 0, NC * sizeof *dln);
    attn_bwd(dln, dctx, datt, dq, dk, dv, dxa, dt, a.ln2, ctx, a.q2, a.k2, a.v2, a.a2, a.lse2,
             xa2, &p->q2, &p->k2, &p->v2, &p->o2, wk, B, HW, S, C, X, heads);
    layernorm_backward(dt, p->norm2.dw, p->norm2.db, a.lm2, a.lr2, dln, a.t1, p->norm2.w, N, C);

    /* t1 = t0 + attn1(LN1(t0)) */
    float *const xa1[4] = {a.xa[XA_Q1], a.xa[XA_K1], a.xa[XA_V1], a.xa[XA_O1]};
    memset(dln, 0, NC * sizeof *dln);
    attn_bwd(dln, dln, datt, dq, dk, dv, dxa, dt, a.ln1, a.ln1, a.q1, a.k1, a.v1, a.a1, a.lse1,
             xa1, &p->q1, &p->k1, &p->v1, &p->o1, wk, B, HW, HW, C, C, heads);
    layernorm_backward(dt, p->norm1.dw, p->norm1.db, a.lm1, a.lr1, dln, a.t0, p->norm1.w, N, C);

    /* t0 = proj_in(tokens(GN(x))); out = tokens^-1(proj_out(t3)) + x */
    memset(dln, 0, NC * sizeof *dln);
    lin_bwd(dln, dxa, a.xa[XA_PI], dt, a.gnt, &p->proj_in, wk, N, C, C);
    from_tokens(datt, dln, NULL, B, C, HW);
    groupnorm_backward(dinp, p->norm.dw, p->norm.db, a.gmean, a.grstd, datt, inp, p->norm.w,
                       p->norm.b, B, C, HW, G, 0);
    if (dinp)
        residual_backward(dinp, dout, NC);
}

/* ---- Downsample2D / Upsample2D ------------------------------------------------------- */

/* Down: xa [B, R, H/2 * W/2]. Up: the upsampled input [B, C, 4HW], xa [B, R, 4HW]. */
size_t unet_sample_acts_size(int up, size_t C, size_t B, size_t HW, size_t R)
{
    return up ? 4 * B * HW * (C + R) : B * R * (HW / 4);
}

/* Down: dxa [B, R, HW/4]. Up: d upsampled [B, C, 4HW], dxa [B, R, 4HW]. */
size_t unet_sample_bwd_size(int up, size_t C, size_t B, size_t HW, size_t R)
{
    return unet_sample_acts_size(up, C, B, HW, R);
}

int unet_downsample_train_forward(float *out, float *acts, const UnetWork *wk, const float *inp,
                                  const UnetLin *p, size_t B, size_t C, size_t H, size_t W)
{
    return conv_fwd(out, acts, wk, inp, p, B, C, H, W, C, 3, 2, 1);
}

int unet_downsample_backward(float *dinp, const float *acts, const float *dout, const float *inp,
                             const UnetLin *p, const UnetWork *wk, float *scratch, size_t B,
                             size_t C, size_t H, size_t W)
{
    return conv_bwd(dinp, scratch, acts, dout, inp, p, wk, B, C, H, W, C, 3, 2, 1);
}

int unet_upsample_train_forward(float *out, float *acts, const UnetWork *wk, const float *inp,
                                const UnetLin *p, size_t B, size_t C, size_t H, size_t W)
{
    float *up = acts, *xa = acts + 4 * B * C * H * W;
    upsample_nearest2x_forward(up, inp, B, C, H, W);
    return conv_fwd(out, xa, wk, up, p, B, C, 2 * H, 2 * W, C, 3, 1, 1);
}

int unet_upsample_backward(float *dinp, const float *acts, const float *dout, const UnetLin *p,
                           const UnetWork *wk, float *scratch, size_t B, size_t C, size_t H,
                           size_t W)
{
    const float *up = acts, *xa = acts + 4 * B * C * H * W;
    float *dup = scratch, *dxa = scratch + 4 * B * C * H * W;
    memset(dup, 0, 4 * B * C * H * W * sizeof *dup);
    int rc = conv_bwd(dup, dxa, xa, dout, up, p, wk, B, C, 2 * H, 2 * W, C, 3, 1, 1);
    if (dinp)
        upsample_nearest2x_backward(dinp, dup, B, C, H, W);
    return rc;
}
