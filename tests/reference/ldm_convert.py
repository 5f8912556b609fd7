# SPDX-License-Identifier: GPL-3.0-or-later
"""diffusers state dicts -> single-file "LDM" checkpoint layout (A1111 / ComfyUI).

Same semantics as diffusers' scripts/convert_diffusers_to_original_stable_diffusion.py, with
its hard-coded loops (4 blocks, 2 resnets per down block, 3 per up block) generalised to any
block count and layers_per_block L taken from the config:
  down_blocks.i.resnets.j      -> input_blocks.{(L+1)i+j+1}.0   (.attentions.j -> .1)
  down_blocks.i.downsamplers.0.conv -> input_blocks.{(L+1)(i+1)}.0.op
  up_blocks.i.resnets.j        -> output_blocks.{(L+1)i+j}.0    (.attentions.j -> .1)
  up_blocks.i.upsamplers.0     -> output_blocks.{(L+1)i+L}.{2 if attention else 1}
  mid_block.resnets.j -> middle_block.{2j}, mid_block.attentions.0 -> middle_block.1
VAE: encoder.down.i.block.j, decoder.up.{n-1-i}.block.j (reversed), mid.block_{k+1},
mid.attn_1.{norm,q,k,v,proj_out} with the linear weights reshaped to 1x1 convs [C,C,1,1],
nin_shortcut, norm_out. SD1 text: cond_stage_model.transformer.[text_model.]*; SD2 text:
cond_stage_model.model.* OpenCLIP names with q/k/v packed into attn.in_proj_weight [3C,C].
"""
import re

import numpy as np
import torch

UNET_TOP = {
    "time_embedding.linear_1.": "time_embed.0.", "time_embedding.linear_2.": "time_embed.2.",
    "conv_in.": "input_blocks.0.0.", "conv_norm_out.": "out.0.", "conv_out.": "out.2.",
}
UNET_RESNET = [("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("norm2", "out_layers.0"),
               ("conv2", "out_layers.3"), ("time_emb_proj", "emb_layers.1"),
               ("conv_shortcut", "skip_connection")]


def unet_prefix_map(cfg):
    """diffusers prefix -> LDM prefix (without model.diffusion_model.) for a UNet config."""
    n, L = len(cfg["block_out_channels"]), cfg["layers_per_block"]
    down_attn = [t.startswith("CrossAttn") for t in cfg["down_block_types"]]
    up_attn = [t.startswith("CrossAttn") for t in cfg["up_block_types"]]
    m = dict(UNET_TOP)
    for i in range(n):
        for j in range(L):
            m["down_blocks.%d.resnets.%d." % (i, j)] = "input_blocks.%d.0." % ((L + 1) * i + j + 1)
            if down_attn[i]:
                m["down_blocks.%d.attentions.%d." % (i, j)] = "input_blocks.%d.1." % ((L + 1) * i + j + 1)
        for j in range(L + 1):
            m["up_blocks.%d.resnets.%d." % (i, j)] = "output_blocks.%d.0." % ((L + 1) * i + j)
            if up_attn[i]:
                m["up_blocks.%d.attentions.%d." % (i, j)] = "output_blocks.%d.1." % ((L + 1) * i + j)
        if i < n - 1:
            m["down_blocks.%d.downsamplers.0.conv." % i] = "input_blocks.%d.0.op." % ((L + 1) * (i + 1))
            m["up_blocks.%d.upsamplers.0." % i] = "output_blocks.%d.%d." % (
                (L + 1) * i + L, 2 if up_attn[i] else 1)
    m["mid_block.attentions.0."] = "middle_block.1."
    for j in range(2):
        m["mid_block.resnets.%d." % j] = "middle_block.%d." % (2 * j)
    return m


def _apply_prefix(name, pmap):
    best = None
    for p in pmap:
        if name.startswith(p) and (best is None or len(p) > len(best)):
            best = p
    if best is None:
        raise KeyError("no LDM mapping for %s" % name)
    return pmap[best] + name[len(best):], best


def unet_to_ldm(sd, cfg):
    pmap = unet_prefix_map(cfg)
    out = {}
    for k, v in sd.items():
        new, prefix = _apply_prefix(k, pmap)
        if ".resnets." in prefix:
            head, tail = pmap[prefix], new[len(pmap[prefix]):]
            for hf, ldm in UNET_RESNET:
                tail = re.sub(r"^%s\." % hf, ldm + ".", tail)
            new = head + tail
        out[new] = v
    return out


VAE_ATTN = [("group_norm.", "norm."), ("to_q.", "q."), ("to_k.", "k."), ("to_v.", "v."),
            ("to_out.0.", "proj_out."), ("query.", "q."), ("key.", "k."), ("value.", "v."),
            ("proj_attn.", "proj_out.")]


def vae_prefix_map(cfg):
    n, L = len(cfg["block_out_channels"]), cfg["layers_per_block"]
    m = {"encoder.conv_norm_out.": "encoder.norm_out.", "decoder.conv_norm_out.": "decoder.norm_out."}
    for i in range(n):
        for j in range(L):
            m["encoder.down_blocks.%d.resnets.%d." % (i, j)] = "encoder.down.%d.block.%d." % (i, j)
        for j in range(L + 1):
            m["decoder.up_blocks.%d.resnets.%d." % (i, j)] = "decoder.up.%d.block.%d." % (n - 1 - i, j)
        if i < n - 1:
            m["encoder.down_blocks.%d.downsamplers.0." % i] = "encoder.down.%d.downsample." % i
            m["decoder.up_blocks.%d.upsamplers.0." % i] = "decoder.up.%d.upsample." % (n - 1 - i)
    for part in ("encoder", "decoder"):
        for k in range(2):
            m["%s.mid_block.resnets.%d." % (part, k)] = "%s.mid.block_%d." % (part, k + 1)
        m["%s.mid_block.attentions.0." % part] = "%s.mid.attn_1." % part
    return m


def vae_to_ldm(sd, cfg):
    pmap = vae_prefix_map(cfg)
    out = {}
    for k, v in sd.items():
        try:
            new, prefix = _apply_prefix(k, pmap)
        except KeyError:
            new, prefix = k, ""  # conv_in, conv_out, quant_conv, post_quant_conv keep their names
        new = new.replace(".conv_shortcut.", ".nin_shortcut.")
        if prefix.endswith("mid_block.attentions.0."):
            head, tail = pmap[prefix], new[len(pmap[prefix]):]
            for hf, ldm in VAE_ATTN:
                if tail.startswith(hf):
                    tail = ldm + tail[len(hf):]
                    break
            new = head + tail
            if tail.split(".")[0] in ("q", "k", "v", "proj_out") and tail.endswith("weight") and v.dim() == 2:
                v = v.reshape(*v.shape, 1, 1)  # linear -> 1x1 conv
        out[new] = v
    return out


def text_sd1_to_ldm(sd, text_model_level=True):
    """transformers names -> cond_stage_model.transformer.[text_model.]*"""
    out = {}
    for k, v in sd.items():
        if not text_model_level:
            k = k[len("text_model."):] if k.startswith("text_model.") else k
        out["cond_stage_model.transformer." + k] = v
    return out


def text_sd2_to_ldm(sd, extra_layers=None):
    """transformers names -> OpenCLIP names under cond_stage_model.model. extra_layers: a list
    of state dicts of CLIPEncoderLayer (layer_norm1, self_attn.*, ...) appended as further
    resblocks (SD2 single files carry 24 blocks, diffusers keeps 23)."""
    p = "cond_stage_model.model."
    out = {}
    layer_sds = {}
    for k, v in sd.items():
        mo = re.match(r"text_model\.encoder\.layers\.(\d+)\.(.*)", k)
        if mo:
            layer_sds.setdefault(int(mo.group(1)), {})[mo.group(2)] = v
        elif k == "text_model.embeddings.token_embedding.weight":
            out[p + "token_embedding.weight"] = v
        elif k == "text_model.embeddings.position_embedding.weight":
            out[p + "positional_embedding"] = v
        elif k.startswith("text_model.final_layer_norm."):
            out[p + "ln_final." + k.rsplit(".", 1)[1]] = v
        elif k == "text_model.embeddings.position_ids":
            continue  # OpenCLIP has no such buffer
        else:
            raise KeyError("unexpected text encoder tensor %s" % k)
    layers = [layer_sds[i] for i in sorted(layer_sds)] + list(extra_layers or [])
    for i, ls in enumerate(layers):
        r = p + "transformer.resblocks.%d." % i
        for w in ("weight", "bias"):
            out[r + "ln_1." + w] = ls["layer_norm1." + w]
            out[r + "attn.in_proj_" + w] = torch.cat([ls["self_attn.%s_proj.%s" % (c, w)] for c in "qkv"])
            out[r + "attn.out_proj." + w] = ls["self_attn.out_proj." + w]
            out[r + "ln_2." + w] = ls["layer_norm2." + w]
            out[r + "mlp.c_fc." + w] = ls["mlp.fc1." + w]
            out[r + "mlp.c_proj." + w] = ls["mlp.fc2." + w]
    return out


def sd2_text_extras(hidden, seed):
    """text_projection [C,C] and logit_scale (0-rank), which real SD2 single files carry."""
    g = torch.Generator().manual_seed(int(seed))
    return {"cond_stage_model.model.text_projection": torch.randn(hidden, hidden, generator=g) * hidden ** -0.5,
            "cond_stage_model.model.logit_scale": torch.tensor(float(np.log(1 / 0.07)))}


def ldm_schedule_buffers(n=1000, beta_start=0.00085, beta_end=0.012):
    """The DDPM buffers an LDM checkpoint carries next to the weights (scaled_linear betas)."""
    betas = np.linspace(beta_start ** 0.5, beta_end ** 0.5, n, dtype=np.float64) ** 2
    ac = np.cumprod(1.0 - betas)
    acp = np.append(1.0, ac[:-1])
    post_var = betas * (1.0 - acp) / (1.0 - ac)
    bufs = {
        "betas": betas, "alphas_cumprod": ac, "alphas_cumprod_prev": acp,
        "sqrt_alphas_cumprod": np.sqrt(ac), "sqrt_one_minus_alphas_cumprod": np.sqrt(1 - ac),
        "log_one_minus_alphas_cumprod": np.log(1 - ac), "sqrt_recip_alphas_cumprod": np.sqrt(1 / ac),
        "sqrt_recipm1_alphas_cumprod": np.sqrt(1 / ac - 1), "posterior_variance": post_var,
        "posterior_log_variance_clipped": np.log(np.maximum(post_var, 1e-20)),
        "posterior_mean_coef1": betas * np.sqrt(acp) / (1 - ac),
        "posterior_mean_coef2": (1 - acp) * np.sqrt(1 - betas) / (1 - ac),
    }
    return {k: torch.from_numpy(v.astype(np.float32)) for k, v in bufs.items()}


def ema_extras(unet_ldm, count=4):
    """model_ema.* entries as LDM training saves them (names with the dots removed)."""
    out = {"model_ema.decay": torch.tensor(0.9999), "model_ema.num_updates": torch.tensor(0, dtype=torch.int32)}
    for k in list(unet_ldm)[:count]:
        out["model_ema.diffusion_model" + k.replace(".", "")] = unet_ldm[k].clone()
    return out


def to_single_file(unet_sd, vae_sd, text_sd, unet_cfg, vae_cfg, family, sd2_extra_layers=None,
                   sd1_text_model_level=True, extras=True, seed=0, sd2_text_tower=True):
    """Full single-file state dict. family "sd1" or "sd2". sd2_text_tower: add text_projection
    and logit_scale as Stability's checkpoints carry (diffusers' conversion script writes
    neither, nor the 24th block)."""
    unet = unet_to_ldm(unet_sd, unet_cfg)
    out = {"model.diffusion_model." + k: v for k, v in unet.items()}
    out.update({"first_stage_model." + k: v for k, v in vae_to_ldm(vae_sd, vae_cfg).items()})
    if family == "sd1":
        out.update(text_sd1_to_ldm(text_sd, sd1_text_model_level))
    else:
        out.update(text_sd2_to_ldm(text_sd, sd2_extra_layers))
        hidden = text_sd["text_model.final_layer_norm.weight"].shape[0]
        if sd2_text_tower:
            out.update(sd2_text_extras(hidden, seed + 7))
    if extras:
        out.update(ldm_schedule_buffers())
        out.update(ema_extras(unet))
    return out
