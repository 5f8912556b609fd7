#!/usr/bin/python3
# SPDX-License-Identifier: GPL-3.0-or-later
"""FLOP counts of the SD networks from their diffusers/transformers configs (FLOP = 2 x
multiply-add; biases, norms, activations and softmax are not counted).

    unet_flops(cfg, batch, h, w, seq=77)      latent h x w              -> Counts
    vae_decode_flops(cfg, batch, h, w)        latent h x w              -> Counts
    vae_encode_flops(cfg, batch, H, W)        image H x W               -> Counts
    text_flops(cfg, batch, seq=77)                                      -> Counts
    lora_step_flops(cfg, batch, h, w, rank)   UNet forward + dX (frozen weights: no dW; attention
                                              backward = 2 x its forward) + the LoRA adapters'
                                              forward/dX/dW on attention q/k/v/out -> Counts

Counts has .conv, .linear, .attn (QK^T and PV) and .total. The walk follows the forward of
tests/reference/sd_unet.py / sd_vae.py / clip_text.py; `flops.py --check` compares it with a
count taken by intercepting F.conv2d / F.linear / bmm / matmul while those modules run (tiny
and SD-1.5 configs on the meta device) and prints the SD-1.5 numbers of performance.md.
"""
import os
import sys


class Counts:
    def __init__(self, conv=0, linear=0, attn=0):
        self.conv, self.linear, self.attn = conv, linear, attn

    @property
    def total(self):
        return self.conv + self.linear + self.attn

    def __add__(self, o):
        return Counts(self.conv + o.conv, self.linear + o.linear, self.attn + o.attn)

    def scaled(self, c=1, lin=1, a=1):
        return Counts(self.conv * c, self.linear * lin, self.attn * a)

    def __repr__(self):
        t = max(self.total, 1)
        return "%.1f GFLOP (conv %.0f %%, linear %.0f %%, attention %.0f %%)" % (
            self.total / 1e9, 100 * self.conv / t, 100 * self.linear / t, 100 * self.attn / t)


def _per_block(v, n):
    return list(v) if isinstance(v, (list, tuple)) else [v] * n


class _Acc:
    """Accumulates FLOPs of the layers of one forward."""

    def __init__(self, batch):
        self.b = batch
        self.c = Counts()
        self.lora = []  # (in, out, tokens) of every adapted attention projection

    def conv(self, cin, cout, k, hout, wout):
        self.c.conv += 2 * self.b * cin * cout * k * k * hout * wout

    def linear(self, din, dout, tokens, lora=False):
        self.c.linear += 2 * self.b * din * dout * tokens
        if lora:
            self.lora.append((din, dout, tokens))

    def attention(self, n, m, inner):
        self.c.attn += 2 * 2 * self.b * n * m * inner  # QK^T and PV over all heads

    def attn_block(self, query_dim, inner, n, m, kv_dim):
        """diffusers Attention on [B,n,query_dim] with context [B,m,kv_dim]."""
        self.linear(query_dim, inner, n, True)
        self.linear(kv_dim, inner, m, True)
        self.linear(kv_dim, inner, m, True)
        self.attention(n, m, inner)
        self.linear(inner, query_dim, n, True)

    def resnet(self, cin, cout, h, w, temb):
        self.conv(cin, cout, 3, h, w)
        if temb:
            self.linear(temb, cout, 1)
        self.conv(cout, cout, 3, h, w)
        if cin != cout:
            self.conv(cin, cout, 1, h, w)

    def transformer(self, ch, heads, layers, h, w, cross, seq, linear_proj, only_cross):
        n = h * w
        inner = ch  # head dim = ch // heads
        proj = (lambda: self.linear(ch, inner, n)) if linear_proj else (lambda: self.conv(ch, inner, 1, h, w))
        proj()
        for _ in range(layers):
            if only_cross:
                self.attn_block(inner, inner, n, seq, cross)
            else:
                self.attn_block(inner, inner, n, n, inner)
            self.attn_block(inner, inner, n, seq, cross)
            self.linear(inner, 8 * inner, n)  # GEGLU proj (dim -> 2 x 4 dim)
            self.linear(4 * inner, inner, n)
        proj()


def _unet_walk(cfg, batch, h, w, seq):
    boc = list(cfg.get("block_out_channels", (320, 640, 1280, 1280)))
    nb = len(boc)
    heads = _per_block(cfg.get("attention_head_dim", 8), nb)
    layers = _per_block(cfg.get("layers_per_block", 2), nb)
    tl = _per_block(cfg.get("transformer_layers_per_block", 1), nb)
    cross = _per_block(cfg.get("cross_attention_dim", 1280), nb)
    only_cross = _per_block(cfg.get("only_cross_attention", False), nb)
    lin = bool(cfg.get("use_linear_projection", False))
    kin, kout = cfg.get("conv_in_kernel", 3), cfg.get("conv_out_kernel", 3)
    down = cfg["down_block_types"]
    up = cfg["up_block_types"]
    temb = boc[0] * 4
    a = _Acc(batch)
    a.b = batch  # the time embedding runs once per sample
    a.linear(boc[0], temb, 1)
    a.linear(temb, temb, 1)
    a.conv(cfg.get("in_channels", 4), boc[0], kin, h, w)
    skips = [boc[0]]
    ch = boc[0]
    for i, t in enumerate(down):
        for _ in range(layers[i]):
            a.resnet(ch, boc[i], h, w, temb)
            ch = boc[i]
            if t.startswith("CrossAttn"):
                a.transformer(ch, heads[i], tl[i], h, w, cross[i], seq, lin, only_cross[i])
            skips.append(ch)
        if i < nb - 1:
            h, w = (h + 1) // 2, (w + 1) // 2
            a.conv(ch, ch, 3, h, w)
            skips.append(ch)
    a.resnet(ch, ch, h, w, temb)
    a.transformer(ch, heads[-1], tl[-1], h, w, cross[-1], seq, lin, only_cross[-1])
    a.resnet(ch, ch, h, w, temb)
    for i, t in enumerate(up):
        j = nb - 1 - i
        for _ in range(layers[j] + 1):
            a.resnet(ch + skips.pop(), boc[j], h, w, temb)
            ch = boc[j]
            if t.startswith("CrossAttn"):
                a.transformer(ch, heads[j], tl[j], h, w, cross[j], seq, lin, only_cross[j])
        if i < nb - 1:
            h, w = 2 * h, 2 * w  # (odd sizes: diffusers upsamples to the skip size)
            a.conv(ch, ch, 3, h, w)
    a.conv(boc[0], cfg.get("out_channels", 4), kout, h, w)
    return a


def unet_flops(cfg, batch, h, w, seq=77):
    return _unet_walk(cfg, batch, h, w, seq).c


def lora_step_flops(cfg, batch, h, w, rank=4, seq=77):
    """Forward + input gradients (convs and linears: one more forward's worth; attention: dS, dQ,
    dK, dV = 2 forwards' worth; conv_in needs no dX but is ~0) + LoRA adapters x -> A -> B:
    forward, dX and dW of both factors (3 x forward)."""
    a = _unet_walk(cfg, batch, h, w, seq)
    c = a.c + a.c.scaled(1, 1, 2)
    lora = sum(2 * batch * r_tok * rank * (din + dout) for din, dout, r_tok in a.lora)
    return c + Counts(linear=3 * lora)


def _vae_common(cfg):
    boc = list(cfg.get("block_out_channels", (64,)))
    return boc, cfg.get("layers_per_block", 1), cfg.get("latent_channels", 4)


def _vae_mid(a, ch, h, w):
    a.resnet(ch, ch, h, w, None)
    n = h * w
    a.linear(ch, ch, n)
    a.linear(ch, ch, n)
    a.linear(ch, ch, n)
    a.attention(n, n, ch)
    a.linear(ch, ch, n)
    a.resnet(ch, ch, h, w, None)


def vae_decode_flops(cfg, batch, h, w):
    boc, layers, lat = _vae_common(cfg)
    a = _Acc(batch)
    a.conv(lat, lat, 1, h, w)  # post_quant_conv
    a.conv(lat, boc[-1], 3, h, w)
    _vae_mid(a, boc[-1], h, w)
    ch = boc[-1]
    for i, cout in enumerate(boc[::-1]):
        for _ in range(layers + 1):
            a.resnet(ch, cout, h, w, None)
            ch = cout
        if i < len(boc) - 1:
            h, w = 2 * h, 2 * w
            a.conv(ch, ch, 3, h, w)
    a.conv(boc[0], cfg.get("out_channels", 3), 3, h, w)
    return a.c


def vae_encode_flops(cfg, batch, h, w):
    boc, layers, lat = _vae_common(cfg)
    a = _Acc(batch)
    a.conv(cfg.get("in_channels", 3), boc[0], 3, h, w)
    ch = boc[0]
    for i, cout in enumerate(boc):
        for _ in range(layers):
            a.resnet(ch, cout, h, w, None)
            ch = cout
        if i < len(boc) - 1:
            h, w = h // 2, w // 2  # pad (0,1,0,1), 3x3 stride 2
            a.conv(ch, ch, 3, h, w)
    _vae_mid(a, ch, h, w)
    a.conv(ch, 2 * lat, 3, h, w)
    a.conv(2 * lat, 2 * lat, 1, h, w)  # quant_conv
    return a.c


def text_flops(cfg, batch, seq=77):
    d, f = cfg["hidden_size"], cfg["intermediate_size"]
    a = _Acc(batch)
    for _ in range(cfg["num_hidden_layers"]):
        for _ in range(4):
            a.linear(d, d, seq)
        a.attention(seq, seq, d)  # full T x T (the causal mask is applied, not skipped)
        a.linear(d, f, seq)
        a.linear(f, d, seq)
    return a.c


# ---- self-check against intercepted torch ops ---------------------------------------------

def _measured(fn):
    """FLOPs of the conv2d / linear / bmm / matmul calls fn() makes -> Counts."""
    import torch
    import torch.nn.functional as F
    from torch.overrides import TorchFunctionMode

    c = Counts()

    def numel(shape):
        n = 1
        for s in shape:
            n *= int(s)
        return n

    class Mode(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            out = func(*args, **kwargs)
            if func in (F.conv2d, torch.conv2d):
                wt = args[1]
                c.conv += 2 * numel(out.shape) * numel(wt.shape[1:])
            elif func is F.linear:
                c.linear += 2 * numel(out.shape) * int(args[1].shape[1])
            elif getattr(func, "__name__", "") in ("bmm", "matmul", "__matmul__"):
                c.attn += 2 * numel(out.shape) * int(args[0].shape[-1])
            return out

    with torch.no_grad(), Mode():
        fn()
    return c


def check():
    import torch
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "reference"))
    import clip_text
    import sd_configs
    import sd_unet
    import sd_vae

    bad = 0
    for kind, dev, hw, b in (("tiny-sd1", "cpu", 16, 2), ("tiny-sd2", "cpu", 16, 1),
                             ("sd15", "meta", 64, 1), ("sd21", "meta", 24, 2)):
        ucfg, vcfg, tcfg = (sd_configs.unet_config(kind), sd_configs.vae_config(kind),
                            sd_configs.text_encoder_config(kind))
        with sd_unet.build_device(dev):
            unet, vae = sd_unet.UNet2DConditionModel(ucfg), sd_vae.AutoencoderKL(vcfg)
        te = clip_text.CLIPTextModel(tcfg, device=dev)
        f = vae.scale_factor
        x = torch.zeros(b, ucfg["in_channels"], hw, hw, device=dev)
        ctx = torch.zeros(b, 77, ucfg["cross_attention_dim"], device=dev)
        t = torch.full((b,), 10.0, device=dev)
        cases = [
            ("unet %dx%d" % (hw, hw), lambda: unet(x, t, ctx), unet_flops(ucfg, b, hw, hw)),
            ("vae decode", lambda: vae.decode(torch.zeros(b, 4, hw, hw, device=dev)),
             vae_decode_flops(vcfg, b, hw, hw)),
            ("vae encode", lambda: vae.encode(torch.zeros(b, 3, hw * f, hw * f, device=dev)),
             vae_encode_flops(vcfg, b, hw * f, hw * f)),
        ]
        if dev == "cpu":  # the embedding lookup does not run on meta in torch 1.13
            ids = torch.zeros(b, 77, dtype=torch.long)
            cases.append(("text encoder", lambda: te(ids), text_flops(tcfg, b)))
        for name, fn, want in cases:
            got = _measured(fn)
            ok = (got.conv, got.linear, got.attn) == (want.conv, want.linear, want.attn)
            bad += not ok
            print("%s %s %s batch %d: counted %r, intercepted %r" % ("ok  " if ok else "FAIL", kind,
                  name, b, want, got))
    u, v, t = sd_configs.unet_config("sd15"), sd_configs.vae_config("sd15"), sd_configs.text_encoder_config("sd15")
    print("SD 1.5 per image: UNet 512 %r; 256 %r; 768 %r" % (unet_flops(u, 1, 64, 64),
          unet_flops(u, 1, 32, 32), unet_flops(u, 1, 96, 96)))
    print("SD 1.5: VAE decode 512 %r; encode 512 %r; text encoder %r" % (
        vae_decode_flops(v, 1, 64, 64), vae_encode_flops(v, 1, 512, 512), text_flops(t, 1)))
    print("SD 1.5: LoRA rank 4 step per image at 512 %r" % lora_step_flops(u, 1, 64, 64, 4))
    return 1 if bad else 0


if __name__ == "__main__":
    if sys.argv[1:] != ["--check"]:
        sys.exit("usage: flops.py --check")
    sys.exit(check())
