#!/usr/bin/python3
# SPDX-License-Identifier: GPL-3.0-or-later
"""`dreambooth generate` against a PyTorch txt2img loop on a tiny-sd1 model.

  test_generate.py --cli PATH_TO_dreambooth --bpe bpe_simple_vocab_16e6.txt.gz [--keep DIR]

The reference is StableDiffusionPipeline's loop written with this repository's PyTorch modules
(clip_text.py, sd_unet.py, sd_vae.py through make_model.py) and sched_ref.py's port of the
diffusers schedulers, with the model's scheduler_config.json (timestep_spacing "leading").
  1. --noise given, DDIM and Euler, 10 steps, CFG 7.5, prompt + negative: --latent-out within
     relative L2 1e-4 of the reference (per case, whole latent).
  2. --seed: Euler a with --count 2 (seeds S and S+1, ancestral noise from the same generator)
     and the default sampler (DPM++ 2M Karras) at CFG 1 (prompt-only batch): 1e-4.
  3. --prediction v (DDIM and DPM++ 2M Karras) against the reference with v_prediction: 1e-4.
  4. the same command twice gives byte-identical PNGs; the PNG parses (chunk CRCs), is 8-bit
     RGB with an sRGB chunk, its pixels equal round(clamp(decode/2+0.5)*255) of the reference
     decoder on the C latent (at most 1 level off, at most 1% of values off), and its
     "parameters" tEXt chunk holds the A1111 fields (Model hash = sha256 of the UNet file).
  5. LoRA: a kohya file (linear, 1x1 and 3x3 conv, cross-attention, GEGLU, text encoder
     modules; alpha != rank) with weight 0.7 gives the latent of a model whose weights were
     merged by the test (relative L2 1e-5), a PEFT file likewise, both at once, and a kohya
     file on an F16 model; the LoRA changes the latent (> 1e-3). A key naming no module and a
     shape mismatch are refused with one line naming the file and the key.
  6. db_generate through ctypes: images_out, progress stages and fractions, cancellation.
  7. bad options are refused with exit 2 (1 for model-dependent sizes) and one line, no file
     is written; SIGINT during sampling exits 130 and leaves no file.
Exit status 1 on any failure (also when torch is missing).
"""
import argparse
import hashlib
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import zlib

try:
    import numpy as np
    import torch
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import make_model
    import sched_ref
    import st_io
    import tokenizer_ref
except ImportError as e:
    print("test_generate: FAIL: cannot import the reference (%s); /usr/bin/python3 with torch is required" % e)
    sys.exit(1)

TOL = 1e-4        # latent vs PyTorch, relative L2
TOL_LORA = 1e-5   # latent with --lora vs latent of the pre-merged model (both C)
FAILS = []
PROMPT, NEGATIVE = "a photo of sks dog, highly detailed", "blurry"


def check(ok, what):
    print(("ok   " if ok else "FAIL ") + what)
    if not ok:
        FAILS.append(what)
    return ok


def rel_l2(a, b):
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def run(cli, model, *args, timeout=300):
    return subprocess.run([cli, "generate", model, "--threads", "1"] + list(args), capture_output=True, text=True,
                          timeout=timeout)


def c_latent(cli, model, work, *args):
    """Runs generate with --latent-out; returns (latent, png_dir) or (None, error)."""
    lat = os.path.join(work, "lat.safetensors")
    out = tempfile.mkdtemp(dir=work)
    if os.path.exists(lat):
        os.remove(lat)
    p = run(cli, model, "--out", out, "--latent-out", lat, *args)
    if p.returncode != 0:
        return None, "exit %d: %s" % (p.returncode, p.stderr.strip())
    return st_io.load_file(lat)["latent"], out


# ---- the PyTorch pipeline --------------------------------------------------------------

class Ref:
    def __init__(self, m, bpe):
        self.m = m
        self.tok = tokenizer_ref.Tokenizer.from_bpe(bpe)
        self.sf = m.configs["vae"].get("scaling_factor", 0.18215)

    def ids(self, text):
        return self.tok.encode_padded(text)[0]

    def latents(self, sampler, steps, cfg, noise, seed, prediction="epsilon", shape=None):
        """StableDiffusionPipeline's loop; noise [1,C,h,w] or None (torch.randn(seed))."""
        kind = sched_ref.SAMPLERS[sampler][0]
        s = sched_ref.schedule_for(sampler, steps, prediction, spacing="leading")
        gen = torch.Generator().manual_seed(seed)
        x = torch.randn(shape, generator=gen, dtype=torch.float32) if noise is None else \
            torch.from_numpy(np.array(noise, np.float32))
        with torch.no_grad():
            ctx = self.m.text_encoder(torch.tensor([self.ids(NEGATIVE), self.ids(PROMPT)]))
            if cfg <= 1.0:
                ctx = ctx[1:]
            b = ctx.shape[0]
            x = x * s.init_noise_sigma
            history = []
            for i in range(steps):
                t = s.timesteps[i]
                x_in = x / ((s.sigmas[i] ** 2 + 1) ** 0.5) if kind in ("euler", "euler_a") else x
                out = self.m.unet(torch.cat([x_in] * b), torch.full((b,), float(t)), ctx)
                if b == 2:
                    u, c = out.chunk(2)
                    out = u + cfg * (c - u)
                if kind == "ddim":
                    x = sched_ref.step_ddim(s, i, out, x, 0.0, gen)
                elif kind == "ddpm":
                    x = sched_ref.step_ddpm(s, i, out, x, gen)
                elif kind in ("euler", "euler_a"):
                    x = sched_ref.step_euler(s, i, out, x, kind == "euler_a", gen)
                else:
                    x = sched_ref.step_dpmpp(s, i, out, x, history)
        return x.numpy()

    def rgb8(self, latent):
        with torch.no_grad():
            img = self.m.vae.decode(torch.from_numpy(latent) / self.sf)
        img = (img / 2 + 0.5).clamp(0, 1)[0].permute(1, 2, 0).numpy()
        return (img * 255).round().astype(np.uint8)


# ---- PNG parsing (chunks, CRCs, unfiltering 8-bit RGB) ----------------------------------

def png_chunks(data):
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "no PNG signature"
    pos, out = 8, []
    while pos < len(data):
        n, typ = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + n]
        crc, = struct.unpack(">I", data[pos + 8 + n:pos + 12 + n])
        assert zlib.crc32(typ + body) & 0xffffffff == crc, "bad CRC in %s" % typ
        out.append((typ.decode("latin-1"), body))
        pos += 12 + n
    assert out[0][0] == "IHDR" and out[-1][0] == "IEND", "IHDR/IEND misplaced"
    return out


def png_pixels(chunks):
    w, h, depth, ctype = struct.unpack(">IIBB", chunks[0][1][:10])
    assert depth == 8 and ctype == 2, "not 8-bit RGB (depth %d, colour type %d)" % (depth, ctype)
    raw = zlib.decompress(b"".join(b for t, b in chunks if t == "IDAT"))
    stride, bpp = w * 3, 3
    img = np.zeros((h, stride), np.int32)
    prev = np.zeros(stride, np.int32)
    for y in range(h):
        f = raw[y * (stride + 1)]
        line = np.frombuffer(raw, np.uint8, stride, y * (stride + 1) + 1).astype(np.int32)
        cur = np.zeros(stride, np.int32)
        for x in range(stride):
            a = cur[x - bpp] if x >= bpp else 0
            b = prev[x]
            c = prev[x - bpp] if x >= bpp else 0
            if f == 0:
                p = 0
            elif f == 1:
                p = a
            elif f == 2:
                p = b
            elif f == 3:
                p = (a + b) // 2
            else:
                pa, pb, pc = abs(b - c), abs(a - c), abs(a + b - 2 * c)
                p = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
            cur[x] = (line[x] + p) & 255
        img[y], prev = cur, cur
    return img.reshape(h, w, 3).astype(np.uint8)


# ---- LoRA files -------------------------------------------------------------------------

UNET_MODULES = ["down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q",
                "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k",
                "down_blocks.0.resnets.0.conv1",
                "down_blocks.0.attentions.0.proj_in",
                "up_blocks.1.attentions.2.transformer_blocks.0.ff.net.0.proj",
                "mid_block.attentions.0.transformer_blocks.0.attn1.to_out.0"]
TEXT_MODULES = ["text_model.encoder.layers.0.self_attn.q_proj",
                "text_model.encoder.layers.1.mlp.fc1"]


def lora_factors(m, seed, rank=4, alpha=2.0):
    """{(net, module): (down, up, alpha)} with down [r, in(, k, k)], up [out, r(, 1, 1)]."""
    g = np.random.default_rng(seed)
    sds = {"unet": m.unet.state_dict(), "text": m.text_encoder.state_dict()}
    out = {}
    for net, mods in (("unet", UNET_MODULES), ("text", TEXT_MODULES)):
        for mod in mods:
            w = sds[net][mod + ".weight"].numpy()
            dshape = (rank,) + w.shape[1:]
            ushape = (w.shape[0], rank) + ((1, 1) if w.ndim == 4 else ())
            down = (g.standard_normal(dshape) * 0.3).astype(np.float32)
            up = (g.standard_normal(ushape) * 0.3).astype(np.float32)
            out[(net, mod)] = (down, up, alpha)
    return out


def write_kohya(path, factors):
    t = {}
    for (net, mod), (down, up, alpha) in factors.items():
        key = ("lora_unet_" if net == "unet" else "lora_te_") + mod.replace(".", "_")
        t[key + ".lora_down.weight"] = down
        t[key + ".lora_up.weight"] = up
        t[key + ".alpha"] = np.array(alpha, np.float32)
    st_io.save_file(t, path, {"ss_network_dim": "4", "ss_network_alpha": "2.0"}, dtype="F16")


def write_peft(path, factors):
    """PEFT has no alpha here: lora_B carries alpha / r."""
    t = {}
    for (net, mod), (down, up, alpha) in factors.items():
        key = ("unet." if net == "unet" else "text_encoder.") + mod
        r = down.shape[0]
        t[key + ".lora_A.weight"] = down.reshape(r, -1) if down.ndim == 4 and down.shape[2] == 1 else down
        t[key + ".lora_B.weight"] = (up.reshape(up.shape[0], r) * np.float32(alpha / r)).astype(np.float32)
    st_io.save_file(t, path)


def f16_round(a):
    return np.asarray(a, np.float32).astype(np.float16).astype(np.float32)


def merged_model(src, dst, m, loras):
    """Copy of the model with W + w * alpha/r * up @ down for each (factors, w, f16) in loras,
    stored F32 (the values the C merge should produce, up to rounding)."""
    shutil.copytree(src, dst)
    sds = {"unet": {k: v.numpy().copy() for k, v in m.unet.state_dict().items()},
           "text": {k: v.numpy().copy() for k, v in m.text_encoder.state_dict().items()}}
    for factors, weight, f16 in loras:
        for (net, mod), (down, up, alpha) in factors.items():
            if f16:  # the kohya file stores F16
                down, up = f16_round(down), f16_round(up)
            w = sds[net][mod + ".weight"]
            r = down.shape[0]
            d = up.reshape(up.shape[0], r).astype(np.float64) @ down.reshape(r, -1).astype(np.float64)
            sds[net][mod + ".weight"] = (w.astype(np.float64) + weight * (alpha / r) * d.reshape(w.shape)).astype(np.float32)
    for sub in ("unet", "text_encoder", "vae"):
        for f in os.listdir(os.path.join(dst, sub)):
            if f.endswith(".safetensors"):
                os.remove(os.path.join(dst, sub, f))
    st_io.save_file(sds["unet"], os.path.join(dst, "unet", "diffusion_pytorch_model.safetensors"), {"format": "pt"})
    st_io.save_file(sds["text"], os.path.join(dst, "text_encoder", "model.safetensors"), {"format": "pt"})
    st_io.save_file({k: v.numpy() for k, v in m.vae.state_dict().items()},
                    os.path.join(dst, "vae", "diffusion_pytorch_model.safetensors"), {"format": "pt"})
    return dst


# ---- the cases --------------------------------------------------------------------------

def latent_cases(cli, model, ref, work, noise):
    nf = os.path.join(work, "noise.safetensors")
    st_io.save_file({"noise": noise}, nf)
    common = ["--prompt", PROMPT, "--negative", NEGATIVE, "--seed", "5"]
    cases = [("ddim 10 cfg 7.5 --noise", ["--sampler", "ddim", "--steps", "10", "--noise", nf], "ddim", 10, 7.5, "epsilon", noise),
             ("euler 10 cfg 7.5 --noise", ["--sampler", "euler", "--steps", "10", "--noise", nf], "euler", 10, 7.5, "epsilon", noise),
             ("v: ddim 10 --noise", ["--sampler", "ddim", "--steps", "10", "--noise", nf, "--prediction", "v"], "ddim", 10, 7.5, "v_prediction", noise),
             ("v: dpm++2m-karras 8 --noise", ["--sampler", "dpm++2m-karras", "--steps", "8", "--noise", nf, "--prediction", "v"], "dpm++2m-karras", 8, 7.5, "v_prediction", noise),
             ("default sampler cfg 1 --seed 5", ["--steps", "8", "--cfg", "1"], "dpm++2m-karras", 8, 1.0, "epsilon", None)]
    for label, args, sampler, steps, cfg, pred, nz in cases:
        got, err = c_latent(cli, model, work, *(common + args))
        if not check(got is not None, "%s: runs (%s)" % (label, err)):
            continue
        want = ref.latents(sampler, steps, cfg, nz, 5, pred, shape=noise.shape)
        e = rel_l2(got, want)
        check(np.isfinite(got).all() and e <= TOL, "%s: latent rel L2 %.3g (tol %g)" % (label, e, TOL))
    # --count 2 with Euler a: image i uses seed 1234 + i and its own generator for ancestral noise
    got, err = c_latent(cli, model, work, *["--prompt", PROMPT, "--negative", NEGATIVE, "--seed", "1234",
                                            "--sampler", "euler-a", "--steps", "6", "--count", "2"])
    if check(got is not None and got.shape[0] == 2, "euler-a --count 2: runs (%s)" % err):
        for i in range(2):
            want = ref.latents("euler-a", 6, 7.5, None, 1234 + i, shape=noise.shape)
            e = rel_l2(got[i:i + 1], want)
            check(e <= TOL, "euler-a --count 2 image %d (seed %d): latent rel L2 %.3g (tol %g)" % (i, 1234 + i, e, TOL))


def png_cases(cli, model, ref, work):
    args = ["--prompt", PROMPT, "--negative", NEGATIVE, "--seed", "42", "--steps", "10", "--sampler", "ddim"]
    a, b = os.path.join(work, "a.png"), os.path.join(work, "b.png")
    lat = os.path.join(work, "png-lat.safetensors")
    p1 = run(cli, model, "--out", a, "--latent-out", lat, *args)
    p2 = run(cli, model, "--out", b, *args)
    if not check(p1.returncode == 0 and p2.returncode == 0, "png runs (%s %s)" % (p1.stderr.strip(), p2.stderr.strip())):
        return
    da, db = open(a, "rb").read(), open(b, "rb").read()
    check(da == db, "same command twice: byte-identical PNGs (%d bytes)" % len(da))
    check(sorted(os.listdir(work)) == sorted(set(os.listdir(work))) and
          not [f for f in os.listdir(work) if f.startswith(".a.png") or f.startswith(".b.png")],
          "no temporary files left")
    try:
        chunks = png_chunks(da)
    except AssertionError as e:
        check(False, "PNG parses: %s" % e)
        return
    types = [t for t, _ in chunks]
    check("sRGB" in types, "PNG has an sRGB chunk (%s)" % types)
    texts = {b.split(b"\0", 1)[0].decode(): b.split(b"\0", 1)[1].decode("latin-1") for t, b in chunks if t == "tEXt"}
    params = texts.get("parameters", "")
    unet_file = os.path.join(model, "unet", "diffusion_pytorch_model.safetensors")
    h10 = hashlib.sha256(open(unet_file, "rb").read()).hexdigest()[:10]
    lines = params.split("\n")
    check(len(lines) == 3 and lines[0] == PROMPT and lines[1] == "Negative prompt: " + NEGATIVE,
          "parameters: prompt and negative lines (%r)" % params)
    fields = dict(kv.split(": ", 1) for kv in lines[-1].split(", ")) if lines else {}
    want = {"Steps": "10", "Sampler": "DDIM", "CFG scale": "7.5", "Seed": "42", "Size": "32x32",
            "Model hash": h10, "Model": "model"}
    check(all(fields.get(k) == v for k, v in want.items()), "parameters fields %s" % fields)
    px = png_pixels(chunks)
    want_px = ref.rgb8(st_io.load_file(lat)["latent"])
    diff = np.abs(px.astype(np.int32) - want_px.astype(np.int32))
    check(px.shape == want_px.shape and diff.max() <= 1 and (diff > 0).mean() <= 0.01,
          "pixels vs reference decode: max diff %d, %.2f%% differ" % (diff.max(), 100 * (diff > 0).mean()))
    # a folder: NNNNN-SEED.png, numbering continues
    d = os.path.join(work, "dir")
    p = run(cli, model, "--out", d, "--count", "2", *args)
    p = run(cli, model, "--out", d, *args) if p.returncode == 0 else p
    check(p.returncode == 0 and sorted(os.listdir(d)) == ["00000-42.png", "00001-43.png", "00002-42.png"],
          "--out DIR names: %s" % (sorted(os.listdir(d)) if os.path.isdir(d) else p.stderr.strip()))


def lora_cases(cli, model, m, work, noise):
    nf = os.path.join(work, "noise.safetensors")
    args = ["--prompt", PROMPT, "--negative", NEGATIVE, "--seed", "5", "--sampler", "euler",
            "--steps", "6", "--noise", nf]
    fk, fp = lora_factors(m, 11), lora_factors(m, 12)
    kohya, peft = os.path.join(work, "kohya.safetensors"), os.path.join(work, "peft.safetensors")
    write_kohya(kohya, fk)
    write_peft(peft, fp)
    base, _ = c_latent(cli, model, work, *args)
    for label, loras, cli_args in (
            ("kohya w=0.7", [(fk, 0.7, True)], ["--lora", kohya + ":0.7"]),
            ("peft w=1", [(fp, 1.0, False)], ["--lora", peft]),
            ("kohya 0.7 + peft -0.5", [(fk, 0.7, True), (fp, -0.5, False)], ["--lora", kohya + ":0.7", "--lora", peft + ":-0.5"])):
        mm = merged_model(model, os.path.join(work, "merged-" + str(len(os.listdir(work)))), m, loras)
        want, e1 = c_latent(cli, mm, work, *args)
        got, e2 = c_latent(cli, model, work, *(args + cli_args))
        if not check(want is not None and got is not None, "lora %s: runs (%s %s)" % (label, e1, e2)):
            continue
        e = rel_l2(got, want)
        check(e <= TOL_LORA, "lora %s: latent vs pre-merged model rel L2 %.3g (tol %g)" % (label, e, TOL_LORA))
        eff = rel_l2(got, base)
        check(eff > 1e-3, "lora %s changes the latent (rel L2 %.3g vs no LoRA)" % (label, eff))
    # F16 model: the LoRA merges into F32 copies of the F16 values
    m16 = make_model.make_model("tiny-sd1", "diffusers", "f16", 3, os.path.join(work, "m16"),
                                bpe=ARGS.bpe)
    mm = merged_model(os.path.join(work, "m16"), os.path.join(work, "m16-merged"), m16, [(fk, 0.7, True)])
    want, e1 = c_latent(cli, mm, work, *args)
    got, e2 = c_latent(cli, os.path.join(work, "m16"), work, *(args + ["--lora", kohya + ":0.7"]))
    if check(want is not None and got is not None, "lora on F16 model: runs (%s %s)" % (e1, e2)):
        e = rel_l2(got, want)
        check(e <= TOL_LORA, "lora on F16 model: rel L2 %.3g (tol %g)" % (e, TOL_LORA))
    # errors: unknown module, shape mismatch
    bad = os.path.join(work, "bad.safetensors")
    st_io.save_file({"lora_unet_down_blocks_9_nothing.lora_down.weight": np.zeros((4, 32), np.float32),
                     "lora_unet_down_blocks_9_nothing.lora_up.weight": np.zeros((32, 4), np.float32)}, bad)
    p = run(cli, model, "--out", os.path.join(work, "x.png"), "--lora", bad, *args)
    check(p.returncode == 1 and p.stderr.count("\n") == 1 and bad in p.stderr and "lora_unet_down_blocks_9_nothing" in p.stderr,
          "unknown LoRA module refused: %s" % p.stderr.strip())
    key = "lora_unet_" + UNET_MODULES[0].replace(".", "_")
    st_io.save_file({key + ".lora_down.weight": np.zeros((4, 31), np.float32),
                     key + ".lora_up.weight": np.zeros((32, 4), np.float32)}, bad)
    p = run(cli, model, "--out", os.path.join(work, "x.png"), "--lora", bad, *args)
    check(p.returncode == 1 and p.stderr.count("\n") == 1 and bad in p.stderr and key in p.stderr,
          "LoRA shape mismatch refused: %s" % p.stderr.strip())
    check(not os.path.exists(os.path.join(work, "x.png")), "no PNG after a LoRA error")


def option_cases(cli, model, work):
    out = os.path.join(work, "opt")
    base = ["--prompt", "x", "--out", out]
    for args, code, needle in ((["--steps", "0"], 2, "1..1000"), (["--steps", "1001"], 2, "1..1000"),
                               (["--cfg", "-1"], 2, "0..100"), (["--cfg", "101"], 2, "0..100"),
                               (["--count", "0"], 2, "1..1000"), (["--count", "1001"], 2, "1..1000"),
                               (["--sampler", "plms"], 2, "dpm++2m-karras"),
                               (["--width", "30"], 2, "multiples of 4"),
                               (["--width", "4096"], 2, "2048"),
                               (["--seed", "-3"], 2, "--seed"),
                               (["--lora", os.path.join(work, "missing.safetensors")], 1, "missing.safetensors")):
        p = run(cli, model, *(base + args))
        check(p.returncode == code and p.stderr.count("\n") == 1 and needle in p.stderr,
              "%s refused (exit %d): %s" % (" ".join(args), p.returncode, p.stderr.strip()))
    p = subprocess.run([cli, "generate", model, "--out", out], capture_output=True, text=True)
    check(p.returncode == 2 and "--prompt" in p.stderr, "missing --prompt refused: %s" % p.stderr.strip())
    check(not os.path.exists(out) or not os.listdir(out), "no files after refused options")
    # Ctrl-C during sampling: exit 130, nothing written
    d = os.path.join(work, "cancel")
    proc = subprocess.Popen([cli, "generate", model, "--prompt", "x", "--steps", "1000", "--out", d,
                             "--latent-out", os.path.join(work, "cancel.safetensors")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(1.5)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    left = os.listdir(d) if os.path.isdir(d) else []
    check(proc.returncode == 130 and "cancel" in err and not left and
          not os.path.exists(os.path.join(work, "cancel.safetensors")),
          "SIGINT: exit %d, files left %s: %s" % (proc.returncode, left, err.strip()))


def api_cases(cli, model, ref, work, bpe):
    """db_generate through ctypes (the GIMP plug-in's path): images_out equals the reference
    decode of the same run's latent (via on_image), progress fractions increase to 1 with
    "image 1/1: step i/n" stages, a callback returning nonzero cancels with DB_ERR_CANCELLED."""
    import ctypes
    lib = ctypes.CDLL(os.path.join(os.path.dirname(os.path.abspath(cli)), "libdreambooth.so"))

    class DbError(ctypes.Structure):
        _fields_ = [("status", ctypes.c_int), ("msg", ctypes.c_char * 1024)]

    class DbModelOptions(ctypes.Structure):
        _fields_ = [("tokenizer", ctypes.c_char_p), ("prediction", ctypes.c_int)]

    PROGRESS = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_double, ctypes.c_char_p)
    IMAGE = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_int, ctypes.c_uint64,
                             ctypes.POINTER(ctypes.c_float), ctypes.POINTER(ctypes.c_float),
                             ctypes.POINTER(DbError))

    class Opts(ctypes.Structure):
        _fields_ = [("prompt", ctypes.c_char_p), ("negative", ctypes.c_char_p),
                    ("sampler", ctypes.c_char_p), ("steps", ctypes.c_int), ("cfg", ctypes.c_float),
                    ("eta", ctypes.c_float), ("seed", ctypes.c_uint64), ("width", ctypes.c_int),
                    ("height", ctypes.c_int), ("count", ctypes.c_int),
                    ("noise", ctypes.POINTER(ctypes.c_float)), ("vae", ctypes.c_void_p),
                    ("on_image", IMAGE), ("image_user", ctypes.c_void_p)]

    lib.db_model_open.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_char_p,
                                  ctypes.POINTER(DbModelOptions), ctypes.POINTER(DbError)]
    lib.db_generate.argtypes = [ctypes.c_void_p, ctypes.POINTER(Opts), ctypes.POINTER(ctypes.c_float),
                                PROGRESS, ctypes.c_void_p, ctypes.POINTER(DbError)]
    lib.db_model_free.argtypes = [ctypes.c_void_p]
    lib.db_set_threads(1, None)
    err, mp = DbError(), ctypes.c_void_p()
    if not check(lib.db_model_open(ctypes.byref(mp), model.encode(), None, ctypes.byref(err)) == 0,
                 "api: db_model_open (%s)" % err.msg.decode()):
        return
    latents, fractions, stages = [], [], []

    def on_image(user, index, seed, latent, image, e):
        latents.append(np.ctypeslib.as_array(latent, (1, 4, 16, 16)).copy())
        return 0

    def progress(user, f, stage):
        fractions.append(f)
        stages.append(stage.decode())
        return 0

    cb_img, cb_prog = IMAGE(on_image), PROGRESS(progress)
    o = Opts(prompt=PROMPT.encode(), negative=NEGATIVE.encode(), sampler=b"ddim", steps=6, cfg=7.5,
             seed=7, count=1, on_image=cb_img)
    images = np.zeros((1, 3, 32, 32), np.float32)
    st = lib.db_generate(mp, ctypes.byref(o), images.ctypes.data_as(ctypes.POINTER(ctypes.c_float)),
                         cb_prog, None, ctypes.byref(err))
    if check(st == 0 and len(latents) == 1, "api: db_generate (%d %s)" % (st, err.msg.decode())):
        with torch.no_grad():
            want = ref.m.vae.decode(torch.from_numpy(latents[0]) / ref.sf).numpy()
        e = rel_l2(images, want)
        check(e <= 1e-5, "api: images_out vs reference decode of the latent: rel L2 %.3g (tol 1e-5)" % e)
        check(all(b >= a for a, b in zip(fractions, fractions[1:])) and fractions[-1] == 1.0 and
              "image 1/1: step 6/6" in stages and "image 1/1: decoding" in stages,
              "api: progress increasing to 1.0 over %d calls, stages %s" % (len(fractions), sorted(set(stages))))
    cancel = PROGRESS(lambda u, f, s: 1 if f > 0.3 else 0)
    st = lib.db_generate(mp, ctypes.byref(o), None, cancel, None, ctypes.byref(err))
    check(st == 7 and err.msg, "api: cancel from progress -> DB_ERR_CANCELLED (%d: %s)" % (st, err.msg.decode()))
    lib.db_model_free(mp)


def main():
    global ARGS
    ap = argparse.ArgumentParser()
    ap.add_argument("--cli", required=True)
    ap.add_argument("--bpe", required=True)
    ap.add_argument("--keep", help="work in this folder and keep it")
    ARGS = ap.parse_args()
    t0 = time.time()
    work = ARGS.keep or tempfile.mkdtemp(prefix="test_generate.")
    os.makedirs(work, exist_ok=True)
    try:
        torch.set_num_threads(1)
        model = os.path.join(work, "model")
        with torch.no_grad():
            m = make_model.make_model("tiny-sd1", "diffusers", "f32", 3, model, bpe=ARGS.bpe)
        ref = Ref(m, ARGS.bpe)
        noise = torch.randn((1, 4, 16, 16), generator=torch.Generator().manual_seed(99)).numpy()
        for fn, a in ((latent_cases, (ARGS.cli, model, ref, work, noise)),
                      (png_cases, (ARGS.cli, model, ref, work)),
                      (lora_cases, (ARGS.cli, model, m, work, noise)),
                      (option_cases, (ARGS.cli, model, work)),
                      (api_cases, (ARGS.cli, model, ref, work, ARGS.bpe))):
            t = time.time()
            fn(*a)
            print("---- %s: %.1f s" % (fn.__name__, time.time() - t))
    finally:
        if not ARGS.keep:
            shutil.rmtree(work, ignore_errors=True)
    print("test_generate: %.1f s" % (time.time() - t0))
    if FAILS:
        print("test_generate: %d FAILURES" % len(FAILS))
        return 1
    print("test_generate: all passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
