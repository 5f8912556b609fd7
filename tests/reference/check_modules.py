# SPDX-License-Identifier: GPL-3.0-or-later
"""Self-checks of the reference SD modules (sd_unet.py, sd_vae.py, sd_configs.py).

Run: /usr/bin/python3 tests/reference/check_modules.py     exit status 0 = all checks passed.
Full-size models are only built on the meta device (no weights allocated).

With --diffusers-src DIR (DIR holds a diffusers/ package, e.g. made by
  git --git-dir=<diffusers mirror> archive v0.25.0 src/diffusers | tar -x -C /tmp/d  -> DIR=/tmp/d/src)
it also loads diffusers' own UNet2DConditionModel/AutoencoderKL (its missing third-party imports
are stubbed: only the model code is used) and checks, for every kind, that both build the same
state_dict keys, shapes and order, then loads our random weights into diffusers (strict) and compares
forward outputs. Add --full to also compare the full-size SD1.5 UNet/VAE in float32 (~7 GiB RAM, ~1 min).
"""
import math
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sd_configs as C  # noqa: E402
import sd_unet as U  # noqa: E402
import sd_vae as V  # noqa: E402

FAILS = []


def check(ok, what):
    print("%s %s" % ("ok  " if ok else "FAIL", what))
    if not ok:
        FAILS.append(what)


def meta_state(kind, vae):
    with U.build_device("meta"):
        m = V.AutoencoderKL(C.vae_config(kind)) if vae else U.UNet2DConditionModel(C.unet_config(kind))
    return {k: tuple(v.shape) for k, v in m.state_dict().items()}


def check_counts():
    want = {("sd15", False): (859520964, 686), ("sd21", False): (865910724, 686),
            ("sd21-base", False): (865910724, 686), ("sd15", True): (83653863, 248),
            ("sd21", True): (83653863, 248)}
    for (kind, vae), (n, t) in want.items():
        sd = meta_state(kind, vae)
        got = sum(math.prod(s) for s in sd.values())
        check(got == n and len(sd) == t, "%s %s: %d params / %d tensors (want %d / %d)"
              % (kind, "VAE" if vae else "UNet", got, len(sd), n, t))


# Known diffusers key -> shape pairs of the real SD checkpoints.
UNET15_KEYS = {
    "conv_in.weight": (320, 4, 3, 3),
    "time_embedding.linear_1.weight": (1280, 320),
    "time_embedding.linear_2.weight": (1280, 1280),
    "down_blocks.0.attentions.0.proj_in.weight": (320, 320, 1, 1),
    "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight": (320, 320),
    "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight": (320, 768),
    "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_out.0.bias": (320,),
    "down_blocks.0.attentions.0.transformer_blocks.0.ff.net.0.proj.weight": (2560, 320),
    "down_blocks.0.attentions.0.transformer_blocks.0.ff.net.2.weight": (320, 1280),
    "down_blocks.0.downsamplers.0.conv.weight": (320, 320, 3, 3),
    "down_blocks.1.resnets.0.conv_shortcut.weight": (640, 320, 1, 1),
    "down_blocks.3.resnets.1.time_emb_proj.weight": (1280, 1280),
    "mid_block.attentions.0.transformer_blocks.0.ff.net.0.proj.weight": (10240, 1280),
    "mid_block.resnets.1.conv2.weight": (1280, 1280, 3, 3),
    "up_blocks.0.resnets.0.conv1.weight": (1280, 2560, 3, 3),
    "up_blocks.0.resnets.2.conv_shortcut.weight": (1280, 2560, 1, 1),
    "up_blocks.0.upsamplers.0.conv.weight": (1280, 1280, 3, 3),
    "up_blocks.1.resnets.2.conv1.weight": (1280, 1920, 3, 3),
    "up_blocks.1.attentions.2.transformer_blocks.0.attn2.to_v.weight": (1280, 768),
    "up_blocks.2.resnets.0.conv1.weight": (640, 1920, 3, 3),
    "up_blocks.2.resnets.2.conv1.weight": (640, 960, 3, 3),
    "up_blocks.3.resnets.0.conv_shortcut.weight": (320, 960, 1, 1),
    "up_blocks.3.resnets.2.conv_shortcut.weight": (320, 640, 1, 1),
    "up_blocks.3.attentions.2.proj_out.weight": (320, 320, 1, 1),
    "conv_norm_out.weight": (320,),
    "conv_out.weight": (4, 320, 3, 3),
}
UNET15_ABSENT = ["up_blocks.3.upsamplers.0.conv.weight", "down_blocks.3.downsamplers.0.conv.weight",
                 "down_blocks.0.resnets.0.conv_shortcut.weight", "time_proj.weight",
                 "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.bias"]
UNET21_KEYS = {
    "down_blocks.0.attentions.0.proj_in.weight": (320, 320),
    "up_blocks.3.attentions.2.proj_out.weight": (320, 320),
    "mid_block.attentions.0.transformer_blocks.0.attn2.to_k.weight": (1280, 1024),
}
VAE_KEYS = {
    "encoder.conv_in.weight": (128, 3, 3, 3),
    "encoder.down_blocks.0.downsamplers.0.conv.weight": (128, 128, 3, 3),
    "encoder.down_blocks.1.resnets.0.conv_shortcut.weight": (256, 128, 1, 1),
    "encoder.mid_block.attentions.0.group_norm.weight": (512,),
    "encoder.mid_block.attentions.0.to_q.bias": (512,),
    "encoder.conv_out.weight": (8, 512, 3, 3),
    "quant_conv.weight": (8, 8, 1, 1),
    "post_quant_conv.weight": (4, 4, 1, 1),
    "decoder.conv_in.weight": (512, 4, 3, 3),
    "decoder.mid_block.attentions.0.to_out.0.weight": (512, 512),
    "decoder.up_blocks.0.upsamplers.0.conv.weight": (512, 512, 3, 3),
    "decoder.up_blocks.2.resnets.0.conv_shortcut.weight": (256, 512, 1, 1),
    "decoder.up_blocks.3.resnets.0.conv_shortcut.weight": (128, 256, 1, 1),
    "decoder.up_blocks.3.resnets.2.conv2.weight": (128, 128, 3, 3),
    "decoder.conv_out.weight": (3, 128, 3, 3),
}
VAE_ABSENT = ["encoder.down_blocks.3.downsamplers.0.conv.weight",
              "decoder.up_blocks.3.upsamplers.0.conv.weight",
              "encoder.down_blocks.0.resnets.0.time_emb_proj.weight",
              "encoder.mid_block.attentions.0.query.weight"]


def check_keys():
    for kind, vae, keys, absent in (("sd15", False, UNET15_KEYS, UNET15_ABSENT),
                                    ("sd21", False, UNET21_KEYS, []),
                                    ("sd15", True, VAE_KEYS, VAE_ABSENT)):
        sd = meta_state(kind, vae)
        bad = [k for k, s in keys.items() if sd.get(k) != s]
        bad += [k for k in absent if k in sd]
        check(not bad, "%s %s: %d known key shapes, %d absent keys %s"
              % (kind, "VAE" if vae else "UNet", len(keys), len(absent), bad[:3] if bad else ""))


def heads_of(m, prefix):
    return dict(m.named_modules())[prefix].transformer_blocks[0].attn1.heads


def check_heads():
    with U.build_device("meta"):
        m1 = U.UNet2DConditionModel(C.unet_config("tiny-sd1"))
        m2 = U.UNet2DConditionModel(C.unet_config("tiny-sd2"))
        m15 = U.UNet2DConditionModel(C.unet_config("sd15"))
        m21 = U.UNet2DConditionModel(C.unet_config("sd21"))
    got = [heads_of(m1, "down_blocks.0.attentions.0"), heads_of(m1, "mid_block.attentions.0"),
           heads_of(m2, "down_blocks.0.attentions.0"), heads_of(m2, "mid_block.attentions.0"),
           heads_of(m2, "up_blocks.1.attentions.0"), heads_of(m15, "up_blocks.1.attentions.0"),
           heads_of(m21, "down_blocks.0.attentions.0"), heads_of(m21, "up_blocks.1.attentions.0"),
           heads_of(m21, "mid_block.attentions.0")]
    want = [8, 8, 1, 2, 1, 8, 5, 20, 20]
    check(got == want, "head counts (legacy attention_head_dim = heads): %s" % got)
    lin = isinstance(m2.down_blocks[0].attentions[0].proj_in, torch.nn.Linear)
    conv = isinstance(m1.down_blocks[0].attentions[0].proj_in, torch.nn.Conv2d)
    check(lin and conv, "proj_in Linear for use_linear_projection, 1x1 Conv2d otherwise")


def rel_err(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-30)).item()


def unet_pair(kind, seed):
    m32 = U.init_random_(U.UNet2DConditionModel(C.unet_config(kind)), seed).eval()
    m64 = U.init_random_(U.UNet2DConditionModel(C.unet_config(kind)).double(), seed).eval()
    return m32, m64


def check_unet_forward(kind):
    cfg = C.unet_config(kind)
    torch.manual_seed(1)
    m32, m64 = unet_pair(kind, 1234)
    same = all(torch.equal(a.double(), b) for a, b in zip(m32.state_dict().values(),
                                                          m64.state_dict().values()))
    check(same, "%s UNet: init_random_ gives identical float32/float64 weights" % kind)
    nz = all(bool((p != 0).any()) for p in m32.parameters())
    check(nz, "%s UNet: no all-zero parameter after init_random_" % kind)
    b, h, w = 2, 16, 24
    x = torch.randn(b, cfg["in_channels"], h, w)
    ctx = torch.randn(b, 7, cfg["cross_attention_dim"])
    t = torch.tensor([10, 987])
    with torch.no_grad():
        y32 = m32(x, t, ctx)
        y64 = m64(x.double(), t, ctx.double())
        check(tuple(y32.shape) == (b, cfg["out_channels"], h, w), "%s UNet: output shape %s"
              % (kind, tuple(y32.shape)))
        s = y32.std().item()
        check(0.05 < s < 50 and torch.isfinite(y32).all().item(),
              "%s UNet: output finite, std %.3g (well conditioned)" % (kind, s))
        e = rel_err(y32, y64)
        check(e < 2e-5, "%s UNet: float32 vs float64 max rel err %.2e (tol 2e-5)" % (kind, e))
        y0 = m64(x[:1].double(), 10, ctx[:1].double())
        y1 = m64(x[1:].double(), torch.tensor(987.0), ctx[1:].double())
        e = max(rel_err(y0, y64[:1]), rel_err(y1, y64[1:]))
        check(e < 1e-12, "%s UNet: batch vs single, int/scalar-tensor timestep: %.1e (tol 1e-12)"
              % (kind, e))
        ya = m64(x.double(), 500, ctx.double())
        yb = m64(x.double(), torch.tensor([500.0, 500.0], dtype=torch.float64), ctx.double())
        check(rel_err(ya, yb) < 1e-12, "%s UNet: int timestep == float tensor [B] timestep" % kind)
        yt = m64(x.double(), 501, ctx.double())
        check(rel_err(ya, yt) > 1e-6, "%s UNet: output depends on timestep" % kind)
        yc = m64(x.double(), 500, ctx.double() * 1.1)
        check(rel_err(ya, yc) > 1e-6, "%s UNet: output depends on encoder_hidden_states" % kind)
        xo = torch.randn(1, cfg["in_channels"], 13, 10, dtype=torch.float64)
        yo = m64(xo, 3, ctx[:1].double())
        check(tuple(yo.shape[2:]) == (13, 10), "%s UNet: odd latent 13x10 -> %s"
              % (kind, tuple(yo.shape[2:])))
    # every parameter receives a gradient
    m64.zero_grad()
    m64(x.double(), t, ctx.double()).square().mean().backward()
    dead = [n for n, p in m64.named_parameters() if p.grad is None or not (p.grad != 0).any()]
    check(not dead, "%s UNet: every parameter has a nonzero gradient %s" % (kind, dead[:3]))


def check_vae_forward(kind):
    cfg = C.vae_config(kind)
    torch.manual_seed(2)
    m32 = U.init_random_(V.AutoencoderKL(cfg), 99).eval()
    m64 = U.init_random_(V.AutoencoderKL(cfg).double(), 99).eval()
    f = m32.scale_factor
    x = torch.randn(2, cfg["in_channels"], 8 * f, 6 * f)
    with torch.no_grad():
        mean, logvar = m32.encode(x)
        mean64, logvar64 = m64.encode(x.double())
        want = (2, cfg["latent_channels"], x.shape[2] // f, x.shape[3] // f)
        check(tuple(mean.shape) == want and tuple(logvar.shape) == want,
              "%s VAE: encode shapes %s" % (kind, tuple(mean.shape)))
        check(logvar64.min().item() >= -30 and logvar64.max().item() <= 20, "%s VAE: logvar in [-30,20]" % kind)
        e = max(rel_err(mean, mean64), rel_err(logvar, logvar64))
        check(e < 2e-5, "%s VAE: encode float32 vs float64 max rel err %.2e (tol 2e-5)" % (kind, e))
        z = torch.randn(2, cfg["latent_channels"], 5, 7)
        y = m32.decode(z)
        y64 = m64.decode(z.double())
        check(tuple(y.shape) == (2, cfg["out_channels"], 5 * f, 7 * f),
              "%s VAE: decode shape %s" % (kind, tuple(y.shape)))
        e = rel_err(y, y64)
        check(e < 2e-5, "%s VAE: decode float32 vs float64 max rel err %.2e (tol 2e-5)" % (kind, e))
        s = y.std().item()
        check(0.05 < s < 50, "%s VAE: decode std %.3g (well conditioned)" % (kind, s))
        m64.quant_conv.bias[cfg["latent_channels"]:] += 1e3
        check(m64.encode(x.double())[1].max().item() == 20.0, "%s VAE: logvar clamps at 20" % kind)
    m64 = U.init_random_(V.AutoencoderKL(cfg).double(), 99)
    m64.decode(z.double()).square().mean().backward()
    m64.encode(x.double())[0].square().mean().backward()
    dead = [n for n, p in m64.named_parameters() if p.grad is None or not (p.grad != 0).any()]
    check(not dead, "%s VAE: every parameter has a nonzero gradient %s" % (kind, dead[:3]))


def check_attention_vs_torch():
    """Head split/merge of Attention against torch.nn.MultiheadAttention (an independent code)."""
    torch.manual_seed(3)
    d, h = 24, 3
    a = U.init_random_(U.Attention(d, h, d // h, cross_attention_dim=None, bias=True), 5).double()
    mha = torch.nn.MultiheadAttention(d, h, bias=True, batch_first=True).double()
    with torch.no_grad():
        mha.in_proj_weight.copy_(torch.cat([a.to_q.weight, a.to_k.weight, a.to_v.weight]))
        mha.in_proj_bias.copy_(torch.cat([a.to_q.bias, a.to_k.bias, a.to_v.bias]))
        mha.out_proj.weight.copy_(a.to_out[0].weight)
        mha.out_proj.bias.copy_(a.to_out[0].bias)
        x = torch.randn(2, 5, d, dtype=torch.float64)
        e = rel_err(a(x), mha(x, x, x, need_weights=False)[0])
    check(e < 1e-12, "Attention == torch MultiheadAttention: %.1e (tol 1e-12)" % e)


def check_timestep_embedding():
    t = torch.tensor([0, 1, 999])
    e = U.get_timestep_embedding(t, 8, True, 0)
    half = 4
    f = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float64) / half)
    ref = torch.cat([torch.cos(t[:, None] * f), torch.sin(t[:, None] * f)], dim=1)
    err = (e.double() - ref).abs().max().item()
    check(err < 1e-3 and e.dtype == torch.float32,
          "timestep embedding [cos, sin] (flip_sin_to_cos) vs float64 formula: %.1e (tol 1e-3)" % err)
    e2 = U.get_timestep_embedding(t, 8, False, 1)
    f2 = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float64) / (half - 1))
    ref2 = torch.cat([torch.sin(t[:, None] * f2), torch.cos(t[:, None] * f2)], dim=1)
    err2 = (e2.double() - ref2).abs().max().item()
    check(err2 < 1e-3, "timestep embedding [sin, cos], freq_shift 1: %.1e (tol 1e-3)" % err2)


def check_configs():
    ok = True
    for k in C.KINDS:
        u, v, t = C.unet_config(k), C.vae_config(k), C.text_encoder_config(k)
        ok &= u["_class_name"] == "UNet2DConditionModel" and v["_class_name"] == "AutoencoderKL"
        ok &= t["hidden_size"] % t["num_attention_heads"] == 0
        for cls in ("PNDMScheduler", "DDIMScheduler", "DDPMScheduler"):
            s = C.scheduler_config(k, cls)
            ok &= s["_class_name"] == cls
        ok &= C.to_json(C.model_index(k)).endswith("}\n")
    ok &= C.scheduler_config("sd21")["prediction_type"] == "v_prediction"
    ok &= C.scheduler_config("sd21-base")["prediction_type"] == "epsilon"
    check(bool(ok), "configs for %s are consistent" % ", ".join(C.KINDS))


def load_diffusers(src):
    """Imports diffusers' model classes from a source tree, stubbing the hub/IO dependencies."""
    import importlib.abc
    import importlib.machinery
    import re
    import types

    class Any_(type):
        def __getattr__(cls, name):
            return Any_(name, (object,), {})

        def __call__(cls, *a, **k):
            return None

    class Stub(types.ModuleType):
        __path__ = []

        def __getattr__(self, name):
            if name.startswith("__"):
                raise AttributeError(name)
            v = "/nonexistent" if name.isupper() else Any_(name, (object,), {})
            setattr(self, name, v)
            return v

    class Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
        roots = {"huggingface_hub", "safetensors", "filelock", "importlib_metadata", "tqdm"}

        def find_spec(self, name, path, target=None):
            if name.split(".")[0] in self.roots:
                try:
                    if importlib.machinery.PathFinder.find_spec(name.split(".")[0]):
                        return None
                except (ImportError, ValueError):
                    pass
                return importlib.machinery.ModuleSpec(name, self, is_package=True)
            return None

        def create_module(self, spec):
            m = Stub(spec.name)
            m.__version__ = "0.20.0"
            return m

        def exec_module(self, module):
            pass

    class Version:
        def __init__(self, s):
            n = [int(x) for x in re.findall(r"\d+", str(s).split("+")[0])[:3]]
            self.t = tuple(n + [0] * (3 - len(n)))
            self.major, self.minor, self.micro = self.t
            self.base_version = "%d.%d.%d" % self.t

        def __lt__(self, o): return self.t < o.t
        def __le__(self, o): return self.t <= o.t
        def __gt__(self, o): return self.t > o.t
        def __ge__(self, o): return self.t >= o.t
        def __eq__(self, o): return self.t == o.t
        def __ne__(self, o): return self.t != o.t

    sys.meta_path.insert(0, Finder())
    try:
        import packaging.version  # noqa: F401
    except ImportError:
        pk, pv = types.ModuleType("packaging"), types.ModuleType("packaging.version")
        pk.__path__, pv.Version, pv.parse, pk.version = [], Version, Version, pv
        sys.modules["packaging"], sys.modules["packaging.version"] = pk, pv
    dv = types.ModuleType("diffusers.dependency_versions_check")
    dv.dep_version_check = lambda *a, **k: None
    sys.modules["diffusers.dependency_versions_check"] = dv
    sys.path.insert(0, src)
    import logging
    logging.disable(logging.WARNING)
    from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL as DV
    from diffusers.models.unet_2d_condition import UNet2DConditionModel as DU
    return DU, DV


def _kwargs(cfg):
    return {k: v for k, v in cfg.items() if not k.startswith("_")}


def _diffusers_meta_keys(cls, cfg):
    orig = torch.nn.Module.register_parameter

    def reg(self, name, p):
        if p is not None:
            p = torch.nn.Parameter(torch.empty(p.shape, device="meta"), p.requires_grad)
        return orig(self, name, p)

    torch.nn.Module.register_parameter = reg
    try:
        m = cls(**_kwargs(cfg))
    finally:
        torch.nn.Module.register_parameter = orig
    return [(k, tuple(v.shape)) for k, v in m.state_dict().items()]


def _pair(ours, theirs, cfg, dtype, seed):
    m = U.init_random_(ours(cfg), seed).to(dtype).eval()
    d = theirs(**_kwargs(cfg)).to(dtype).eval()
    d.load_state_dict(m.state_dict(), strict=True)
    return m, d


def check_diffusers(src, full):
    DU, DV = load_diffusers(src)
    for kind in C.KINDS:
        for theirs, ours, cfgf in ((DU, U.UNet2DConditionModel, C.unet_config),
                                   (DV, V.AutoencoderKL, C.vae_config)):
            d = _diffusers_meta_keys(theirs, cfgf(kind))
            with U.build_device("meta"):
                m = ours(cfgf(kind))
            mk = [(k, tuple(v.shape)) for k, v in m.state_dict().items()]
            check(d == mk, "diffusers %s %s: same %d state_dict keys, shapes and order"
                  % (kind, theirs.__name__, len(d)))
    g = torch.Generator().manual_seed(0)
    sd2n = dict(C.unet_config("sd21"), block_out_channels=[40, 80, 160, 160], norm_num_groups=8,
                cross_attention_dim=40)
    unets = [(k, C.unet_config(k)) for k in ("tiny-sd1", "tiny-sd2")]
    unets += [(k + " variants", dict(C.unet_config(k), flip_sin_to_cos=False, freq_shift=1,
                                     center_input_sample=True, mid_block_scale_factor=1.4142,
                                     transformer_layers_per_block=2, norm_eps=1e-6,
                                     only_cross_attention=[True, False]))
              for k in ("tiny-sd1", "tiny-sd2")]
    unets += [("sd15 narrow", dict(C.unet_config("sd15"), block_out_channels=[32, 64, 96, 96],
                                   cross_attention_dim=48)), ("sd21 narrow", sd2n)]
    for name, cfg in unets:
        for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 2e-5)):
            # diffusers' upcast_attention path yields NaN in float64 (it mixes float32/float64)
            c = dict(cfg, upcast_attention=False) if dtype == torch.float64 else cfg
            m, d = _pair(U.UNet2DConditionModel, DU, c, dtype, 7)
            worst = 0.0
            for hw in ((16, 24), (13, 10)):
                x = torch.randn(2, c["in_channels"], *hw, generator=g).to(dtype)
                ctx = torch.randn(2, 9, c["cross_attention_dim"], generator=g).to(dtype)
                with torch.no_grad():
                    for t in (torch.tensor([10, 987]), 10, 987.5, torch.tensor(3.0)):
                        worst = max(worst, rel_err(m(x, t, ctx), d(x, t, ctx).sample))
            check(worst < tol, "diffusers UNet %s %s: max rel err %.1e (tol %.0e)"
                  % (name, str(dtype)[6:], worst, tol))
    vaes = [(k, C.vae_config(k)) for k in ("tiny-sd1", "tiny-sd2")]
    vaes += [("sd narrow", dict(C.vae_config("sd15"), block_out_channels=[16, 32, 64, 64],
                                norm_num_groups=8))]
    for name, cfg in vaes:
        # diffusers' upcast_softmax computes the VAE attention softmax in float32 (torch < 2.0
        # processor), so float64 agrees only to float32 precision; float32 agrees exactly.
        for dtype, tol in ((torch.float64, 1e-6), (torch.float32, 1e-6)):
            m, d = _pair(V.AutoencoderKL, DV, cfg, dtype, 8)
            x = torch.randn(2, cfg["in_channels"], 48, 40, generator=g).to(dtype)
            z = torch.randn(2, cfg["latent_channels"], 5, 3, generator=g).to(dtype)
            with torch.no_grad():
                mean, logvar = m.encode(x)
                dist = d.encode(x).latent_dist
                e = max(rel_err(mean, dist.mean), rel_err(logvar, dist.logvar),
                        rel_err(m.decode(z), d.decode(z).sample))
            check(e < tol, "diffusers VAE %s %s: encode/decode max rel err %.1e (tol %.0e)"
                  % (name, str(dtype)[6:], e, tol))
    if full:
        for name, ours, theirs, cfg in (("UNet", U.UNet2DConditionModel, DU, C.unet_config("sd15")),
                                        ("VAE", V.AutoencoderKL, DV, C.vae_config("sd15"))):
            m, d = _pair(ours, theirs, cfg, torch.float32, 11)
            with torch.no_grad():
                if name == "UNet":
                    x = torch.randn(1, 4, 8, 16, generator=g)
                    ctx = torch.randn(1, 77, 768, generator=g)
                    e = rel_err(m(x, 999, ctx), d(x, 999, ctx).sample)
                else:
                    x = torch.randn(1, 3, 32, 48, generator=g)
                    e = rel_err(m.encode(x)[0], d.encode(x).latent_dist.mean)
                    z = torch.randn(1, 4, 4, 6, generator=g)
                    e = max(e, rel_err(m.decode(z), d.decode(z).sample))
            check(e < 2e-5, "diffusers full sd15 %s float32: max rel err %.1e (tol 2e-5)" % (name, e))
            del m, d


def main():
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    check_configs()
    check_counts()
    check_keys()
    check_heads()
    check_timestep_embedding()
    check_attention_vs_torch()
    for kind in ("tiny-sd1", "tiny-sd2"):
        check_unet_forward(kind)
        check_vae_forward(kind)
    if "--diffusers-src" in sys.argv:
        check_diffusers(sys.argv[sys.argv.index("--diffusers-src") + 1], "--full" in sys.argv)
    else:
        print("note: diffusers comparison not run (pass --diffusers-src DIR)")
    print("%d check(s) failed" % len(FAILS) if FAILS else "all checks passed")
    return 1 if FAILS else 0


if __name__ == "__main__":
    sys.exit(main())
