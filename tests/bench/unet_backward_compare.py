#!/usr/bin/python3
# SPDX-License-Identifier: GPL-3.0-or-later
"""Benchmark (not a meson test): one UNet forward + backward with rank-4 LoRA (attn), the C
engine against PyTorch, on an SD-1.5-shaped random model (F16 storage).

  unet_backward_compare.py --cli build-x/engine/dreambooth [--model /tmp/sd15-f16]
                           [--size 64] [--batch 2] [--threads 2] [--no-torch]
                           [--no-checkpointing]

The model is written with `dreambooth init-model --arch sd15 --dtype f16` when missing.
C side: `dreambooth backward MODEL --net unet --lora 4:4:attn` under /usr/bin/time -v on
sample [B, 4, size, size], timestep 999 - 37 b, encoder_hidden_states [B, 77, 768] and a
random grad_output (wall time including opening the model; peak RSS). PyTorch side:
tests/bench/torch_side.py train-step (the same LoRA targets; forward, MSE loss, backward and
an AdamW step: the optimizer step on 0.8 M LoRA values is negligible) in its own process,
one step without warm-up: step time and peak RSS. Prints one line per side and a JSON
summary; exit status 1 when a side fails.
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "reference"))
import st_io  # noqa: E402


def timed(cmd, env=None):
    """-> (returncode, wall seconds, peak RSS GiB, stdout, stderr) under /usr/bin/time -v."""
    p = subprocess.run(["/usr/bin/time", "-v"] + cmd, capture_output=True, text=True, env=env)
    wall = re.search(r"Elapsed \(wall clock\) time.*: (?:(\d+):)?(\d+):([\d.]+)", p.stderr)
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", p.stderr)
    w = None
    if wall:
        w = (int(wall.group(1) or 0) * 3600 + int(wall.group(2)) * 60 + float(wall.group(3)))
    r = int(rss.group(1)) / 1048576.0 if rss else None
    return p.returncode, w, r, p.stdout, p.stderr


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cli", required=True)
    ap.add_argument("--model", default="/tmp/sd15-f16")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--no-checkpointing", action="store_true")
    a = ap.parse_args()
    if not os.path.isdir(a.model):
        subprocess.run([a.cli, "init-model", "--arch", "sd15", "--dtype", "f16", "--out", a.model],
                       check=True)
    B, s = a.batch, a.size
    g = np.random.default_rng(1)
    work = tempfile.mkdtemp(prefix="unet_backward_compare-")
    inp, out = os.path.join(work, "in.safetensors"), os.path.join(work, "out.safetensors")
    st_io.save_file({"sample": g.standard_normal((B, 4, s, s)).astype(np.float32),
                     "timestep": np.array([999 - 37 * b for b in range(B)], np.int64),
                     "encoder_hidden_states": g.standard_normal((B, 77, 768)).astype(np.float32),
                     "grad_output": g.standard_normal((B, 4, s, s)).astype(np.float32)}, inp)
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads))
    cmd = [a.cli, "backward", a.model, "--net", "unet", "--in", inp, "--out", out,
           "--lora", "4:4:attn"] + (["--no-checkpointing"] if a.no_checkpointing else [])
    rc, wall, rss, _, err = timed(cmd, env)
    res = {"batch": B, "latent": s, "threads": a.threads, "c_rc": rc, "c_wall_s": wall,
           "c_peak_rss_gib": rss, "checkpointing": not a.no_checkpointing}
    print("C       forward+backward (LoRA 4 attn, B=%d, %dx%d): %s s wall incl. model open, peak RSS %.2f GiB%s"
          % (B, s, s, wall, rss or 0, "" if rc == 0 else " FAILED: " + err.strip()[-300:]))
    if not a.no_torch:
        rc2, wall2, rss2, so, err2 = timed(
            ["/usr/bin/python3", os.path.join(HERE, "torch_side.py"), "train-step", "--model", a.model,
             "--batch", str(B), "--size", str(s), "--reps", "1", "--warmup", "0", "--rank", "4",
             "--threads", str(a.threads)], env)
        line = so.strip().splitlines()[-1] if so.strip() else "{}"
        tj = json.loads(line) if line.startswith("{") else {}
        res.update({"torch_rc": rc2, "torch_step_s": tj.get("median_s"), "torch_open_s": tj.get("open_s"),
                    "torch_wall_s": wall2, "torch_peak_rss_gib": rss2})
        print("PyTorch train step (same shapes): %s s step (+%s s load), peak RSS %.2f GiB%s"
              % (tj.get("median_s"), tj.get("open_s"), rss2 or 0,
                 "" if rc2 == 0 else " FAILED: " + (tj.get("error") or err2.strip()[-300:])))
    print(json.dumps(res))
    return 0 if res["c_rc"] == 0 and res.get("torch_rc", 0) == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
