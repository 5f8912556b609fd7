#!/usr/bin/python3
# SPDX-License-Identifier: GPL-3.0-or-later
"""`dreambooth init-model` against the Python reference writer (tests/reference/make_model.py).

For tiny-sd1 and tiny-sd2, both layouts, f32 and f16:
  - the same files; every safetensors file has exactly the tensor names, shapes and dtypes
    make_model.py writes (headers only: both are random), contiguous data, no trailing bytes;
  - configs byte-identical to sd_configs.to_json(...) (so equal as JSON), tokenizer/ files
    byte-identical to tokenizer_ref.write_hf_tokenizer's;
  - single files: modelspec.architecture / prediction_type metadata;
  - `dreambooth info --json` opens the model and reports what it reports for make_model's;
  - the weights: scales as sd_unet/clip_text init_random_ (per-tensor tolerances below),
    deterministic per seed, f16 = f32 rounded, OpenCLIP in_proj = the q/k/v pieces.
Then the option errors (one line, exit 2) and the refusal to overwrite.

  test_init_model.py --cli BUILD/engine/dreambooth --bpe bpe_simple_vocab_16e6.txt.gz
"""
import argparse
import json
import math
import os
import subprocess
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "reference"))
import make_model  # noqa: E402
import sd_configs  # noqa: E402
import st_io  # noqa: E402
import tokenizer_ref  # noqa: E402

FAILS = []


def check(cond, msg):
    if not cond:
        FAILS.append(msg)
        print("FAIL:", msg)
    return cond


def run(cli, *args, expect=0):
    r = subprocess.run([cli, *args], capture_output=True, text=True, timeout=600)
    check(r.returncode == expect, "%s -> exit %d (want %d): %s" % (" ".join(args), r.returncode, expect,
                                                                  r.stderr.strip()))
    return r


def files_under(path):
    if os.path.isfile(path):
        return [""]
    out = []
    for root, _, names in os.walk(path):
        out += [os.path.relpath(os.path.join(root, n), path) for n in names]
    return sorted(out)


def header_check(path, label):
    """-> (tensors {name: (dtype, shape)}, metadata); checks the data tiles the file."""
    hdr, meta, start = st_io.read_header(path)
    spans = sorted(tuple(e["data_offsets"]) for e in hdr.values())
    pos = 0
    for b, e in spans:
        check(b == pos, "%s: data not contiguous at %d" % (label, b))
        pos = e
    check(start + pos == os.path.getsize(path), "%s: file size %d != %d" % (label, os.path.getsize(path), start + pos))
    check(start % 8 == 0, "%s: data does not start at a multiple of 8" % label)
    return {k: (e["dtype"], e["shape"]) for k, e in hdr.items()}, meta


def compare_headers(ours, ref, label):
    a, b = set(ours), set(ref)
    check(a == b, "%s: names differ: only ours %s, only reference %s" % (label, sorted(a - b)[:5], sorted(b - a)[:5]))
    bad = [k for k in a & b if ours[k] != ref[k]]
    check(not bad, "%s: %d tensors differ in dtype/shape, e.g. %s: ours %s ref %s" % (
        label, len(bad), bad[:1], ours.get(bad[0]) if bad else "", ref.get(bad[0]) if bad else ""))


def info(cli, path, bpe):
    r = run(cli, "info", path, "--json", "--tokenizer", bpe)
    try:
        return json.loads(r.stdout)
    except ValueError:
        check(False, "info %s: not JSON: %r" % (path, r.stdout[:200]))
        return {}


def scale_checks(path, family, single):
    """Per-tensor statistics of the generator's scales (tensors with >= 4096 values):
    UNet/VAE weights std*sqrt(fan_in) and CLIP weights std*sqrt(in) within 10% of 1,
    norm weights mean within 0.02 of 1 and std within 25% of 0.1, biases std within 25% of
    0.1 (UNet/VAE) or 0.02 (CLIP), CLIP embeddings std within 10% of 0.08."""
    t = st_io.load_file(path, as_f32=True)
    n_checked = 0
    for name, a in t.items():
        if a.size < 4096 or a.dtype.kind != "f" or "model_ema" in name or a.ndim == 0:
            continue
        clip = "text_model" in name or "cond_stage_model" in name
        std, mean = float(a.std()), float(a.mean())
        if clip:
            if "layer_norm" in name or ".ln_" in name or "ln_final" in name:
                ok = abs(mean - (1.0 if name.endswith("weight") else 0.0)) < 0.02 and abs(std / 0.1 - 1) < 0.25
            elif "embedding" in name:
                ok = abs(std / 0.08 - 1) < 0.1
            elif a.ndim == 2:
                ok = abs(std * math.sqrt(a.shape[-1]) - 1) < 0.1
            else:
                ok = abs(std / 0.02 - 1) < 0.25
        elif a.ndim == 1:
            ok = (abs(std / 0.1 - 1) < 0.25 and
                  abs(mean - (0.0 if name.endswith("bias") else 1.0)) < 0.02)
        else:
            fan_in = int(np.prod(a.shape[1:]))
            ok = abs(std * math.sqrt(fan_in) - 1) < 0.1
        n_checked += 1
        check(ok, "%s: %s %s mean %.4f std %.4f off the init scale" % (path, name, a.shape, mean, std))
    check(n_checked > 10, "%s: only %d tensors checked" % (path, n_checked))
    return t


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cli", required=True)
    ap.add_argument("--bpe", required=True)
    a = ap.parse_args()
    cli = os.path.abspath(a.cli)
    for p in (cli, a.bpe):
        if not os.path.exists(p):
            print("FAIL: missing %s" % p)
            return 1
    import torch
    with tempfile.TemporaryDirectory(prefix="test_init_model-") as tmp:
        ref_tok = os.path.join(tmp, "reftok")
        for kind in ("tiny-sd1", "tiny-sd2"):
            family = make_model.FAMILY[kind]
            for layout in ("diffusers", "single-file"):
                for dtype in ("f32", "f16"):
                    label = "%s %s %s" % (kind, layout, dtype)
                    name = "%s-%s-%s" % (kind, layout, dtype) + (".safetensors" if layout == "single-file" else "")
                    ours, ref = os.path.join(tmp, "c", name), os.path.join(tmp, "py", name)
                    args = ["init-model", "--arch", kind, "--out", ours, "--layout", layout, "--dtype", dtype,
                            "--seed", "5", "--tokenizer-from", a.bpe]
                    r = run(cli, *args)
                    check(r.stderr == "", "%s: unexpected stderr %r" % (label, r.stderr))
                    with torch.no_grad():
                        make_model.make_model(kind, layout, dtype, 5, ref, bpe=a.bpe if layout == "diffusers" else None)
                    check(files_under(ours) == files_under(ref), "%s: files %s != reference %s" % (
                        label, files_under(ours), files_under(ref)))
                    leftovers = [n for n in os.listdir(os.path.dirname(ours)) if n.startswith(".")]
                    check(not leftovers, "%s: temp files left: %s" % (label, leftovers))
                    for rel in files_under(ref):
                        po, pr = os.path.join(ours, rel), os.path.join(ref, rel)
                        if not os.path.exists(po):
                            continue
                        if po.endswith(".safetensors"):
                            ho, mo = header_check(po, "%s %s" % (label, rel))
                            hr, _ = header_check(pr, "reference " + rel)
                            compare_headers(ho, hr, "%s %s" % (label, rel))
                            if layout == "diffusers":
                                check(mo == {"format": "pt"}, "%s %s: metadata %s" % (label, rel, mo))
                            else:
                                want = make_model.single_file_metadata(kind, modelspec=True)
                                for k in ("format", "modelspec.architecture", "modelspec.prediction_type",
                                          "modelspec.sai_model_spec"):
                                    check(mo.get(k) == want[k], "%s: metadata %s = %r, want %r" % (
                                        label, k, mo.get(k), want[k]))
                        elif rel.startswith("tokenizer/"):
                            check(open(po, "rb").read() == open(pr, "rb").read(),
                                  "%s: %s differs from write_hf_tokenizer's" % (label, rel))
                        elif rel.endswith(".json"):
                            text = open(po).read()
                            check(json.loads(text) == json.load(open(pr)), "%s: %s differs as JSON" % (label, rel))
                            check(text == open(pr).read(), "%s: %s text differs from sd_configs.to_json" % (label, rel))
                    io, ir = info(cli, ours, a.bpe), info(cli, ref, a.bpe)
                    for k in ("family", "layout", "storage_dtype", "prediction", "params", "text_encoder", "unet", "vae"):
                        check(io.get(k) == ir.get(k), "%s: info %s: %r, reference %r" % (label, k, io.get(k), ir.get(k)))
                    if layout == "single-file" and dtype == "f32":
                        t = scale_checks(ours, family, True)
                        if family == "sd2":  # in_proj rows = q, k, v pieces: three different blocks
                            w = t["cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight"]
                            c = w.shape[1]
                            check(w.shape[0] == 3 * c and not np.array_equal(w[:c], w[c:2 * c]),
                                  "%s: in_proj q/k/v pieces" % label)
                    if layout == "diffusers" and dtype == "f32":
                        scale_checks(os.path.join(ours, "unet", "diffusion_pytorch_model.safetensors"), family, False)
                        scale_checks(os.path.join(ours, "text_encoder", "model.safetensors"), family, False)
            # f16 = f32 rounded (generation does not depend on the dtype); same seed = same bytes
            d = os.path.join(tmp, "c")
            w32 = st_io.load_file(os.path.join(d, kind + "-diffusers-f32", "unet", "diffusion_pytorch_model.safetensors"))
            w16 = st_io.load_file(os.path.join(d, kind + "-diffusers-f16", "unet", "diffusion_pytorch_model.fp16.safetensors"))
            check(all(np.array_equal(w32[k].astype(np.float16), w16[k]) for k in w32), "%s: f16 != f32 rounded" % kind)
            again = os.path.join(tmp, "again-" + kind)
            run(cli, "init-model", "--arch", kind, "--out", again, "--seed", "5", "-q", "--tokenizer-from", a.bpe)
            for rel in files_under(again):
                check(open(os.path.join(again, rel), "rb").read() ==
                      open(os.path.join(d, kind + "-diffusers-f32", rel), "rb").read(), "%s: %s not deterministic" % (kind, rel))
            other = os.path.join(tmp, "other-" + kind)
            run(cli, "init-model", "--arch", kind, "--out", other, "--seed", "6", "-q", "--tokenizer-from", a.bpe)
            w6 = st_io.load_file(os.path.join(other, "unet", "diffusion_pytorch_model.safetensors"))
            check(not np.array_equal(w6["conv_in.weight"], w32["conv_in.weight"]), "%s: seed 6 == seed 5" % kind)
        del ref_tok

        # errors: one line, exit 2, the valid values named
        out = os.path.join(tmp, "err")
        for args, want in ((["--arch", "sd3", "--out", out], "sd15, sd21, sd21-v, sd21-base, tiny-sd1, tiny-sd2"),
                           (["--arch", "tiny-sd1", "--out", out, "--dtype", "f8"], "f32, f16, bf16"),
                           (["--arch", "tiny-sd1", "--out", out, "--layout", "ckpt"], "diffusers, single-file"),
                           (["--arch", "tiny-sd1", "--out", out, "--seed", "-1"], "negative"),
                           (["--arch", "tiny-sd1"], "--out"),
                           (["--arch", "tiny-sd1", "--out", out + ".safetensors"], "single-file")):
            r = run(cli, "init-model", *args, expect=2)
            check(want in r.stderr and r.stderr.count("\n") == 1, "init-model %s: stderr %r" % (args, r.stderr))
            check(not os.path.exists(out), "init-model %s: wrote %s" % (args, out))
        # no overwrite without --force; --force replaces a model, never another folder
        m = os.path.join(tmp, "c", "tiny-sd1-diffusers-f32")
        before = open(os.path.join(m, "unet", "diffusion_pytorch_model.safetensors"), "rb").read()
        r = run(cli, "init-model", "--arch", "tiny-sd1", "--out", m, "--seed", "9", expect=2)
        check("--force" in r.stderr, "overwrite refusal: %r" % r.stderr)
        check(open(os.path.join(m, "unet", "diffusion_pytorch_model.safetensors"), "rb").read() == before,
              "refused overwrite changed the model")
        run(cli, "init-model", "--arch", "tiny-sd2", "--out", m, "--seed", "9", "--force", "-q")
        check(json.load(open(os.path.join(m, "unet", "config.json")))["use_linear_projection"] is True,
              "--force did not replace the model")
        check(not os.path.exists(os.path.join(m, "tokenizer")), "--force kept files of the old model")
        check(not [n for n in os.listdir(os.path.dirname(m)) if n.startswith(".")], "--force left temp folders")
        other = os.path.join(tmp, "notamodel")
        os.makedirs(other)
        open(os.path.join(other, "keep.txt"), "w").write("x")
        r = run(cli, "init-model", "--arch", "tiny-sd1", "--out", other, "--force", expect=2)
        check(os.path.exists(os.path.join(other, "keep.txt")), "--force removed a folder that is not a model")
        sf = os.path.join(tmp, "c", "tiny-sd1-single-file-f32.safetensors")
        run(cli, "init-model", "--arch", "tiny-sd1", "--out", sf, "--layout", "single-file", expect=2)
        empty = os.path.join(tmp, "empty")
        os.makedirs(empty)
        run(cli, "init-model", "--arch", "tiny-sd1", "--out", empty, "-q", "--tokenizer-from", a.bpe)
        check(os.path.exists(os.path.join(empty, "model_index.json")), "an empty folder was not filled")
        # no tokenizer found: the model is still written, with a warning
        env = dict(os.environ, XDG_DATA_HOME=os.path.join(tmp, "nodata"))
        nt = os.path.join(tmp, "notok")
        r = subprocess.run([cli, "init-model", "--arch", "tiny-sd1", "--out", nt, "-q"], capture_output=True,
                           text=True, env=env, timeout=300)
        check(r.returncode == 0 and "warning" in r.stderr and not os.path.exists(os.path.join(nt, "tokenizer"))
              and os.path.exists(os.path.join(nt, "unet", "diffusion_pytorch_model.safetensors")),
              "no tokenizer: exit %d, stderr %r" % (r.returncode, r.stderr))
    print("%d failures" % len(FAILS))
    return 1 if FAILS else 0


if __name__ == "__main__":
    sys.exit(main())
