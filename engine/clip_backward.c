/* CLIP text encoder backward: clip_forward (clip.c) read bottom-up.
 *
 *   final:  out = final_layer_norm(x_L)                  -> dx = dLN(dout)
 *   layer l, MLP block:  x_{l+1} = r2 + fc2(act(fc1(ln2(r2))))
 *           dr2 = dx + dLN2(dfc1_in(dact(dfc2_in(dx))))  (residual: dx flows through)
 *   layer l, attention:  r2 = x_l + out_proj(attn(q_proj(ln1(x_l)), k_proj(.), v_proj(.)))
 *           dx_l = dr2 + dLN1(dq_in + dk_in + dv_in)      (attention_backward recomputes P)
 *   embeddings: x_0 = token_embedding[ids] + position_embedding[t]
 *           dtoken_embedding[ids[b, t]] += dx_0[b, t] (scatter-add), dposition_embedding[t] +=
 *           sum_b dx_0[b, t]; the ids get no gradient.
 * LoRA adapters (ClipParams.lora) add lora_linear_backward beside each base linear_backward:
 * both receive the same upstream gradient and add into the same input gradient.
 * Frozen weights have NULL gradient pointers: their weight-gradient GEMMs are skipped and only
 * input gradients flow. Layers below the lowest layer with a gradient are not visited at all
 * (with frozen embeddings, LoRA on the top layers costs only those layers).
 * SPDX-License-Identifier: GPL-3.0-or-later */
#include "clip.h"

#include "kernels.h"

#include <math.h>
#include <string.h>

#define T_CTX ((size_t)DB_CONTEXT_LEN)

static int mul_ok(size_t *r, size_t a, size_t b) { return !__builtin_mul_overflow(a, b, r); }
static int add_ok(size_t *r, size_t a, size_t b) { return !__builtin_add_overflow(a, b, r); }

DbStatus clip_backward_scratch_size(size_t *nfloats, const ClipConfig *c, size_t B,
                                    size_t lora_rank, DbError *err)
{
    size_t BT, BTD, BTI, total, t;
    /* dx, dln, datt, dq, dk, dv: 6 x BTD; dact, dfc1: 2 x BTI; dxa: BT x R */
    int ok = mul_ok(&BT, B, T_CTX) && mul_ok(&BTD, BT, (size_t)c->hidden) &&
             mul_ok(&BTI, BT, (size_t)c->intermediate) && mul_ok(&total, BTD, 6) &&
             mul_ok(&t, BTI, 2) && add_ok(&total, total, t) && mul_ok(&t, BT, lora_rank) &&
             add_ok(&total, total, t) && mul_ok(&t, total, sizeof(float));
    if (!ok)
        return db_fail(err, DB_ERR_NOMEM, "text encoder: backward scratch for batch %zu is too "
                       "large", B);
    *nfloats = total;
    return DB_OK;
}

static int layer_has_grad(const ClipGrads *g, size_t l)
{
    const ClipLayerGrads *a = &g->layer[l];
    int any = a->ln1_w || a->ln1_b || a->q_w || a->q_b || a->k_w || a->k_b || a->v_w ||
              a->v_b || a->o_w || a->o_b || a->ln2_w || a->ln2_b || a->fc1_w || a->fc1_b ||
              a->fc2_w || a->fc2_b;
    if (g->lora) {
        const ClipLayerLoraGrads *o = &g->lora[l];
        any = any || o->q.ddown || o->q.dup || o->k.ddown || o->k.dup || o->v.ddown ||
              o->v.dup || o->o.ddown || o->o.dup || o->fc1.ddown || o->fc1.dup || o->fc2.ddown ||
              o->fc2.dup;
    }
    return any;
}

/* Backward of clip_lora_forward (no-op without an adapter): dinp [N, IC] += and the adapter
 * gradients (lg may hold NULLs: frozen adapter) from dout [N, OC]; dxa [N, r] scratch. */
static void clip_lora_backward(float *dinp, const LoraGrads *lg, float *dxa, const float *xa,
                               const float *dout, const float *inp, const LoraParams *lp,
                               size_t N, size_t IC, size_t OC)
{
    if (lp->down)
        lora_linear_backward(dinp, lg->ddown, lg->dup, dxa, xa, dout, inp, lp->down, lp->up,
                             lp->scale, N, IC, OC, lp->rank);
}

/* dtok [V, D] += scatter of dx [B*T, D] by ids; dpos [P, D] rows 0..T-1 += sum over b.
 * Threads own column blocks of dtok (ids repeat: padding) and rows of dpos. */
static void clip_embed_backward(float *dtok, float *dpos, const float *dx, const int32_t *ids,
                                size_t B, size_t D)
{
    const size_t BT = B * T_CTX, CB = 64;
    if (dtok) {
#pragma omp parallel for schedule(static)
        for (size_t d0 = 0; d0 < D; d0 += CB) {
            const size_t d1 = d0 + CB < D ? d0 + CB : D;
            for (size_t bt = 0; bt < BT; bt++) {
                float *row = dtok + (size_t)ids[bt] * D;
                const float *g = dx + bt * D;
                for (size_t d = d0; d < d1; d++)
                    row[d] += g[d];
            }
        }
    }
    if (dpos) {
#pragma omp parallel for schedule(static)
        for (size_t t = 0; t < T_CTX; t++)
            for (size_t b = 0; b < B; b++) {
                const float *g = dx + (b * T_CTX + t) * D;
                for (size_t d = 0; d < D; d++)
                    dpos[t * D + d] += g[d];
            }
    }
}

void clip_backward(const ClipGrads *g, const ClipActs *a, const float *dout,
                   const int32_t *ids, const ClipParams *p, float *scratch, const ClipConfig *c)
{
    const size_t B = a->B, BT = B * T_CTX, D = (size_t)c->hidden, I = (size_t)c->intermediate;
    const size_t H = (size_t)c->heads, hd = D / H, L = (size_t)c->layers;
    const size_t BTD = BT * D, BTI = BT * I, s_xa = BT * a->lora_rank;
    const float scale = (float)(1.0 / sqrt((double)hd));
    void (*act_bwd)(float *, const float *, const float *, size_t) =
        c->act == CLIP_ACT_GELU ? gelu_backward : quick_gelu_backward;
    float *dx = scratch, *dln = dx + BTD, *datt = dln + BTD;
    float *dq = datt + BTD, *dk = dq + BTD, *dv = dk + BTD;
    float *dact = dv + BTD, *dfc1 = dact + BTI, *dxa = dfc1 + BTI;
    const LoraGrads frozen = {NULL, NULL};

    const int emb = g->token_embedding || g->position_embedding;
    size_t lowest = L; /* lowest layer to visit */
    if (emb)
        lowest = 0;
    else
        for (size_t l = 0; l < L && lowest == L; l++)
            if (layer_has_grad(g, l)) lowest = l;
    if (lowest == L && !g->lnf_w && !g->lnf_b)
        return;

    memset(dx, 0, BTD * sizeof *dx);
    layernorm_backward(lowest < L ? dx : NULL, g->lnf_w, g->lnf_b, a->lnf_mean, a->lnf_rstd,
                       dout, a->res + L * BTD, p->lnf_w, BT, D);
    for (size_t l = L; l-- > lowest;) {
        const ClipLayerParams *lp = &p->layer[l];
        const ClipLayerGrads *lg = &g->layer[l];
        const float *res = a->res + l * BTD, *res2 = a->res2 + l * BTD;
        const float *ln1 = a->ln1 + l * BTD, *ln2 = a->ln2 + l * BTD;
        const float *q = a->q + l * BTD, *k = a->k + l * BTD, *v = a->v + l * BTD;
        const float *att = a->att + l * BTD, *lse = a->att_lse + l * BT * H;
        const float *fc1 = a->fc1 + l * BTI, *act = a->act + l * BTI;
        const float *xa = a->lora_xa ? a->lora_xa + l * CLIP_LORA_SLOTS * s_xa : NULL;
        const ClipLayerLora *lo = p->lora ? &p->lora[l] : NULL;
        const ClipLayerLoraGrads *go = g->lora ? &g->lora[l] : NULL;

        /* MLP block: dx is d x_{l+1} = d fc2 output; it also reaches r2 unchanged */
        memset(dact, 0, BTI * sizeof *dact);
        linear_backward(dact, lg->fc2_w, lg->fc2_b, dx, act, lp->fc2_w, BT, I, D);
        if (lo)
            clip_lora_backward(dact, go ? &go->fc2 : &frozen, dxa, xa + 5 * s_xa, dx, act,
                               &lo->fc2, BT, I, D);
        memset(dfc1, 0, BTI * sizeof *dfc1);
        act_bwd(dfc1, dact, fc1, BTI);
        memset(dln, 0, BTD * sizeof *dln);
        linear_backward(dln, lg->fc1_w, lg->fc1_b, dfc1, ln2, lp->fc1_w, BT, D, I);
        if (lo)
            clip_lora_backward(dln, go ? &go->fc1 : &frozen, dxa, xa + 4 * s_xa, dfc1, ln2,
                               &lo->fc1, BT, D, I);
        layernorm_backward(dx, lg->ln2_w, lg->ln2_b, a->ln2_mean + l * BT, a->ln2_rstd + l * BT,
                           dln, res2, lp->ln2_w, BT, D);

        /* attention block: dx is now d r2 = d out_proj output; it also reaches x_l */
        memset(datt, 0, BTD * sizeof *datt);
        linear_backward(datt, lg->o_w, lg->o_b, dx, att, lp->o_w, BT, D, D);
        if (lo)
            clip_lora_backward(datt, go ? &go->o : &frozen, dxa, xa + 3 * s_xa, dx, att, &lo->o,
                               BT, D, D);
        memset(dq, 0, 3 * BTD * sizeof *dq); /* dq, dk, dv are contiguous */
        attention_backward(dq, dk, dv, att, lse, datt, q, k, v, B, T_CTX, T_CTX, H, hd, scale, 1);
        memset(dln, 0, BTD * sizeof *dln);
        linear_backward(dln, lg->q_w, lg->q_b, dq, ln1, lp->q_w, BT, D, D);
        linear_backward(dln, lg->k_w, lg->k_b, dk, ln1, lp->k_w, BT, D, D);
        linear_backward(dln, lg->v_w, lg->v_b, dv, ln1, lp->v_w, BT, D, D);
        if (lo) {
            clip_lora_backward(dln, go ? &go->q : &frozen, dxa, xa + 0 * s_xa, dq, ln1, &lo->q,
                               BT, D, D);
            clip_lora_backward(dln, go ? &go->k : &frozen, dxa, xa + 1 * s_xa, dk, ln1, &lo->k,
                               BT, D, D);
            clip_lora_backward(dln, go ? &go->v : &frozen, dxa, xa + 2 * s_xa, dv, ln1, &lo->v,
                               BT, D, D);
        }
        /* the lowest visited layer needs no input gradient unless the embeddings train */
        layernorm_backward(l > lowest || emb ? dx : NULL, lg->ln1_w, lg->ln1_b,
                           a->ln1_mean + l * BT, a->ln1_rstd + l * BT, dln, res, lp->ln1_w, BT, D);
    }
    if (emb)
        clip_embed_backward(g->token_embedding, g->position_embedding, dx, ids, B, D);
}
