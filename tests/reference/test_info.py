#!/usr/bin/python3
# SPDX-License-Identifier: GPL-3.0-or-later
"""`dreambooth info MODEL --json` against the generators' ground truth.

  test_info.py --cli PATH_TO_dreambooth [--bpe GZ] [--workdir DIR]

Tiny models (tiny-sd1, tiny-sd2) in both layouts and several storage dtypes: family, layout,
storage dtype, parameter counts per network (= the torch modules' counts; SD2 single files
carry one more text block that must not be counted), text hidden/layers/heads, prediction type
(scheduler config, modelspec metadata, --prediction override) and tokenizer source. Then an
SD-1.5-shaped sparse model (make_sparse_sd15.py) in both layouts: exactly 123,060,480 text
encoder, 859,520,964 UNet and 83,653,863 VAE parameters, in seconds (and SD-2.1-shaped:
340,387,840 / 865,910,724 / 83,653,863). Exit status 1 on any
failure (also when torch is missing).
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

try:
    import torch  # noqa: F401
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import make_model
    import make_sparse_sd15
except ImportError as e:
    print("test_info: FAIL: cannot import the reference (%s); /usr/bin/python3 with torch is required" % e)
    sys.exit(1)

FAILS = []


def check(ok, what):
    print("%s %s" % ("ok  " if ok else "FAIL", what))
    if not ok:
        FAILS.append(what)
    return ok


def run_info(cli, model, *extra, timeout=120):
    t0 = time.time()
    p = subprocess.run([cli, "info", model, "--json"] + list(extra), capture_output=True, text=True,
                       timeout=timeout)
    dt = time.time() - t0
    if p.returncode != 0:
        check(False, "info %s %s: exit %d: %s" % (model, " ".join(extra), p.returncode, p.stderr.strip()))
        return None, dt
    try:
        return json.loads(p.stdout), dt
    except ValueError:
        check(False, "info %s --json printed no JSON object: %r" % (model, p.stdout[:200]))
        return None, dt


def check_common(tag, info, family, layout, dtype, counts, text_cfg=None):
    check(info["family"] == family, "%s: family %s (want %s)" % (tag, info["family"], family))
    check(info["layout"] == layout, "%s: layout %s (want %s)" % (tag, info["layout"], layout))
    check(info["storage_dtype"] == dtype, "%s: storage dtype %s (want %s)" % (tag, info["storage_dtype"], dtype))
    for net in ("text_encoder", "unet", "vae"):
        got = info["params"][net]
        check(got == counts[net], "%s: %s parameters %s (want %s)" % (tag, net, format(got, ","), format(counts[net], ",")))
    if text_cfg:
        te = info["text_encoder"]
        want = (text_cfg["hidden_size"], text_cfg["num_hidden_layers"], text_cfg["num_attention_heads"])
        got = (te["hidden"], te["layers"], te["heads"])
        check(got == want, "%s: text hidden/layers/heads %s (want %s)" % (tag, got, want))


def tiny_cases(cli, bpe, work):
    for kind in ("tiny-sd1", "tiny-sd2"):
        family = make_model.FAMILY[kind]
        variants = [
            # (layout, dtype, options, name)
            ("diffusers", "f32", {"bpe": bpe}, "d-f32"),
            ("diffusers", "f16", {}, "d-f16"),
            ("single-file", "f32", {"modelspec": True, "modelspec_prediction": "v"}, "s-f32"),
            ("single-file", "f16", {"bpe": bpe, "tokenizer_next_to_file": True}, "s-f16"),
            ("single-file", "bf16", {"text_model_level": False, "position_ids": True}, "s-bf16"),
        ]
        for layout, dtype, opts, name in variants:
            d = os.path.join(work, "%s-%s" % (kind, name))
            os.makedirs(d, exist_ok=True)
            out = os.path.join(d, "model" if layout == "diffusers" else "model.safetensors")
            if family == "sd2" and opts.get("text_model_level") is False:
                opts = {"position_ids": True}  # OpenCLIP names have no text_model level
            m = make_model.make_model(kind, layout, dtype, 3, out, **opts)
            counts = {"text_encoder": make_model.param_count(m.text_encoder),
                      "unet": make_model.param_count(m.unet), "vae": make_model.param_count(m.vae)}
            tag = "%s %s %s" % (kind, layout, dtype)
            info, _ = run_info(cli, out)
            if info is None:
                continue
            check_common(tag, info, family, layout, make_model.ST_DTYPE[dtype], counts, m.configs["text"])
            # prediction type
            if layout == "diffusers":
                check(info["prediction"] == "epsilon", "%s: prediction %s from %r (want epsilon from the "
                      "scheduler config)" % (tag, info["prediction"], info["prediction_source"]))
            elif opts.get("modelspec"):
                check(info["prediction"] == "v_prediction", "%s: prediction %s from %r (want v_prediction "
                      "from modelspec.prediction_type)" % (tag, info["prediction"], info["prediction_source"]))
            # tokenizer source
            if m.tokenizer:
                tok = info.get("tokenizer")
                check(tok is not None and os.path.realpath(tok).startswith(os.path.realpath(m.tokenizer)),
                      "%s: tokenizer %r (want the folder %s)" % (tag, tok, m.tokenizer))
            elif layout == "single-file":
                check(info.get("tokenizer") is None, "%s: tokenizer %r (want none: nothing next to the file)"
                      % (tag, info.get("tokenizer")))
                info2, _ = run_info(cli, out, "--tokenizer", bpe, "--prediction", "eps")
                if info2:
                    tok = info2.get("tokenizer")
                    check(tok is not None and os.path.basename(bpe) in tok,
                          "%s --tokenizer GZ: tokenizer %r (want %s)" % (tag, tok, bpe))
                    check(info2["prediction"] == "epsilon", "%s --prediction eps: prediction %s"
                          % (tag, info2["prediction"]))
            if layout == "diffusers" and dtype == "f32":
                info3, _ = run_info(cli, out, "--prediction", "v")
                if info3:
                    check(info3["prediction"] == "v_prediction", "%s --prediction v: prediction %s"
                          % (tag, info3["prediction"]))


def sparse_cases(cli, work):
    """Real-size shapes: sd15 (the required numbers) and sd21 (24 OpenCLIP blocks in the single
    file, 23 counted; v-prediction from the scheduler config)."""
    for kind, layout in (("sd15", "diffusers"), ("sd15", "single-file"), ("sd21", "diffusers"),
                         ("sd21", "single-file")):
        out = os.path.join(work, "%s-sparse-%s" % (kind, layout))
        if layout == "single-file":
            out += ".safetensors"
        t0 = time.time()
        counts = make_sparse_sd15.make_sparse(kind, layout, out, "f16")
        t_make = time.time() - t0
        check(counts == make_sparse_sd15.EXPECTED[kind], "%s sparse %s: module counts %s" % (kind, layout, counts))
        info, dt = run_info(cli, out)
        if info is None:
            continue
        tag = "%s sparse %s" % (kind, layout)
        check_common(tag, info, make_model.FAMILY[kind], layout, "F16", make_sparse_sd15.EXPECTED[kind])
        if kind == "sd21" and layout == "diffusers":
            check(info["prediction"] == "v_prediction", "%s: prediction %s (want v_prediction from the "
                  "scheduler config)" % (tag, info["prediction"]))
        check(dt < 20.0, "%s: info took %.2f s (made in %.2f s; limit 20 s)" % (tag, dt, t_make))
        du = subprocess.run(["du", "-sk", out], capture_output=True, text=True).stdout.split()
        check(du and int(du[0]) < 50 * 1024, "%s: %s KiB on disk (sparse)" % (tag, du[0] if du else "?"))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cli", required=True)
    ap.add_argument("--bpe", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..",
                                                   "shared", "data", "clip", "bpe_simple_vocab_16e6.txt.gz"))
    ap.add_argument("--workdir")
    a = ap.parse_args()
    if not os.access(a.cli, os.X_OK):
        print("test_info: FAIL: %s is not an executable" % a.cli)
        return 1
    if not os.path.exists(a.bpe):
        print("test_info: FAIL: missing fixture %s" % a.bpe)
        return 1
    work = a.workdir or tempfile.mkdtemp(prefix="test_info-")
    os.makedirs(work, exist_ok=True)
    try:
        with torch.no_grad():
            tiny_cases(a.cli, a.bpe, work)
            sparse_cases(a.cli, work)
    except Exception as e:  # a crash of the test itself is a failure, with its reason
        import traceback
        traceback.print_exc()
        FAILS.append("exception: %s" % e)
    finally:
        if not a.workdir:
            shutil.rmtree(work, ignore_errors=True)
    print("test_info: %s (%d failure(s))" % ("FAIL" if FAILS else "PASS", len(FAILS)))
    return 1 if FAILS else 0


if __name__ == "__main__":
    sys.exit(main())
