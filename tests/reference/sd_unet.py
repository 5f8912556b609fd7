# SPDX-License-Identifier: GPL-3.0-or-later
"""Reference UNet2DConditionModel (SD 1.x / 2.x subset), written from diffusers' semantics.

state_dict() keys and shapes equal diffusers' (models/unets/unet_2d_condition.py,
unet_2d_blocks.py, resnet.py, attention.py, attention_processor.py, transformers/transformer_2d.py,
embeddings.py, downsampling.py, upsampling.py); forward() computes the same function.

    UNet2DConditionModel(config_dict)                    config as in unet/config.json
        .forward(sample [B,Cin,H,W], timestep (int | float | tensor [] or [B]),
                 encoder_hidden_states [B,S,cross_attention_dim]) -> [B,Cout,H,W]
    init_random_(module, seed)   deterministic, well-conditioned, nothing zero (also for the VAE)
    build_device(device)         context manager: modules built inside live on `device` ('meta'
                                 counts parameters without allocating)
    get_timestep_embedding(t [B], dim, flip_sin_to_cos, freq_shift) -> [B,dim] (float32, as diffusers)

Building blocks shared with sd_vae.py: ResnetBlock2D, Downsample2D, Upsample2D, Attention.
Attention maths: softmax(q k^T * dim_head**-0.5) v per head, computed in the input dtype (diffusers'
upcast_attention/upcast_softmax only matter in fp16; accepted and ignored here).
"""
import contextlib
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

_DEVICE = [None]


@contextlib.contextmanager
def build_device(device):
    """Layers built inside this context are created on `device` (e.g. 'meta')."""
    old = _DEVICE[0]
    _DEVICE[0] = device
    try:
        yield
    finally:
        _DEVICE[0] = old


def conv2d(cin, cout, k, stride=1, padding=0, bias=True):
    return nn.Conv2d(cin, cout, k, stride=stride, padding=padding, bias=bias, device=_DEVICE[0])


def linear(cin, cout, bias=True):
    return nn.Linear(cin, cout, bias=bias, device=_DEVICE[0])


def group_norm(groups, ch, eps):
    if ch % groups:
        raise ValueError("GroupNorm: %d channels not divisible by %d groups" % (ch, groups))
    return nn.GroupNorm(groups, ch, eps=eps, affine=True, device=_DEVICE[0])


def layer_norm(dim, eps=1e-5):
    return nn.LayerNorm(dim, eps=eps, elementwise_affine=True, device=_DEVICE[0])


def get_activation(name):
    if name in ("silu", "swish"):
        return F.silu
    if name == "gelu":
        return F.gelu
    if name == "mish":
        return F.mish
    if name == "relu":
        return F.relu
    raise ValueError("unsupported act_fn %r" % name)


def get_timestep_embedding(timesteps, dim, flip_sin_to_cos, freq_shift, max_period=10000):
    """diffusers get_timestep_embedding: frequencies exp(-ln(max_period) * i / (half - freq_shift)),
    [sin, cos] (or [cos, sin] when flipped), all in float32 like diffusers."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) *
                      torch.arange(0, half, dtype=torch.float32, device=timesteps.device) /
                      (half - freq_shift))
    arg = timesteps[:, None].float() * freqs[None, :]
    emb = torch.cat([torch.sin(arg), torch.cos(arg)], dim=-1)
    if flip_sin_to_cos:
        emb = torch.cat([emb[:, half:], emb[:, :half]], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1, 0, 0))
    return emb


class TimestepEmbedding(nn.Module):
    """linear_1 -> act -> linear_2 (diffusers TimestepEmbedding without cond/post act)."""

    def __init__(self, cin, dim, act_fn):
        super().__init__()
        self.linear_1 = linear(cin, dim)
        self.linear_2 = linear(dim, dim)
        self.act = get_activation(act_fn)

    def forward(self, x):
        return self.linear_2(self.act(self.linear_1(x)))


class ResnetBlock2D(nn.Module):
    """diffusers ResnetBlock2D (time_embedding_norm 'default'):
    h = conv1(act(norm1(x))) + time_emb_proj(act(temb)); h = conv2(act(norm2(h)));
    out = (shortcut(x) + h) / output_scale_factor, shortcut a 1x1 conv when cin != cout."""

    def __init__(self, cin, cout, temb_channels, groups, eps, act_fn="silu", output_scale_factor=1.0):
        super().__init__()
        self.norm1 = group_norm(groups, cin, eps)
        self.conv1 = conv2d(cin, cout, 3, padding=1)
        self.time_emb_proj = linear(temb_channels, cout) if temb_channels is not None else None
        self.norm2 = group_norm(groups, cout, eps)
        self.conv2 = conv2d(cout, cout, 3, padding=1)
        self.conv_shortcut = conv2d(cin, cout, 1) if cin != cout else None
        self.act = get_activation(act_fn)
        self.output_scale_factor = output_scale_factor

    def forward(self, x, temb=None):
        h = self.conv1(self.act(self.norm1(x)))
        if self.time_emb_proj is not None and temb is not None:
            h = h + self.time_emb_proj(self.act(temb))[:, :, None, None]
        h = self.conv2(self.act(self.norm2(h)))
        if self.conv_shortcut is not None:
            x = self.conv_shortcut(x)
        return (x + h) / self.output_scale_factor


class Downsample2D(nn.Module):
    """3x3 conv, stride 2. padding 0 means diffusers' asymmetric zero pad (right, bottom) first."""

    def __init__(self, ch, padding):
        super().__init__()
        self.padding = padding
        self.conv = conv2d(ch, ch, 3, stride=2, padding=padding)

    def forward(self, x):
        if self.padding == 0:
            x = F.pad(x, (0, 1, 0, 1), mode="constant", value=0.0)
        return self.conv(x)


class Upsample2D(nn.Module):
    """Nearest-neighbour x2 (or to output_size), then 3x3 conv."""

    def __init__(self, ch):
        super().__init__()
        self.conv = conv2d(ch, ch, 3, padding=1)

    def forward(self, x, output_size=None):
        if output_size is None:
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        else:
            x = F.interpolate(x, size=output_size, mode="nearest")
        return self.conv(x)


class Attention(nn.Module):
    """diffusers Attention (AttnProcessor maths). For 4-D input (the VAE mid block): optional
    group_norm over channels, attention over H*W tokens, optional residual, / rescale_output_factor."""

    def __init__(self, query_dim, heads, dim_head, cross_attention_dim=None, bias=False,
                 out_bias=True, norm_num_groups=None, eps=1e-5, residual_connection=False,
                 rescale_output_factor=1.0, upcast_attention=False):
        super().__init__()
        inner = heads * dim_head
        kv_dim = cross_attention_dim if cross_attention_dim is not None else query_dim
        self.heads = heads
        self.scale = dim_head ** -0.5
        self.residual_connection = residual_connection
        self.rescale_output_factor = rescale_output_factor
        self.upcast_attention = upcast_attention
        self.group_norm = group_norm(norm_num_groups, query_dim, eps) if norm_num_groups else None
        self.to_q = linear(query_dim, inner, bias=bias)
        self.to_k = linear(kv_dim, inner, bias=bias)
        self.to_v = linear(kv_dim, inner, bias=bias)
        self.to_out = nn.ModuleList([linear(inner, query_dim, bias=out_bias), nn.Dropout(0.0)])

    def attend(self, x, context):
        """x [B,N,Cq], context [B,M,Ckv] -> [B,N,Cq]"""
        b, n, _ = x.shape
        q, k, v = self.to_q(x), self.to_k(context), self.to_v(context)
        h = self.heads

        def split(t):  # [B,L,h*d] -> [B*h,L,d]  (diffusers head_to_batch_dim)
            return t.reshape(b, t.shape[1], h, -1).permute(0, 2, 1, 3).reshape(b * h, t.shape[1], -1)

        q, k, v = split(q), split(k), split(v)
        p = torch.softmax(torch.bmm(q, k.transpose(1, 2)) * self.scale, dim=-1)
        o = torch.bmm(p, v)
        o = o.reshape(b, h, n, -1).permute(0, 2, 1, 3).reshape(b, n, -1)
        return self.to_out[1](self.to_out[0](o))

    def forward(self, x, encoder_hidden_states=None):
        residual = x
        if x.ndim == 4:
            b, c, hh, ww = x.shape
            t = x if self.group_norm is None else self.group_norm(x)
            t = t.reshape(b, c, hh * ww).transpose(1, 2)
            ctx = t if encoder_hidden_states is None else encoder_hidden_states
            out = self.attend(t, ctx).transpose(1, 2).reshape(b, c, hh, ww)
        else:
            if self.group_norm is not None:
                x = self.group_norm(x.transpose(1, 2)).transpose(1, 2)
            ctx = x if encoder_hidden_states is None else encoder_hidden_states
            out = self.attend(x, ctx)
        if self.residual_connection:
            out = out + residual
        return out / self.rescale_output_factor


class GEGLU(nn.Module):
    def __init__(self, din, dout):
        super().__init__()
        self.proj = linear(din, dout * 2)

    def forward(self, x):
        h, gate = self.proj(x).chunk(2, dim=-1)
        return h * F.gelu(gate)


class FeedForward(nn.Module):
    """net.0 = GEGLU(dim, 4*dim), net.1 = Dropout, net.2 = Linear(4*dim, dim)."""

    def __init__(self, dim, mult=4):
        super().__init__()
        inner = int(dim * mult)
        self.net = nn.ModuleList([GEGLU(dim, inner), nn.Dropout(0.0), linear(inner, dim)])

    def forward(self, x):
        for m in self.net:
            x = m(x)
        return x


class BasicTransformerBlock(nn.Module):
    """x += attn1(norm1(x)); x += attn2(norm2(x), ctx); x += ff(norm3(x))."""

    def __init__(self, dim, heads, dim_head, cross_attention_dim, only_cross_attention=False,
                 upcast_attention=False):
        super().__init__()
        self.only_cross_attention = only_cross_attention
        self.norm1 = layer_norm(dim)
        self.attn1 = Attention(dim, heads, dim_head,
                               cross_attention_dim=cross_attention_dim if only_cross_attention else None,
                               upcast_attention=upcast_attention)
        self.norm2 = layer_norm(dim)
        self.attn2 = Attention(dim, heads, dim_head, cross_attention_dim=cross_attention_dim,
                               upcast_attention=upcast_attention)
        self.norm3 = layer_norm(dim)
        self.ff = FeedForward(dim)

    def forward(self, x, ctx):
        x = self.attn1(self.norm1(x), ctx if self.only_cross_attention else None) + x
        x = self.attn2(self.norm2(x), ctx) + x
        return self.ff(self.norm3(x)) + x


class Transformer2DModel(nn.Module):
    """Continuous-input Transformer2DModel: GroupNorm(eps 1e-6), proj_in (1x1 conv, or Linear when
    use_linear_projection), blocks on [B,H*W,inner], proj_out, + residual."""

    def __init__(self, heads, dim_head, channels, num_layers, cross_attention_dim, groups,
                 use_linear_projection, only_cross_attention, upcast_attention):
        super().__init__()
        inner = heads * dim_head
        self.use_linear_projection = use_linear_projection
        self.norm = group_norm(groups, channels, 1e-6)
        if use_linear_projection:
            self.proj_in = linear(channels, inner)
        else:
            self.proj_in = conv2d(channels, inner, 1)
        self.transformer_blocks = nn.ModuleList([
            BasicTransformerBlock(inner, heads, dim_head, cross_attention_dim,
                                  only_cross_attention, upcast_attention)
            for _ in range(num_layers)])
        self.proj_out = linear(inner, channels) if use_linear_projection else conv2d(inner, channels, 1)

    def forward(self, x, ctx):
        b, c, h, w = x.shape
        residual = x
        x = self.norm(x)
        if self.use_linear_projection:
            x = self.proj_in(x.permute(0, 2, 3, 1).reshape(b, h * w, c))
        else:
            x = self.proj_in(x)
            x = x.permute(0, 2, 3, 1).reshape(b, h * w, x.shape[1])
        for blk in self.transformer_blocks:
            x = blk(x, ctx)
        if self.use_linear_projection:
            x = self.proj_out(x).reshape(b, h, w, c).permute(0, 3, 1, 2)
        else:
            x = self.proj_out(x.reshape(b, h, w, -1).permute(0, 3, 1, 2))
        return x + residual


def _transformer(ch, heads, tl, a):
    """Transformer2DModel as diffusers' blocks build it: head dim = channels // heads."""
    return Transformer2DModel(heads, ch // heads, ch, tl, a["cross_attention_dim"], a["groups"],
                              a["use_linear_projection"], a["only_cross_attention"],
                              a["upcast_attention"])


class DownBlock(nn.Module):
    """DownBlock2D / CrossAttnDownBlock2D: resnets[i] (+ attentions[i]), then downsamplers.0."""

    def __init__(self, cin, cout, temb, layers, add_down, pad, r, a=None, heads=None, tl=1):
        super().__init__()
        if a is not None:
            self.attentions = nn.ModuleList([_transformer(cout, heads, tl, a) for _ in range(layers)])
        else:
            self.attentions = None
        self.resnets = nn.ModuleList([ResnetBlock2D(cin if i == 0 else cout, cout, temb, **r)
                                      for i in range(layers)])
        if add_down:
            self.downsamplers = nn.ModuleList([Downsample2D(cout, pad)])
        else:
            self.downsamplers = None

    def forward(self, x, temb, ctx):
        outs = []
        for i, res in enumerate(self.resnets):
            x = res(x, temb)
            if self.attentions is not None:
                x = self.attentions[i](x, ctx)
            outs.append(x)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)
            outs.append(x)
        return x, outs


class UpBlock(nn.Module):
    """UpBlock2D / CrossAttnUpBlock2D: each resnet eats cat([x, skip]) (skips popped from the end)."""

    def __init__(self, cin, cout, prev, temb, layers, add_up, r, a=None, heads=None, tl=1):
        super().__init__()
        res = []
        for i in range(layers):
            skip = cin if i == layers - 1 else cout
            rin = prev if i == 0 else cout
            res.append(ResnetBlock2D(rin + skip, cout, temb, **r))
        if a is not None:
            self.attentions = nn.ModuleList([_transformer(cout, heads, tl, a) for _ in range(layers)])
        else:
            self.attentions = None
        self.resnets = nn.ModuleList(res)
        self.upsamplers = nn.ModuleList([Upsample2D(cout)]) if add_up else None

    def forward(self, x, skips, temb, ctx, upsample_size=None):
        skips = list(skips)
        for i, res in enumerate(self.resnets):
            x = res(torch.cat([x, skips.pop()], dim=1), temb)
            if self.attentions is not None:
                x = self.attentions[i](x, ctx)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x, upsample_size)
        return x


class UNetMidBlock2DCrossAttn(nn.Module):
    """resnets.0 -> (attentions.i -> resnets.i+1)."""

    def __init__(self, ch, temb, r, a, heads, tl, num_layers=1):
        super().__init__()
        self.attentions = nn.ModuleList([_transformer(ch, heads, tl, a) for _ in range(num_layers)])
        self.resnets = nn.ModuleList([ResnetBlock2D(ch, ch, temb, **r) for _ in range(num_layers + 1)])

    def forward(self, x, temb, ctx):
        x = self.resnets[0](x, temb)
        for attn, res in zip(self.attentions, self.resnets[1:]):
            x = res(attn(x, ctx), temb)
        return x


_UNSUPPORTED = {  # key: value diffusers must have for the SD 1.x/2.x subset implemented here
    "addition_embed_type": None, "class_embed_type": None, "num_class_embeds": None,
    "encoder_hid_dim_type": None, "time_cond_proj_dim": None, "time_embedding_type": "positional",
    "time_embedding_dim": None, "time_embedding_act_fn": None, "timestep_post_act": None,
    "resnet_time_scale_shift": "default", "resnet_skip_time_act": False,
    "resnet_out_scale_factor": 1.0, "dual_cross_attention": False, "attention_type": "default",
    "cross_attention_norm": None,
}


def _per_block(v, n, name):
    if isinstance(v, (list, tuple)):
        if len(v) != n:
            raise ValueError("%s has %d entries, expected %d" % (name, len(v), n))
        return list(v)
    return [v] * n


class UNet2DConditionModel(nn.Module):
    def __init__(self, config):
        super().__init__()
        c = dict(config)
        self.config = c
        for k, ok in _UNSUPPORTED.items():
            if c.get(k, ok) != ok:
                raise NotImplementedError("UNet config %s=%r is not supported" % (k, c[k]))
        if c.get("mid_block_type", "UNetMidBlock2DCrossAttn") not in ("UNetMidBlock2DCrossAttn", None):
            raise NotImplementedError("mid_block_type %r" % c["mid_block_type"])
        if c.get("num_attention_heads") is not None:
            raise ValueError("num_attention_heads must be absent/null (diffusers refuses it too)")
        boc = list(c.get("block_out_channels", (320, 640, 1280, 1280)))
        n = len(boc)
        down_types = list(c.get("down_block_types"))
        up_types = list(c.get("up_block_types"))
        if len(down_types) != n or len(up_types) != n:
            raise ValueError("block type lists must have len(block_out_channels) entries")
        # diffusers legacy naming: attention_head_dim is the number of HEADS here.
        heads = _per_block(c.get("attention_head_dim", 8), n, "attention_head_dim")
        layers = _per_block(c.get("layers_per_block", 2), n, "layers_per_block")
        tlpb = _per_block(c.get("transformer_layers_per_block", 1), n, "transformer_layers_per_block")
        if any(isinstance(t, (list, tuple)) for t in tlpb) or c.get("reverse_transformer_layers_per_block"):
            raise NotImplementedError("nested transformer_layers_per_block")
        cross = _per_block(c.get("cross_attention_dim", 1280), n, "cross_attention_dim")
        only_cross = _per_block(c.get("only_cross_attention", False), n, "only_cross_attention")
        groups = c.get("norm_num_groups", 32)
        eps = c.get("norm_eps", 1e-5)
        act = c.get("act_fn", "silu")
        self.center_input_sample = bool(c.get("center_input_sample", False))
        self.flip_sin_to_cos = bool(c.get("flip_sin_to_cos", True))
        self.freq_shift = c.get("freq_shift", 0)
        self.act = get_activation(act)
        temb = boc[0] * 4
        kin = c.get("conv_in_kernel", 3)
        kout = c.get("conv_out_kernel", 3)

        def r(scale=1.0):
            return {"groups": groups, "eps": eps, "act_fn": act, "output_scale_factor": scale}

        def attn_args(i):
            return {"cross_attention_dim": cross[i], "groups": groups,
                    "use_linear_projection": bool(c.get("use_linear_projection", False)),
                    "only_cross_attention": bool(only_cross[i]),
                    "upcast_attention": bool(c.get("upcast_attention", False))}

        self.conv_in = conv2d(c.get("in_channels", 4), boc[0], kin, padding=(kin - 1) // 2)
        self.time_embedding = TimestepEmbedding(boc[0], temb, act)

        self.down_blocks = nn.ModuleList()
        self.up_blocks = nn.ModuleList()  # registered before mid_block, as in diffusers
        cout = boc[0]
        for i, t in enumerate(down_types):
            cin, cout = cout, boc[i]
            pad = c.get("downsample_padding", 1)
            if t == "CrossAttnDownBlock2D":
                blk = DownBlock(cin, cout, temb, layers[i], i < n - 1, pad, r(),
                                attn_args(i), heads[i], tlpb[i])
            elif t == "DownBlock2D":
                blk = DownBlock(cin, cout, temb, layers[i], i < n - 1, pad, r())
            else:
                raise NotImplementedError("down block %r" % t)
            self.down_blocks.append(blk)

        if c.get("mid_block_type", "UNetMidBlock2DCrossAttn") is None:
            self.mid_block = None
        else:
            self.mid_block = UNetMidBlock2DCrossAttn(boc[-1], temb, r(c.get("mid_block_scale_factor", 1)),
                                                     attn_args(n - 1), heads[-1], tlpb[-1])

        rboc, rheads, rlayers = boc[::-1], heads[::-1], layers[::-1]
        rtl = tlpb[::-1]
        rattn = [attn_args(n - 1 - i) for i in range(n)]
        self.num_upsamplers = 0
        cout = rboc[0]
        for i, t in enumerate(up_types):
            prev, cout = cout, rboc[i]
            cin = rboc[min(i + 1, n - 1)]
            add_up = i < n - 1
            self.num_upsamplers += int(add_up)
            if t == "CrossAttnUpBlock2D":
                blk = UpBlock(cin, cout, prev, temb, rlayers[i] + 1, add_up, r(), rattn[i], rheads[i], rtl[i])
            elif t == "UpBlock2D":
                blk = UpBlock(cin, cout, prev, temb, rlayers[i] + 1, add_up, r())
            else:
                raise NotImplementedError("up block %r" % t)
            self.up_blocks.append(blk)

        self.conv_norm_out = group_norm(groups, boc[0], eps)
        self.conv_out = conv2d(boc[0], c.get("out_channels", 4), kout, padding=(kout - 1) // 2)

    def forward(self, sample, timestep, encoder_hidden_states):
        b = sample.shape[0]
        factor = 2 ** self.num_upsamplers
        need_size = any(s % factor != 0 for s in sample.shape[-2:])
        if self.center_input_sample:
            sample = 2 * sample - 1.0
        t = timestep
        if not torch.is_tensor(t):
            t = torch.tensor([t], dtype=torch.float64 if isinstance(t, float) else torch.int64,
                             device=sample.device)
        elif t.ndim == 0:
            t = t[None].to(sample.device)
        t = t.expand(b)
        t_emb = get_timestep_embedding(t, self.conv_in.out_channels, self.flip_sin_to_cos,
                                       self.freq_shift).to(sample.dtype)
        emb = self.time_embedding(t_emb)

        x = self.conv_in(sample)
        skips = [x]
        for blk in self.down_blocks:
            x, outs = blk(x, emb, encoder_hidden_states)
            skips.extend(outs)
        if self.mid_block is not None:
            x = self.mid_block(x, emb, encoder_hidden_states)
        for i, blk in enumerate(self.up_blocks):
            k = len(blk.resnets)
            res, skips = skips[-k:], skips[:-k]
            size = skips[-1].shape[2:] if (need_size and i < len(self.up_blocks) - 1) else None
            x = blk(x, res, emb, encoder_hidden_states, size)
        return self.conv_out(self.act(self.conv_norm_out(x)))


# --- deterministic random init --------------------------------------------------------------

def init_random_(module, seed=0):
    """Fills every parameter from torch.Generator(seed), in sorted parameter-name order, drawing
    float32 values (so float32 and float64 copies of a model get identical weights):
      conv / linear weights: randn / sqrt(fan_in)
      norm weights (1-D '...weight'): 1 + 0.1 randn
      biases: 0.1 randn
    Nothing is zero, so every parameter affects the output."""
    g = torch.Generator().manual_seed(int(seed))
    with torch.no_grad():
        for name, p in sorted(module.named_parameters()):
            if p.device.type == "meta":
                continue
            v = torch.randn(tuple(p.shape), generator=g, dtype=torch.float32)
            if name.endswith("bias"):
                v = 0.1 * v
            elif p.ndim == 1:
                v = 1.0 + 0.1 * v
            else:
                fan_in = 1
                for s in p.shape[1:]:
                    fan_in *= s
                v = v / math.sqrt(fan_in)
            p.copy_(v.to(p.dtype))
    return module
