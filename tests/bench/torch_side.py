#!/usr/bin/python3
# SPDX-License-Identifier: GPL-3.0-or-later
"""The PyTorch side of tests/bench/run: one workload in this process, same CLI and JSON line
as bench_driver.

  torch_side.py unet|vae-decode|vae-encode|text-encoder|train-step --model DIR [--batch B]
                [--size H[xW]] [--reps N] [--warmup N] [--threads T] [--rank R]
                [--compare RAW.f32] [--tol X]

The networks are the reference modules (tests/reference/sd_unet.py, sd_vae.py, clip_text.py:
the diffusers / transformers architecture) built from the model folder's config.json files and
loaded tensor by tensor from its safetensors files, widened to float32 (so both sides use the
same weights). Forwards run under torch.no_grad(). Inputs are bench_driver's bench_fill()
values. --compare reads bench_driver --dump output and adds rel_err (relative L2 of ours against
torch over all outputs); status becomes "mismatch" when it exceeds --tol.

train-step: diffusers-style LoRA (train_dreambooth_lora.py without text-encoder training, latents
and prompt embeddings precomputed): rank-R adapters (down: normal std 1/R, up: zeros, scale
alpha/R = 1) on to_q, to_k, to_v and to_out.0 of every UNet attention, everything else frozen;
noisy latents from the SD scaled-linear schedule at fixed timesteps, MSE between the UNet output
and the noise, backward, AdamW (lr 1e-4, weight decay 1e-2) on the adapters, zero_grad.
"""
import json
import os
import resource
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "reference"))
import clip_text  # noqa: E402
import sd_unet  # noqa: E402
import sd_vae  # noqa: E402
import st_io  # noqa: E402

_M64 = (1 << 64) - 1


def bench_fill(n, seed):
    """bench_driver.c bench_fill: 2 * (splitmix64(seed << 32 | i) >> 40) / 2^24 - 1."""
    z = (np.uint64(seed) << np.uint64(32)) | np.arange(n, dtype=np.uint64)
    return (_splitmix64(z) >> np.uint64(40)).astype(np.float32) * np.float32(2.0 / 16777216.0) - np.float32(1.0)


def _splitmix64(z):
    with np.errstate(over="ignore"):
        z = z + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def fill(shape, seed):
    n = int(np.prod(shape))
    return torch.from_numpy(bench_fill(n, seed).reshape(shape))


# ---- loading ------------------------------------------------------------------------------

def _weights_file(folder, stems):
    for stem in stems:
        for var in (".fp16", "", ".bf16"):
            p = os.path.join(folder, stem + var + ".safetensors")
            if os.path.exists(p):
                return p
    raise FileNotFoundError("%s: no %s[.fp16].safetensors" % (folder, stems[0]))


def load_weights_(module, path):
    """Copies every tensor of `path` into the module's parameters/buffers of the same name
    (widened to float32), one tensor at a time; every parameter must be in the file."""
    hdr, _, start = st_io.read_header(path)
    params = dict(module.named_parameters())
    params.update(dict(module.named_buffers()))
    seen = set()
    with open(path, "rb") as f, torch.no_grad():
        for name, e in hdr.items():
            if name not in params:
                if name.endswith("position_ids"):
                    continue
                raise KeyError("%s: tensor %s is not in the module" % (path, name))
            b, end = e["data_offsets"]
            f.seek(start + b)
            a = np.frombuffer(f.read(end - b), dtype=st_io._RAW[e["dtype"]]).reshape(e["shape"])
            if e["dtype"] == "BF16":
                a = st_io.bf16_bits_to_f32(a)
            p = params[name]
            if tuple(p.shape) != tuple(a.shape):
                raise ValueError("%s: %s has shape %s, module %s" % (path, name, a.shape, tuple(p.shape)))
            p.copy_(torch.from_numpy(a.astype(np.float32)))
            seen.add(name)
    missing = [n for n, _ in module.named_parameters() if n not in seen]
    if missing:
        raise KeyError("%s: %d parameters missing, e.g. %s" % (path, len(missing), missing[0]))
    return module.eval()


def _config(model, sub):
    with open(os.path.join(model, sub, "config.json")) as f:
        return json.load(f)


def load_unet(model):
    with sd_unet.build_device("meta"):
        m = sd_unet.UNet2DConditionModel(_config(model, "unet"))
    m = m.to_empty(device="cpu")
    return load_weights_(m, _weights_file(os.path.join(model, "unet"), ["diffusion_pytorch_model"]))


def load_vae(model):
    with sd_unet.build_device("meta"):
        m = sd_vae.AutoencoderKL(_config(model, "vae"))
    m = m.to_empty(device="cpu")
    return load_weights_(m, _weights_file(os.path.join(model, "vae"), ["diffusion_pytorch_model"]))


def load_text_encoder(model):
    m = clip_text.CLIPTextModel(_config(model, "text_encoder"))  # position_ids: a real buffer
    return load_weights_(m, _weights_file(os.path.join(model, "text_encoder"), ["model"]))


# ---- LoRA ---------------------------------------------------------------------------------

class LoRALinear(nn.Module):
    """base(x) + up(down(x)) * alpha / rank, base frozen (diffusers LoRALinearLayer init)."""

    def __init__(self, base, rank, alpha=None):
        super().__init__()
        self.base = base
        self.down = nn.Linear(base.in_features, rank, bias=False)
        self.up = nn.Linear(rank, base.out_features, bias=False)
        nn.init.normal_(self.down.weight, std=1.0 / rank)
        nn.init.zeros_(self.up.weight)
        self.scale = (alpha if alpha is not None else rank) / rank

    def forward(self, x):
        return self.base(x) + self.up(self.down(x)) * self.scale


def add_lora_(unet, rank):
    """Freezes the UNet and wraps to_q/to_k/to_v/to_out.0 of every Attention -> LoRA params."""
    unet.requires_grad_(False)
    params = []
    for mod in list(unet.modules()):
        if isinstance(mod, sd_unet.Attention):
            for name in ("to_q", "to_k", "to_v"):
                w = LoRALinear(getattr(mod, name), rank)
                setattr(mod, name, w)
                params += [w.down.weight, w.up.weight]
            w = LoRALinear(mod.to_out[0], rank)
            mod.to_out[0] = w
            params += [w.down.weight, w.up.weight]
    return params


def alphas_cumprod(n=1000, beta_start=0.00085, beta_end=0.012):
    betas = torch.linspace(beta_start ** 0.5, beta_end ** 0.5, n, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, 0).float()


# ---- workloads -----------------------------------------------------------------------------

def setup(mode, model, batch, h, w, rank):
    """-> a function running one call and returning its outputs (tuple of tensors)."""
    if mode == "unet":
        unet = load_unet(model)
        c = unet.config
        x = fill((batch, c.get("in_channels", 4), h, w), 1)
        t = torch.tensor([float(999 - 37 * i) for i in range(batch)])
        ctx = fill((batch, 77, c["cross_attention_dim"]), 2)

        def run():
            with torch.no_grad():
                return (unet(x, t, ctx),)
        return run
    if mode in ("vae-decode", "vae-encode"):
        vae = load_vae(model)
        c = vae.config
        if mode == "vae-decode":
            z = fill((batch, c.get("latent_channels", 4), h, w), 3)

            def run():
                with torch.no_grad():
                    return (vae.decode(z),)
            return run
        img = fill((batch, c.get("in_channels", 3), h, w), 4)

        def run():
            with torch.no_grad():
                return vae.encode(img)
        return run
    if mode == "text-encoder":
        te = load_text_encoder(model)
        n = batch * 77
        z = (np.uint64(5) << np.uint64(32)) | np.arange(n, dtype=np.uint64)
        ids = torch.from_numpy((_splitmix64(z) % np.uint64(49406)).astype(np.int64).reshape(batch, 77))

        def run():
            with torch.no_grad():
                return (te(ids),)
        return run
    if mode == "train-step":
        unet = load_unet(model)
        c = unet.config
        params = add_lora_(unet, rank)
        unet.train()
        opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=1e-2)
        latents = fill((batch, c.get("in_channels", 4), h, w), 1)
        noise = fill((batch, c.get("in_channels", 4), h, w), 8)
        ctx = fill((batch, 77, c["cross_attention_dim"]), 2)
        t = torch.tensor([999 - 37 * i for i in range(batch)], dtype=torch.long)
        acp = alphas_cumprod()[t].view(batch, 1, 1, 1)
        noisy = acp.sqrt() * latents + (1 - acp).sqrt() * noise

        def run():
            pred = unet(noisy, t, ctx)
            loss = F.mse_loss(pred.float(), noise.float(), reduction="mean")
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            return (loss.detach().reshape(1),)
        return run
    raise ValueError("unknown mode %s" % mode)


def rel_err(outs, raw_path):
    got = np.fromfile(raw_path, dtype=np.float32).astype(np.float64)
    ref = np.concatenate([o.detach().numpy().reshape(-1).astype(np.float64) for o in outs])
    if got.size != ref.size:
        return float("inf")
    return float(np.linalg.norm(got - ref) / max(np.linalg.norm(ref), 1e-30))


def main(argv):
    import argparse
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["unet", "vae-decode", "vae-encode", "text-encoder", "train-step"])
    ap.add_argument("--model", required=True)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--size", default="64")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rank", type=int, default=4)
    ap.add_argument("--compare")
    ap.add_argument("--tol", type=float, default=1e-3)
    a = ap.parse_args(argv)
    h, _, w = a.size.partition("x")
    h, w = int(h), int(w or h)
    torch.set_num_threads(a.threads)
    res = {"mode": a.mode, "status": "ok", "batch": a.batch, "h": h, "w": w, "threads": a.threads,
           "torch": torch.__version__}
    try:
        t0 = time.perf_counter()
        run = setup(a.mode, a.model, a.batch, h, w, a.rank)
        res["open_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        outs = None
        for _ in range(a.warmup):
            outs = run()
        res["warmup_s"] = time.perf_counter() - t0
        times = []
        for _ in range(a.reps):
            t0 = time.perf_counter()
            outs = run()
            times.append(time.perf_counter() - t0)
        res["times"] = times
        res["median_s"] = float(np.median(times)) if times else None
        if a.compare and outs is not None:
            e = rel_err(outs, a.compare)
            res["rel_err"] = e
            if not e <= a.tol:
                res["status"] = "mismatch"
    except Exception as ex:  # reported in the JSON line, exit status 1
        res["status"] = "error"
        res["error"] = "%s: %s" % (type(ex).__name__, ex)
    res["maxrss_kib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps(res), flush=True)
    return 0 if res["status"] == "ok" else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
