#!/usr/bin/python3
# SPDX-License-Identifier: GPL-3.0-or-later
"""Writes an SD-1.5-SHAPED model without materialising its weights: the modules are built on
torch's meta device (shapes only), the safetensors headers are computed from them and each file
is extended with truncate, so the data are sparse zeros (F16 storage, ~2 GB apparent size,
almost no disk). Both layouts:

  make_sparse_sd15.py --layout diffusers|single-file --out PATH [--kind sd15|sd21] [--dtype f16|f32]

diffusers: PATH/ with configs and unet/diffusion_pytorch_model.fp16.safetensors etc.
single-file: PATH (.safetensors), LDM names, with EMA/schedule extras as real files carry.
Expected parameter counts (shared/docs/formats.md): see EXPECTED.
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

EXPECTED = {
    "sd15": {"text_encoder": 123060480, "unet": 859520964, "vae": 83653863},
    "sd21": {"text_encoder": 340387840, "unet": 865910724, "vae": 83653863},
}
ST = {"f16": "F16", "f32": "F32", "bf16": "BF16"}
VARIANT = {"f16": ".fp16", "f32": "", "bf16": ""}
_INT = {torch.int64: "I64", torch.int32: "I32"}


def meta_modules(kind, position_ids=True):
    import sd_unet
    import sd_vae
    with sd_unet.build_device("meta"):
        unet = sd_unet.UNet2DConditionModel(sd_configs.unet_config(kind))
        vae = sd_vae.AutoencoderKL(sd_configs.vae_config(kind))
    te = clip_text.CLIPTextModel(sd_configs.text_encoder_config(kind), position_ids=position_ids,
                                 device="meta")
    return te, unet, vae


def _entries(sd, st):
    return [(k, _INT.get(v.dtype, st), list(v.shape)) for k, v in sd.items()]


def param_counts(te, unet, vae):
    return {name: sum(p.numel() for p in m.parameters())
            for name, m in (("text_encoder", te), ("unet", unet), ("vae", vae))}


def make_sparse(kind, layout, out, dtype="f16"):
    te, unet, vae = meta_modules(kind)
    st = ST[dtype]
    if layout == "diffusers":
        sd_configs.write_pipeline_configs(out, kind)
        v = VARIANT[dtype]
        st_io.save_sparse(_entries(unet.state_dict(), st),
                          os.path.join(out, "unet", "diffusion_pytorch_model%s.safetensors" % v), {"format": "pt"})
        st_io.save_sparse(_entries(vae.state_dict(), st),
                          os.path.join(out, "vae", "diffusion_pytorch_model%s.safetensors" % v), {"format": "pt"})
        st_io.save_sparse(_entries(te.state_dict(), st),
                          os.path.join(out, "text_encoder", "model%s.safetensors" % v), {"format": "pt"})
    else:
        family = "sd1" if kind == "sd15" else "sd2"
        extra = None
        if family == "sd2":
            layer = clip_text.CLIPEncoderLayer(sd_configs.text_encoder_config(kind), device="meta")
            extra = [layer.state_dict()]
        sd = ldm_convert.to_single_file(unet.state_dict(), vae.state_dict(), te.state_dict(),
                                        sd_configs.unet_config(kind), sd_configs.vae_config(kind),
                                        family, sd2_extra_layers=extra)
        d = os.path.dirname(os.path.abspath(out))
        os.makedirs(d, exist_ok=True)
        st_io.save_sparse(_entries(sd, st), out, {"format": "pt"})
    return param_counts(te, unet, vae)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--layout", required=True, choices=["diffusers", "single-file"])
    ap.add_argument("--out", required=True)
    ap.add_argument("--kind", default="sd15", choices=sorted(EXPECTED))
    ap.add_argument("--dtype", default="f16", choices=sorted(ST))
    a = ap.parse_args(argv)
    counts = make_sparse(a.kind, a.layout, a.out, a.dtype)
    print(json.dumps({"path": a.out, "params": counts}))
    if counts != EXPECTED[a.kind]:
        print("make_sparse_sd15: parameter counts %s differ from the expected %s" % (counts, EXPECTED[a.kind]),
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
