#!/usr/bin/python3
# SPDX-License-Identifier: GPL-3.0-or-later
"""Malformed models must be refused cleanly by `dreambooth info MODEL`:

  test_bad_models.py --cli PATH_TO_dreambooth [--workdir DIR]

Each case must exit with a non-zero status (not a signal: a crash is a failure) and print
exactly ONE line on stderr that names the offending file (and, where stated, the tensor and
the expected and found shapes). Cases: diffusers folder without unet/, wrong-shape tensor,
missing tensor, truncated safetensors, garbage file, torch .ckpt pickles (refused with a
conversion hint and never executed: unpickling would create a marker file), oversized
header, header longer than the file, header that is not JSON, nonexistent path; NaN/Inf
weights in F32, F16 and BF16 storage (UNet, VAE, text encoder; the message names the file, the
tensor and NaN or Inf), while the largest finite values (F16 65504, F32/BF16 3.39e38) load.
"""
import argparse
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile

try:
    import torch
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import make_model
    import st_io
except ImportError as e:
    print("test_bad_models: FAIL: cannot import the reference (%s); /usr/bin/python3 with torch is required" % e)
    sys.exit(1)

FAILS = []


class Evil:
    """Unpickling this runs os.system(cmd): a loader that executes pickles creates the marker."""

    def __init__(self, cmd):
        self.cmd = cmd

    def __reduce__(self):
        return (os.system, (self.cmd,))


def norm_shape(dims):
    return ",".join(str(int(d)) for d in dims)


def run_case(cli, name, model, must_contain=(), shapes=(), any_of=(), extra=()):
    """must_contain: substrings that must all appear (case-sensitive); shapes: dim lists that must
    appear (as [a, b], (a, b), a x b ...); any_of: groups of alternatives, one of each must appear."""
    try:
        p = subprocess.run([cli, "info", model, *extra], capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        FAILS.append(name)
        print("FAIL %s: no answer in 60 s" % name)
        return
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    why = []
    if p.returncode < 0:
        why.append("killed by signal %d" % -p.returncode)
    elif p.returncode == 0:
        why.append("exit status 0")
    if len(lines) != 1:
        why.append("%d lines on stderr (want exactly 1)" % len(lines))
    msg = " ".join(lines)
    for s in must_contain:
        if s not in msg:
            why.append("message does not name %r" % s)
    # every run of integers joined by "," / "x" / "\u00d7": [32, 33], (32,33), 32x33
    found = {norm_shape(re.findall(r"\d+", mo.group(0)))
             for mo in re.finditer(r"\d+(?:\s*[,x\u00d7]\s*\d+)*", msg)}
    for dims in shapes:
        if norm_shape(dims) not in found:
            why.append("message does not give the shape %s" % list(dims))
    for group in any_of:
        if not any(g.lower() in msg.lower() for g in group):
            why.append("message has none of %s" % list(group))
    print("%s %s: exit %d: %s%s" % ("FAIL" if why else "ok  ", name, p.returncode, msg[:300],
                                     ("  <- " + "; ".join(why)) if why else ""))
    if why:
        FAILS.append(name)


def rewrite(path, fn):
    """Loads a safetensors file, lets fn edit the dict, writes it back (same metadata)."""
    t = st_io.load_file(path)
    meta = st_io.load_metadata(path)
    fn(t)
    st_io.save_file(t, path, meta)


def poke(path, name, index, raw):
    """Overwrites element index of tensor name in a safetensors file with the raw bytes of one
    value in the tensor's own dtype (F32: 4 bytes, F16/BF16: 2)."""
    import json
    with open(path, "r+b") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        hdr = json.loads(f.read(n))
        e = hdr[name]
        assert len(raw) == {"F32": 4, "F16": 2, "BF16": 2}[e["dtype"]], (name, e["dtype"])
        f.seek(8 + n + e["data_offsets"][0] + index * len(raw))
        f.write(raw)


# raw little-endian bit patterns per storage dtype
NAN = {"F32": struct.pack("<I", 0x7FC00000), "F16": struct.pack("<H", 0x7E00), "BF16": struct.pack("<H", 0x7FC0)}
INF = {"F32": struct.pack("<I", 0x7F800000), "F16": struct.pack("<H", 0x7C00), "BF16": struct.pack("<H", 0x7F80)}
NEG_INF = {"F32": struct.pack("<I", 0xFF800000), "F16": struct.pack("<H", 0xFC00), "BF16": struct.pack("<H", 0xFF80)}
MAX_FINITE = {"F32": struct.pack("<I", 0x7F7FFFFF), "F16": struct.pack("<H", 0x7BFF), "BF16": struct.pack("<H", 0x7F7F)}


def weights_file(d, net):
    for f in sorted(os.listdir(os.path.join(d, net))):
        if f.endswith(".safetensors"):
            return os.path.join(d, net, f)
    raise RuntimeError("no weights in %s/%s" % (d, net))


def nonfinite_cases(cli, work, base, tokenizer):
    """NaN/Inf weights: refused by info --check (which scans all) and by generate (first use) with
    file, tensor and kind; max finite values load."""
    models = {"F32": base}
    for dt in ("f16", "bf16"):
        d = os.path.join(work, "base-" + dt)
        make_model.make_model("tiny-sd1", "diffusers", dt, 5, d)
        models[dt.upper()] = d
    cases = [  # (storage, net, tensor, element, value table, word)
        ("F32", "unet", "down_blocks.0.resnets.0.conv1.weight", 7, NAN, "NaN"),
        ("F32", "vae", "decoder.conv_out.weight", 0, INF, "Inf"),
        ("F32", "text_encoder", "text_model.final_layer_norm.bias", 3, NEG_INF, "Inf"),
        ("F16", "unet", "conv_out.weight", 11, NAN, "NaN"),
        ("F16", "vae", "encoder.conv_in.bias", 1, INF, "Inf"),
        ("BF16", "unet", "mid_block.attentions.0.proj_out.weight", 5, NAN, "NaN"),
        ("BF16", "text_encoder", "text_model.embeddings.token_embedding.weight", 100, INF, "Inf"),
    ]
    for i, (dt, net, tensor, idx, table, word) in enumerate(cases):
        d = os.path.join(work, "nonfinite-%d" % i)
        shutil.rmtree(d, ignore_errors=True)
        shutil.copytree(models[dt], d)
        wf = weights_file(d, net)
        poke(wf, tensor, idx, table[dt])
        run_case(cli, "%s %s in %s %s" % (word, dt, net, tensor), d,
                 must_contain=[os.path.basename(wf), tensor, word], extra=["--check"])
        if net == "unet":  # the first use of the network finds it too (generate does not run info)
            png = os.path.join(d, "out.png")
            p = subprocess.run([cli, "generate", d, "--tokenizer", tokenizer, "--prompt", "a photo", "--steps", "1",
                                "--width", "64", "--height", "64", "--out", png],
                               capture_output=True, text=True, timeout=120)
            err = p.stderr.strip()
            ok = p.returncode > 0 and tensor in err and word in err and not os.path.exists(png)
            print("%s generate on %s %s in %s: exit %d %s" % ("ok  " if ok else "FAIL", word, dt, tensor,
                                                            p.returncode, err[:200]))
            if not ok:
                FAILS.append("generate with %s in %s" % (word, tensor))
    for dt, d0 in models.items():  # the largest finite value is not a false positive
        d = os.path.join(work, "maxfinite-" + dt)
        shutil.rmtree(d, ignore_errors=True)
        shutil.copytree(d0, d)
        poke(weights_file(d, "unet"), "conv_out.weight", 2, MAX_FINITE[dt])
        p = subprocess.run([cli, "info", "--check", d], capture_output=True, text=True, timeout=60)
        ok = p.returncode == 0
        print("%s largest finite %s value loads: exit %d %s" % ("ok  " if ok else "FAIL", dt, p.returncode,
                                                              p.stderr.strip()[:200]))
        if not ok:
            FAILS.append("max finite " + dt)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cli", required=True)
    ap.add_argument("--workdir")
    ap.add_argument("--tokenizer", required=True, help="CLIP BPE vocabulary (.txt.gz) for generate")
    a = ap.parse_args()
    if not os.access(a.cli, os.X_OK):
        print("test_bad_models: FAIL: %s is not an executable" % a.cli)
        return 1
    work = a.workdir or tempfile.mkdtemp(prefix="test_bad_models-")
    os.makedirs(work, exist_ok=True)
    cli = a.cli
    try:
        base = os.path.join(work, "base")
        with torch.no_grad():
            bm = make_model.make_model("tiny-sd1", "diffusers", "f32", 5, base, inferable=True)
            single = os.path.join(work, "single", "tiny.safetensors")
            sm = make_model.make_model("tiny-sd1", "single-file", "f32", 5, single)
        for good in (base, single):  # the unbroken models must load, or the cases below prove nothing
            p = subprocess.run([cli, "info", good], capture_output=True, text=True, timeout=60)
            if p.returncode != 0:
                raise RuntimeError("the valid model %s is refused: %s" % (good, p.stderr.strip()))

        def copy(name):
            d = os.path.join(work, name)
            shutil.rmtree(d, ignore_errors=True)
            shutil.copytree(base, d)
            return d

        # 1. no unet/ subfolder
        d = copy("no-unet")
        shutil.rmtree(os.path.join(d, "unet"))
        run_case(cli, "diffusers folder without unet/", d, must_contain=["unet"])

        # 2. wrong shape (text encoder q_proj [D,D] -> [D,D+1])
        d = copy("wrong-shape")
        te = os.path.join(d, "text_encoder", "model.safetensors")
        qn = "text_model.encoder.layers.1.self_attn.q_proj.weight"
        D = bm.configs["text"]["hidden_size"]
        rewrite(te, lambda t: t.__setitem__(qn, torch.zeros(D, D + 1).numpy()))
        run_case(cli, "wrong-shape tensor", d, must_contain=["model.safetensors", qn],
                 shapes=[(D, D), (D, D + 1)])

        # 2b. wrong shape in a single file (first UNet resnet conv1 [C,C,3,3] -> [C,C,3,1];
        # conv_in would not do: its input width is read from the file, 9 = inpainting)
        sd = os.path.join(work, "wrong-shape-single.safetensors")
        shutil.copy(single, sd)
        cn = "model.diffusion_model.input_blocks.1.0.in_layers.2.weight"
        C = sm.configs["unet"]["block_out_channels"][0]
        rewrite(sd, lambda t: t.__setitem__(cn, torch.zeros(C, C, 3, 1).numpy()))
        run_case(cli, "wrong-shape tensor (single file)", sd,
                 must_contain=["wrong-shape-single.safetensors"], shapes=[(C, C, 3, 3), (C, C, 3, 1)],
                 any_of=[(cn, "down_blocks.0.resnets.0.conv1.weight")])

        # 3. missing tensor
        d = copy("missing-tensor")
        un = os.path.join(d, "unet", "diffusion_pytorch_model.safetensors")
        rewrite(un, lambda t: t.pop("conv_out.bias"))
        run_case(cli, "missing tensor", d, must_contain=["conv_out.bias"],
                 any_of=[("diffusion_pytorch_model.safetensors", os.path.join(d, "unet"))])

        # 4. truncated safetensors file
        d = copy("truncated")
        un = os.path.join(d, "unet", "diffusion_pytorch_model.safetensors")
        with open(un, "r+b") as f:
            f.truncate(os.path.getsize(un) - 100)
        run_case(cli, "truncated safetensors", d, must_contain=["diffusion_pytorch_model.safetensors"])
        d = copy("truncated-header")
        un = os.path.join(d, "vae", "diffusion_pytorch_model.safetensors")
        with open(un, "r+b") as f:
            f.truncate(20)
        run_case(cli, "safetensors cut inside its header", d, must_contain=["diffusion_pytorch_model.safetensors"])

        # 5. garbage file
        g = os.path.join(work, "garbage.safetensors")
        with open(g, "wb") as f:
            f.write(bytes((i * 73 + 11) % 256 for i in range(4096)))
        run_case(cli, "garbage file", g, must_contain=["garbage.safetensors"])
        e = os.path.join(work, "empty.safetensors")
        open(e, "wb").close()
        run_case(cli, "empty file", e, must_contain=["empty.safetensors"])

        # 6. pickles: refused with a conversion hint, never executed
        marker = os.path.join(work, "PWNED")
        evil = {"state_dict": {"w": torch.zeros(2)}, "x": Evil("touch '%s'" % marker)}
        for fname, zipped in (("evil.ckpt", True), ("evil-legacy.ckpt", False), ("evil-renamed.safetensors", True)):
            pth = os.path.join(work, fname)
            torch.save(evil, pth, _use_new_zipfile_serialization=zipped)
            if os.path.exists(marker):
                raise RuntimeError("the marker exists before the test ran")
            run_case(cli, "torch pickle %s" % fname, pth, must_contain=[fname], any_of=[("convert",)])
            if os.path.exists(marker):
                FAILS.append("pickle executed")
                print("FAIL %s: THE PICKLE WAS EXECUTED (%s exists)" % (fname, marker))
                os.remove(marker)
        # a diffusers folder whose unet weights are a pickle under the safetensors name
        d = copy("pickle-in-folder")
        un = os.path.join(d, "unet", "diffusion_pytorch_model.safetensors")
        torch.save(evil, un)
        run_case(cli, "pickle named diffusion_pytorch_model.safetensors", d,
                 must_contain=["diffusion_pytorch_model.safetensors"])
        if os.path.exists(marker):
            FAILS.append("pickle executed (folder)")
            print("FAIL: THE PICKLE WAS EXECUTED (%s exists)" % marker)

        # 7. oversized header / header longer than the file / header not JSON
        for fname, n in (("huge-header.safetensors", 200_000_000), ("max-header.safetensors", 2 ** 64 - 1),
                         ("long-header.safetensors", 5000)):
            pth = os.path.join(work, fname)
            with open(pth, "wb") as f:
                f.write(struct.pack("<Q", n) + b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}' + b" " * 64)
            run_case(cli, fname, pth, must_contain=[fname])
        pth = os.path.join(work, "not-json.safetensors")
        body = b'{"a": nope}    '
        with open(pth, "wb") as f:
            f.write(struct.pack("<Q", len(body)) + body)
        run_case(cli, "header not JSON", pth, must_contain=["not-json.safetensors"])

        # 8. NaN / Inf weights
        nonfinite_cases(cli, work, base, a.tokenizer)

        # 9. nothing there
        missing = os.path.join(work, "does-not-exist")
        run_case(cli, "nonexistent path", missing, must_contain=["does-not-exist"])
    except Exception as ex:
        import traceback
        traceback.print_exc()
        FAILS.append("exception: %s" % ex)
    finally:
        if not a.workdir:
            shutil.rmtree(work, ignore_errors=True)
    print("test_bad_models: %s (%d failure(s))" % ("FAIL" if FAILS else "PASS", len(FAILS)))
    return 1 if FAILS else 0


if __name__ == "__main__":
    sys.exit(main())
