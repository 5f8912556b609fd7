# SPDX-License-Identifier: GPL-3.0-or-later
"""Reference AutoencoderKL (diffusers autoencoders/autoencoder_kl.py + vae.py), same state_dict
keys (modern attention naming: mid_block.attentions.0.{group_norm,to_q,to_k,to_v,to_out.0}).

    AutoencoderKL(config_dict)          config as in vae/config.json
        .encode(x [B,Cin,H,W]) -> (mean, logvar) each [B,latent,H/f,W/f], f = 2**(len(boc)-1);
              unscaled (multiply by scaling_factor yourself); logvar clamped to [-30, 20]
              as DiagonalGaussianDistribution does
        .decode(z [B,latent,h,w]) -> [B,Cout,h*f,w*f]   (z unscaled: divide by scaling_factor first)
        .forward(x) = decode(mean)
    init_random_ (re-exported from sd_unet)
"""
import torch
import torch.nn as nn

from sd_unet import (Attention, Downsample2D, ResnetBlock2D, Upsample2D, conv2d,  # noqa: F401
                     get_activation, group_norm, init_random_, build_device)

VAE_EPS = 1e-6  # every VAE GroupNorm (resnets, mid attention, conv_norm_out)


class UNetMidBlock2D(nn.Module):
    """resnets.0 -> attentions.0 -> resnets.1; one attention head of dim = channels, with
    group_norm, q/k/v biases, residual connection (diffusers UNetMidBlock2D, temb None)."""

    def __init__(self, ch, groups, act_fn):
        super().__init__()
        self.attentions = nn.ModuleList([
            Attention(ch, heads=1, dim_head=ch, bias=True, norm_num_groups=groups, eps=VAE_EPS,
                      residual_connection=True, rescale_output_factor=1.0)])
        self.resnets = nn.ModuleList([ResnetBlock2D(ch, ch, None, groups, VAE_EPS, act_fn)
                                      for _ in range(2)])

    def forward(self, x):
        x = self.resnets[0](x)
        for attn, res in zip(self.attentions, self.resnets[1:]):
            x = res(attn(x))
        return x


class DownEncoderBlock2D(nn.Module):
    def __init__(self, cin, cout, layers, add_down, groups, act_fn):
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock2D(cin if i == 0 else cout, cout, None, groups,
                                                    VAE_EPS, act_fn) for i in range(layers)])
        # padding 0: diffusers pads (0,1,0,1) then convolves with stride 2
        self.downsamplers = nn.ModuleList([Downsample2D(cout, 0)]) if add_down else None

    def forward(self, x):
        for res in self.resnets:
            x = res(x)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)
        return x


class UpDecoderBlock2D(nn.Module):
    def __init__(self, cin, cout, layers, add_up, groups, act_fn):
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock2D(cin if i == 0 else cout, cout, None, groups,
                                                    VAE_EPS, act_fn) for i in range(layers)])
        self.upsamplers = nn.ModuleList([Upsample2D(cout)]) if add_up else None

    def forward(self, x):
        for res in self.resnets:
            x = res(x)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x)
        return x


class Encoder(nn.Module):
    def __init__(self, cin, latent, boc, layers, groups, act_fn):
        super().__init__()
        self.conv_in = conv2d(cin, boc[0], 3, padding=1)
        self.down_blocks = nn.ModuleList()
        cout = boc[0]
        for i in range(len(boc)):
            prev, cout = cout, boc[i]
            self.down_blocks.append(DownEncoderBlock2D(prev, cout, layers, i < len(boc) - 1,
                                                       groups, act_fn))
        self.mid_block = UNetMidBlock2D(boc[-1], groups, act_fn)
        self.conv_norm_out = group_norm(groups, boc[-1], VAE_EPS)
        self.conv_out = conv2d(boc[-1], 2 * latent, 3, padding=1)  # double_z
        self.act = get_activation(act_fn)

    def forward(self, x):
        x = self.conv_in(x)
        for blk in self.down_blocks:
            x = blk(x)
        x = self.mid_block(x)
        return self.conv_out(self.act(self.conv_norm_out(x)))


class Decoder(nn.Module):
    def __init__(self, latent, cout_img, boc, layers, groups, act_fn):
        super().__init__()
        self.conv_in = conv2d(latent, boc[-1], 3, padding=1)
        self.up_blocks = nn.ModuleList()  # registered before mid_block, as in diffusers
        self.mid_block = UNetMidBlock2D(boc[-1], groups, act_fn)
        rboc = boc[::-1]
        cout = rboc[0]
        for i in range(len(rboc)):
            prev, cout = cout, rboc[i]
            self.up_blocks.append(UpDecoderBlock2D(prev, cout, layers + 1, i < len(rboc) - 1,
                                                   groups, act_fn))
        self.conv_norm_out = group_norm(groups, boc[0], VAE_EPS)
        self.conv_out = conv2d(boc[0], cout_img, 3, padding=1)
        self.act = get_activation(act_fn)

    def forward(self, z):
        x = self.mid_block(self.conv_in(z))
        for blk in self.up_blocks:
            x = blk(x)
        return self.conv_out(self.act(self.conv_norm_out(x)))


class AutoencoderKL(nn.Module):
    def __init__(self, config):
        super().__init__()
        c = dict(config)
        self.config = c
        boc = list(c.get("block_out_channels", (64,)))
        n = len(boc)
        for key, want in (("down_block_types", "DownEncoderBlock2D"),
                          ("up_block_types", "UpDecoderBlock2D")):
            types = list(c.get(key, [want] * n))
            if len(types) != n or any(t != want for t in types):
                raise NotImplementedError("%s must be %d x %s" % (key, n, want))
        if c.get("use_quant_conv", True) is False or c.get("use_post_quant_conv", True) is False:
            raise NotImplementedError("use_quant_conv/use_post_quant_conv false")
        if c.get("mid_block_add_attention", True) is False:
            raise NotImplementedError("mid_block_add_attention false")
        latent = c.get("latent_channels", 4)
        layers = c.get("layers_per_block", 1)
        groups = c.get("norm_num_groups", 32)
        act = c.get("act_fn", "silu")
        self.scaling_factor = c.get("scaling_factor", 0.18215)
        self.scale_factor = 2 ** (n - 1)
        self.encoder = Encoder(c.get("in_channels", 3), latent, boc, layers, groups, act)
        self.decoder = Decoder(latent, c.get("out_channels", 3), boc, layers, groups, act)
        self.quant_conv = conv2d(2 * latent, 2 * latent, 1)
        self.post_quant_conv = conv2d(latent, latent, 1)

    def encode(self, x):
        moments = self.quant_conv(self.encoder(x))
        mean, logvar = torch.chunk(moments, 2, dim=1)
        return mean, torch.clamp(logvar, -30.0, 20.0)

    def decode(self, z):
        return self.decoder(self.post_quant_conv(z))

    def forward(self, x):
        return self.decode(self.encode(x)[0])
