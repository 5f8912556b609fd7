#!/usr/bin/python3
# SPDX-License-Identifier: GPL-3.0-or-later
"""Writes a complete random-weight Stable Diffusion model, as a diffusers folder or as one
single-file (LDM layout) .safetensors checkpoint.

  make_model.py --kind tiny-sd1|tiny-sd2|sd15|sd21 --layout diffusers|single-file
                --dtype f32|f16|bf16 --seed N --out PATH [--bpe GZ] [--tokenizer-next-to-file]
                [--modelspec [--modelspec-prediction epsilon|v]] [--no-text-model-level]
                [--position-ids] [--inferable]

Single files store no config: the C loader infers it from the weights (CLIP head dim 64, SD1
UNet 8 heads, SD2 UNet head dim 64, 32 norm groups), so a single file is always written from
inferable_configs(kind); --inferable writes a diffusers folder of that same model. The
returned Model's .configs hold the configs actually used.

Weights are rounded to the storage dtype and back to float32 inside the torch modules, so the
modules that make_model() returns hold exactly the values the files hold (references are
computed from them). diffusers names: unet/diffusion_pytorch_model[.fp16].safetensors,
vae/ likewise, text_encoder/model[.fp16].safetensors (BF16 goes to the plain names).
"""
import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import clip_text  # noqa: E402
import ldm_convert  # noqa: E402
import sd_configs  # noqa: E402
import st_io  # noqa: E402

FAMILY = {"sd15": "sd1", "tiny-sd1": "sd1", "sd21": "sd2", "sd21-base": "sd2", "tiny-sd2": "sd2"}
ST_DTYPE = {"f32": "F32", "f16": "F16", "bf16": "BF16"}
VARIANT = {"f32": "", "f16": ".fp16", "bf16": ""}
PAD_TOKEN = {"sd1": "<|endoftext|>", "sd2": "!"}
MODELSPEC_ARCH = {"sd15": "stable-diffusion-v1", "tiny-sd1": "stable-diffusion-v1",
                  "sd21": "stable-diffusion-v2-768-v", "sd21-base": "stable-diffusion-v2-512",
                  "tiny-sd2": "stable-diffusion-v2-512"}


class Model:
    """What make_model() wrote: path, family, layout, dtype, and the torch modules (float32,
    holding exactly the stored values). tokenizer: tokenizer folder written (or None)."""

    def __init__(self, **kw):
        self.__dict__.update(kw)


def _seed(seed, net):
    return int(seed) * 1000 + {"text": 1, "unet": 2, "vae": 3, "extra": 4}[net]


def inferable_configs(kind):
    """Configs of `kind` adjusted so that a single file (which carries no config) determines them
    under the rules real checkpoints follow and the C loader applies: CLIP head dim 64 (heads =
    hidden/64), SD1 UNet 8 heads everywhere, SD2 UNet head dim 64, GroupNorm 32 groups, UNet
    cross-attention width = text width. The real kinds (sd15, sd21) already satisfy them; the
    tiny kinds of sd_configs do not (e.g. tiny-sd1 text hidden 32 with 4 heads), so their text
    width becomes 128 (2 heads of 64), tiny-sd2's UNet channels [64, 128] (1 and 2 heads) and every
    norm 32 groups. -> {"unet": ..., "vae": ..., "text": ...}"""
    u, v, t = sd_configs.unet_config(kind), sd_configs.vae_config(kind), sd_configs.text_encoder_config(kind)
    family = FAMILY[kind]
    if t["hidden_size"] % 64 or t["hidden_size"] < 128:  # at least 2 heads of 64
        t["hidden_size"] = 128
    t["num_attention_heads"] = t["hidden_size"] // 64
    u["cross_attention_dim"] = t["hidden_size"]
    u["norm_num_groups"] = v["norm_num_groups"] = 32
    if family == "sd1":
        u["attention_head_dim"] = 8
    else:
        u["block_out_channels"] = [max(64, 64 * ((c + 63) // 64)) for c in u["block_out_channels"]]
        u["attention_head_dim"] = [c // 64 for c in u["block_out_channels"]]
    v["block_out_channels"] = [max(32, 32 * ((c + 31) // 32)) for c in v["block_out_channels"]]
    return {"unet": u, "vae": v, "text": t}


def kind_configs(kind, inferable=False):
    if inferable:
        return inferable_configs(kind)
    return {"unet": sd_configs.unet_config(kind), "vae": sd_configs.vae_config(kind),
            "text": sd_configs.text_encoder_config(kind)}


def build_text_encoder(cfg, seed, dtype="f32", position_ids=False):
    te = clip_text.CLIPTextModel(cfg, position_ids=position_ids)
    clip_text.init_random_(te, _seed(seed, "text"))
    return clip_text.round_to_storage_(te.eval(), dtype)


def build_unet(cfg, seed, dtype="f32"):
    import sd_unet
    m = sd_unet.UNet2DConditionModel(cfg)
    sd_unet.init_random_(m, _seed(seed, "unet"))
    return clip_text.round_to_storage_(m.eval(), dtype)


def build_vae(cfg, seed, dtype="f32"):
    import sd_vae
    m = sd_vae.AutoencoderKL(cfg)
    sd_vae.init_random_(m, _seed(seed, "vae"))
    return clip_text.round_to_storage_(m.eval(), dtype)


def sd2_extra_layer(cfg, seed, dtype="f32"):
    """The 24th OpenCLIP block an SD2 single file carries (diffusers drops it: penultimate rule)."""
    layer = clip_text.CLIPEncoderLayer(cfg)
    clip_text.init_random_(layer, _seed(seed, "extra"))
    clip_text.round_to_storage_(layer, dtype)
    return {k: v.detach().clone() for k, v in layer.state_dict().items()}


def _sd(module):
    return {k: v.detach().contiguous() for k, v in module.state_dict().items()}


def write_tokenizer(dirpath, bpe, family):
    import tokenizer_ref
    tokenizer_ref.write_hf_tokenizer(dirpath, bpe, PAD_TOKEN[family])
    return dirpath


def single_file_metadata(kind, modelspec=False, prediction=None):
    """prediction ("epsilon"/"v"): modelspec.prediction_type; None = the kind's own."""
    meta = {"format": "pt"}
    if modelspec:
        if prediction is None:
            prediction = "v" if sd_configs.prediction_type(kind) == "v_prediction" else "epsilon"
        meta.update({"modelspec.sai_model_spec": "1.0.0",
                     "modelspec.architecture": MODELSPEC_ARCH[kind],
                     "modelspec.implementation": "https://github.com/Stability-AI/generative-models",
                     "modelspec.title": "random %s test model" % kind,
                     "modelspec.prediction_type": prediction})
    return meta


def make_model(kind, layout, dtype, seed, out, bpe=None, tokenizer_next_to_file=False,
               modelspec=False, text_model_level=True, position_ids=False, nets=("text", "unet", "vae"),
               modelspec_prediction=None, inferable=None, converted=False):
    """Writes the model and returns a Model (with .configs {"unet","vae","text"} as written).
    inferable: use inferable_configs(kind) (always for single files, where the C loader infers
    the configs from the weights; for diffusers folders only when asked, e.g. to compare both
    layouts of one model). nets: which torch modules to return (all are written)."""
    family = FAMILY[kind]
    if inferable is None:
        inferable = layout == "single-file"
    if layout == "single-file" and not inferable:
        raise ValueError("single files carry no config: they need inferable configs")
    cfg = kind_configs(kind, inferable)
    te = build_text_encoder(cfg["text"], seed, dtype, position_ids)
    unet = build_unet(cfg["unet"], seed, dtype)
    vae = build_vae(cfg["vae"], seed, dtype)
    st = ST_DTYPE[dtype]
    tok_dir = None
    if layout == "diffusers":
        os.makedirs(out, exist_ok=True)
        sd_configs.write_pipeline_configs(out, kind)
        for sub, key in (("unet", "unet"), ("vae", "vae"), ("text_encoder", "text")):
            with open(os.path.join(out, sub, "config.json"), "w") as f:
                f.write(sd_configs.to_json(cfg[key]))
        var = VARIANT[dtype]
        st_io.save_file(_sd(unet), os.path.join(out, "unet", "diffusion_pytorch_model%s.safetensors" % var),
                        {"format": "pt"}, st)
        st_io.save_file(_sd(vae), os.path.join(out, "vae", "diffusion_pytorch_model%s.safetensors" % var),
                        {"format": "pt"}, st)
        st_io.save_file(_sd(te), os.path.join(out, "text_encoder", "model%s.safetensors" % var),
                        {"format": "pt"}, st)
        if bpe:
            tok_dir = write_tokenizer(os.path.join(out, "tokenizer"), bpe, family)
    elif layout == "single-file":
        d = os.path.dirname(os.path.abspath(out))
        os.makedirs(d, exist_ok=True)
        extra = [sd2_extra_layer(cfg["text"], seed, dtype)] if family == "sd2" and not converted else None
        sd = ldm_convert.to_single_file(_sd(unet), _sd(vae), _sd(te), cfg["unet"], cfg["vae"],
                                        family, sd2_extra_layers=extra,
                                        sd1_text_model_level=text_model_level, seed=seed,
                                        extras=not converted, sd2_text_tower=not converted)
        st_io.save_file(sd, out, single_file_metadata(kind, modelspec, modelspec_prediction), st)
        if tokenizer_next_to_file:
            if not bpe:
                raise ValueError("--tokenizer-next-to-file needs --bpe")
            tok_dir = write_tokenizer(os.path.join(d, "tokenizer"), bpe, family)
    else:
        raise ValueError("unknown layout %r" % layout)
    keep = {"text": te, "unet": unet, "vae": vae}
    return Model(path=out, kind=kind, family=family, layout=layout, dtype=dtype, seed=seed, configs=cfg,
                 tokenizer=tok_dir, text_encoder=keep["text"] if "text" in nets else None,
                 unet=keep["unet"] if "unet" in nets else None,
                 vae=keep["vae"] if "vae" in nets else None)


def param_count(module):
    return sum(p.numel() for p in module.parameters())


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kind", required=True, choices=sorted(FAMILY))
    ap.add_argument("--layout", required=True, choices=["diffusers", "single-file"])
    ap.add_argument("--dtype", default="f32", choices=sorted(ST_DTYPE))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True)
    ap.add_argument("--bpe", help="bpe_simple_vocab_16e6.txt.gz, to write a tokenizer/ folder")
    ap.add_argument("--tokenizer-next-to-file", action="store_true",
                    help="single-file: write tokenizer/ next to the .safetensors file")
    ap.add_argument("--modelspec", action="store_true", help="single-file: add modelspec.* metadata")
    ap.add_argument("--modelspec-prediction", choices=["epsilon", "v"],
                    help="modelspec.prediction_type to write (default: the kind's own)")
    ap.add_argument("--no-text-model-level", action="store_true",
                    help="SD1 single-file: cond_stage_model.transformer.* without text_model.")
    ap.add_argument("--inferable", action="store_true",
                    help="diffusers: write the configs a single file of this kind would imply "
                         "(single files always use them)")
    ap.add_argument("--converted", action="store_true",
                    help="single-file: as diffusers' conversion script writes it (SD2: 23 text "
                         "blocks, no text_projection; no EMA or schedule buffers)")
    ap.add_argument("--position-ids", action="store_true",
                    help="store text_model.embeddings.position_ids as older files do")
    a = ap.parse_args(argv)
    with torch.no_grad():
        m = make_model(a.kind, a.layout, a.dtype, a.seed, a.out, a.bpe, a.tokenizer_next_to_file,
                       a.modelspec, not a.no_text_model_level, a.position_ids,
                       modelspec_prediction=a.modelspec_prediction,
                       inferable=True if a.inferable else None, converted=a.converted)
    print(json.dumps({"path": m.path, "family": m.family, "layout": m.layout, "dtype": m.dtype,
                      "params": {"text_encoder": param_count(m.text_encoder),
                                 "unet": param_count(m.unet), "vae": param_count(m.vae)},
                      "tokenizer": m.tokenizer}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
