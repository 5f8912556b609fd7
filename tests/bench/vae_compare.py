#!/usr/bin/python3
# SPDX-License-Identifier: GPL-3.0-or-later
"""SD-shaped VAE decode: C engine vs torch float32, timings and peak memory (not a meson test).

  vae_compare.py --cli build/engine/dreambooth [--workdir DIR] [--dtype f16|f32] [--threads 2]
                 [--big 1024] [--untiled-big] [--encode]

Writes an SD-1.5-shaped model whose UNet and text encoder are sparse zeros
(tests/reference/make_sparse_sd15.py) and whose VAE holds random weights (sd_vae.init_random_,
rounded to the storage dtype, so torch and C use the same values). Then:
  1. torch (torch.set_num_threads(threads)) decodes a [1,4,64,64] latent -> [1,3,512,512];
  2. `dreambooth forward --net vae-decoder` under /usr/bin/time -v, untiled (automatic
     tiling keeps 512 untiled): relative L2 error vs torch <= 1e-4, wall time, peak RSS;
  3. the same at --big (default 1024: [1,4,128,128]) with automatic tiling: peak RSS must stay
     within the 512 run's plus the image (+ 64 MiB slack for the input/output copies);
     --untiled-big also runs it untiled and prints the tiled-vs-untiled difference;
  4. --encode: encoder at 512 likewise (mean and logvar vs torch).
Exit status 1 when an error bound or the memory bound fails.
"""
import argparse
import os
import re
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "reference"))
import make_model  # noqa: E402
import make_sparse_sd15  # noqa: E402
import sd_configs  # noqa: E402
import st_io  # noqa: E402

TOL = 1e-4
FAILS = []


def rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def run_cli(cli, model, net, inputs, work, threads, extra=()):
    inp, out = os.path.join(work, "in.safetensors"), os.path.join(work, "out.safetensors")
    if os.path.exists(out):
        os.remove(out)
    st_io.save_file({k: np.ascontiguousarray(v, np.float32) for k, v in inputs.items()}, inp)
    cmd = ["/usr/bin/time", "-v", cli, "forward", model, "--net", net, "--in", inp, "--out", out,
           "--threads", str(threads)] + list(extra)
    t0 = time.time()
    p = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.time() - t0
    if p.returncode != 0:
        raise RuntimeError("%s failed: %s" % (" ".join(cmd), p.stderr.strip()[-2000:]))
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", p.stderr).group(1))
    return st_io.load_file(out), wall, rss / 1024.0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cli", required=True)
    ap.add_argument("--workdir")
    ap.add_argument("--dtype", default="f16", choices=["f16", "f32"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--big", type=int, default=1024)
    ap.add_argument("--untiled-big", action="store_true")
    ap.add_argument("--encode", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    work = a.workdir or tempfile.mkdtemp(prefix="vae_compare-")
    model = os.path.join(work, "sd15")
    make_sparse_sd15.make_sparse("sd15", "diffusers", model, a.dtype)
    with torch.no_grad():
        vae = make_model.build_vae(sd_configs.vae_config("sd15"), 11, a.dtype)
        var = make_model.VARIANT[a.dtype]
        st_io.save_file({k: v.detach().contiguous() for k, v in vae.state_dict().items()},
                        os.path.join(model, "vae", "diffusion_pytorch_model%s.safetensors" % var),
                        {"format": "pt"}, make_model.ST_DTYPE[a.dtype])
        g = np.random.default_rng(0)
        z = g.standard_normal((1, 4, 64, 64)).astype(np.float32)
        t0 = time.time()
        ref = vae.decode(torch.from_numpy(z)).numpy()
        t_torch = time.time() - t0
    rss_torch = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print("torch %s: decode [1,4,64,64] -> [1,3,512,512]: %.2f s with %d threads (process peak "
          "RSS %.0f MiB, includes the f32 module)" % (torch.__version__, t_torch, a.threads, rss_torch))

    got, wall, rss512 = run_cli(a.cli, model, "vae-decoder", {"latent": z}, work, a.threads)
    e = rel_err(got["sample"], ref)
    print("C     decode 512 untiled: %.2f s wall (process, incl. model open), peak RSS %.0f MiB, "
          "rel L2 err vs torch %.3g (tol %g)" % (wall, rss512, e, TOL))
    if not e <= TOL:
        FAILS.append("decode 512 error %.3g" % e)

    h = a.big // 8
    zb = g.standard_normal((1, 4, h, h)).astype(np.float32)
    got_b, wall_b, rss_b = run_cli(a.cli, model, "vae-decoder", {"latent": zb}, work, a.threads)
    img_mib = 3 * a.big * a.big * 4 / 1048576.0
    bound = rss512 + img_mib + 64
    print("C     decode %d automatic (tiled 512 px, overlap 128): %.2f s wall, peak RSS %.0f MiB "
          "(bound: 512 run + image %.0f MiB + 64 MiB = %.0f MiB)" % (a.big, wall_b, rss_b, img_mib, bound))
    if rss_b > bound:
        FAILS.append("decode %d peak RSS %.0f MiB above %.0f MiB" % (a.big, rss_b, bound))
    if a.untiled_big:
        got_u, wall_u, rss_u = run_cli(a.cli, model, "vae-decoder", {"latent": zb}, work, a.threads,
                                       ["--tile", "0"])
        print("C     decode %d untiled: %.2f s wall, peak RSS %.0f MiB; tiled vs untiled rel L2 "
              "diff %.3g, max abs diff %.3g" % (a.big, wall_u, rss_u, rel_err(got_b["sample"], got_u["sample"]),
                                               float(np.abs(got_b["sample"] - got_u["sample"]).max())))
    if a.encode:
        x = g.uniform(-1, 1, (1, 3, 512, 512)).astype(np.float32)
        with torch.no_grad():
            t0 = time.time()
            mean, logvar = vae.encode(torch.from_numpy(x))
            t_enc = time.time() - t0
        got, wall, rss = run_cli(a.cli, model, "vae-encoder", {"sample": x}, work, a.threads)
        em, el = rel_err(got["mean"], mean.numpy()), rel_err(got["logvar"], logvar.numpy())
        print("encode 512: torch %.2f s; C %.2f s wall, peak RSS %.0f MiB; rel L2 err mean %.3g "
              "logvar %.3g (tol %g)" % (t_enc, wall, rss, em, el, TOL))
        if not (em <= TOL and el <= TOL):
            FAILS.append("encode 512 error %.3g / %.3g" % (em, el))
    print("vae_compare: %s %s" % ("FAIL" if FAILS else "PASS", "; ".join(FAILS)))
    return 1 if FAILS else 0


if __name__ == "__main__":
    sys.exit(main())
