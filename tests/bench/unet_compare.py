#!/usr/bin/python3
# SPDX-License-Identifier: GPL-3.0-or-later
"""Benchmark (not a meson test): the C UNet against PyTorch on an SD-1.5-shaped random model.

  unet_compare.py --cli build-x/engine/dreambooth [--model /tmp/sd15-f16] [--sizes 64,32]
                  [--batch 2] [--threads 2] [--repeat 1] [--tol 1e-4]
                  [--wait-policy default|active|passive]

The model (diffusers folder, F16 storage, make_model.py --kind sd15 --seed 1) is written when
missing. For each latent size: `dreambooth forward --net unet` under /usr/bin/time -v (wall
time, which includes opening the model; CPU time, user + system; peak RSS), then the PyTorch
reference module (tests/reference/sd_unet.py, float32, the same dtype-rounded weights,
torch.set_num_threads) on the same inputs: its forward wall and CPU time, and the relative
L2 error of ours against it. On a machine shared with other jobs wall times swing 2x; CPU times under
--wait-policy passive (no spinning threads) are the steadier comparison.
Exit status 1 when an error exceeds --tol or a run fails.
"""
import argparse
import os
import re
import resource
import subprocess
import sys
import tempfile
import time


def _wait_policy_from_argv():
    """--wait-policy must act before libgomp starts (importing torch): set it here."""
    for i, a in enumerate(sys.argv):
        if a.startswith("--wait-policy"):
            v = a.split("=", 1)[1] if "=" in a else sys.argv[i + 1]
            if v != "default":
                os.environ["OMP_WAIT_POLICY"] = v


_wait_policy_from_argv()
import numpy as np  # noqa: E402
import torch  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "reference"))
import make_model  # noqa: E402
import st_io  # noqa: E402


def run_ours(cli, model, inp, out, threads):
    cmd = ["/usr/bin/time", "-v", cli, "forward", model, "--net", "unet", "--in", inp, "--out", out,
           "--threads", str(threads)]
    t0 = time.time()
    p = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.time() - t0
    if p.returncode != 0:
        raise RuntimeError("dreambooth failed: %s" % p.stderr.strip()[-2000:])
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", p.stderr).group(1))
    cpu = sum(float(re.search(r"%s time \(seconds\): ([\d.]+)" % k, p.stderr).group(1))
              for k in ("User", "System"))
    return wall, cpu, rss * 1024, st_io.load_file(out)["sample"]


def cpu_seconds():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cli", required=True)
    ap.add_argument("--model", default="/tmp/sd15-f16")
    ap.add_argument("--sizes", default="64,32")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--tol", type=float, default=1e-4)
    ap.add_argument("--wait-policy", default="default", choices=["default", "active", "passive"],
                    help="OMP_WAIT_POLICY for both ours and torch (passive helps a lot on a "
                         "machine shared with other jobs)")
    a = ap.parse_args()
    if not os.path.exists(a.model):
        print("writing %s ..." % a.model, flush=True)
        make_model.make_model("sd15", "diffusers", "f16", 1, a.model, nets=())
    torch.set_num_threads(a.threads)
    # the stored weights, widened to float32 (make_model writes unet with seed 1 like this)
    unet = make_model.build_unet(make_model.kind_configs("sd15")["unet"], 1, "f16")
    work = tempfile.mkdtemp(prefix="unet_compare-")
    g = np.random.default_rng(0)
    bad = 0
    for hw in [int(s) for s in a.sizes.split(",")]:
        sample = g.standard_normal((a.batch, 4, hw, hw)).astype(np.float32)
        t = np.array([999 - 37 * i for i in range(a.batch)], np.int64)
        ctx = g.standard_normal((a.batch, 77, 768)).astype(np.float32)
        inp, out = os.path.join(work, "in.safetensors"), os.path.join(work, "out.safetensors")
        st_io.save_file({"sample": sample, "timestep": t, "encoder_hidden_states": ctx}, inp)
        for r in range(a.repeat):
            load = os.getloadavg()[0]
            wall, cpu, rss, got = run_ours(a.cli, a.model, inp, out, a.threads)
            with torch.no_grad():
                t0, c0 = time.time(), cpu_seconds()
                ref = unet(torch.from_numpy(sample), torch.from_numpy(t), torch.from_numpy(ctx)).numpy()
                tt, tcpu = time.time() - t0, cpu_seconds() - c0
            err = float(np.linalg.norm(got.astype(np.float64) - ref) / np.linalg.norm(ref))
            ok = err <= a.tol and np.isfinite(got).all()
            bad += not ok
            print("%s [OMP_WAIT_POLICY %s, load %.1f] latent %dx%d batch %d threads %d: "
                  "ours %.2f s wall / %.2f s CPU (peak RSS %.2f GiB), torch %.2f s wall / %.2f s CPU, "
                  "torch/ours %.2fx wall %.2fx CPU, rel L2 err %.3g (tol %g)"
                  % ("ok  " if ok else "FAIL", os.environ.get("OMP_WAIT_POLICY", "default"), load,
                     hw, hw, a.batch, a.threads, wall, cpu, rss / 2**30, tt, tcpu, tt / wall,
                     tcpu / cpu, err, a.tol), flush=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
