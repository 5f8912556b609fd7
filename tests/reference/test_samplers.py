#!/usr/bin/python3
# SPDX-License-Identifier: GPL-3.0-or-later
"""The C samplers (tests/sampler_driver.c) against sched_ref.py's port of diffusers.

  test_samplers.py --driver PATH_TO_sampler_driver

For every sampler (ddim eta 0 and 1, euler, euler-a, dpm++2m, dpm++2m-karras, ddpm) and both
prediction types, 10 steps, CFG 7.5 on the toy model: the initial noise bit for bit
(torch.randn), alphas_cumprod, timesteps, sigmas and init_noise_sigma to 1e-6 relative, the
final latents to relative L2 1e-5. Then schedules alone for every spacing x step count,
Euler with Karras sigmas, and cancellation from the progress callback. Exit status 1 on any
failure (also when torch is missing).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

try:
    import numpy as np
    import torch
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import sched_ref
except ImportError as e:
    print("test_samplers: FAIL: cannot import the reference (%s); /usr/bin/python3 with torch is required" % e)
    sys.exit(1)

FAILS = []
WORST = {}
CASES = []


def check(ok, what):
    if not ok:
        print("FAIL", what)
        FAILS.append(what)
    return ok


def rel_max(a, b):
    """max relative error; the C values are float32 printed with %.9g (exact round trip)"""
    a = np.asarray(a, np.float32).astype(np.float64)
    b = np.asarray(b, np.float32).astype(np.float64)
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-30))) if a.size else 0.0


def rel_l2(a, b):
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def note(key, v):
    WORST[key] = max(WORST.get(key, 0.0), v)


def run_driver(driver, spec, workdir):
    path = os.path.join(workdir, "spec.json")
    with open(path, "w") as f:
        json.dump(spec, f)
    p = subprocess.run([driver, path], capture_output=True, text=True, timeout=120)
    return p.returncode, p.stdout, p.stderr


def case(driver, workdir, sampler, steps=10, shape=(1, 4, 8, 8), seed=42, eta=0.0,
         prediction="epsilon", spacing=None, karras=False, cfg=7.5, latents=True):
    name = "%s steps=%d shape=%s eta=%g %s spacing=%s karras=%s" % (
        sampler, steps, list(shape), eta, prediction, spacing, karras)
    spec = dict(sampler=sampler, steps=steps, shape=list(shape), seed=seed, eta=eta,
                prediction=prediction, spacing=spacing or "default", karras=karras, cfg=cfg)
    rc, out, err = run_driver(driver, spec, workdir)
    s = sched_ref.schedule_for(sampler, steps, prediction, spacing, karras)
    t_ref = s.timesteps.numpy()
    sig = s.sigmas.numpy()[:-1]
    if t_ref.max() > 999 or (sampler.startswith("dpm") and np.any(np.diff(sig) >= 0)):
        # diffusers indexes past alphas_cumprod (IndexError) or, for DPM++, gets NaN from
        # repeated timesteps: the C side must refuse with a message
        check(rc == 1 and "scheduler:" in err, "%s: invalid schedule not refused (exit %d)" % (name, rc))
        note("refused", 0.0)
        return
    if not check(rc == 0, "%s: driver exit %d: %s" % (name, rc, err.strip())):
        return
    got = json.loads(out)
    s, noise0, ref = sched_ref.run_pipeline(sampler, steps, shape, seed, cfg_scale=cfg, eta=eta,
                                            prediction=prediction, spacing=spacing,
                                            karras_sigmas=karras)
    check(got["calls"] == steps, "%s: %d model calls" % (name, got["calls"]))
    e_ac = rel_max(got["alphas_cumprod"], s.ac.numpy())
    e_t = rel_max(got["timesteps"], s.timesteps.numpy())
    e_s = rel_max(got["sigmas"], s.sigmas.numpy())
    e_i = rel_max([got["init_noise_sigma"]], [float(s.init_noise_sigma)])
    for key, v in (("alphas_cumprod", e_ac), ("timesteps", e_t), ("sigmas", e_s), ("init_noise_sigma", e_i)):
        note(key, v)
        check(v <= 1e-6, "%s: %s max relative error %.3g > 1e-6" % (name, key, v))
    c_noise = np.asarray(got["noise0"], np.float32)
    check(np.array_equal(c_noise.view(np.int32), noise0.numpy().ravel().view(np.int32)),
          "%s: initial noise differs from torch.randn" % name)
    CASES.append(name)
    if latents:
        e = rel_l2(got["final"], ref.numpy())
        note("final latents (rel L2)", e)
        check(np.all(np.isfinite(got["final"])) and e <= 1e-5,
              "%s: final latents relative L2 %.3g > 1e-5" % (name, e))
        print("ok   %-75s final rel L2 %.2e" % (name, e))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--driver", required=True)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as wd:
        for pred in ("epsilon", "v_prediction"):
            for sampler, eta in (("ddim", 0.0), ("ddim", 1.0), ("euler", 0.0), ("euler-a", 0.0),
                                 ("dpm++2m", 0.0), ("dpm++2m-karras", 0.0), ("ddpm", 0.0)):
                case(args.driver, wd, sampler, eta=eta, prediction=pred)
            # odd shape (504 elements, not a multiple of 16), another seed, Euler with Karras sigmas
            case(args.driver, wd, "euler-a", shape=(2, 4, 9, 7), seed=7, prediction=pred)
            case(args.driver, wd, "euler", karras=True, prediction=pred)
            case(args.driver, wd, "dpm++2m", steps=25, seed=1234, prediction=pred)
        # schedules alone: every sampler x spacing x step count
        for sampler in ("ddim", "euler", "euler-a", "dpm++2m", "dpm++2m-karras", "ddpm"):
            for spacing in ("leading", "trailing", "linspace"):
                for steps in (1, 7, 20, 50, 999):
                    case(args.driver, wd, sampler, steps=steps, shape=(1, 1, 1, 1), spacing=spacing,
                         latents=False)
            case(args.driver, wd, sampler, steps=1000, shape=(1, 1, 1, 1), latents=False)
        # cancel from the progress callback after the 3rd step -> DB_ERR_CANCELLED
        rc, _, err = run_driver(args.driver, dict(sampler="euler-a", steps=10, shape=[1, 4, 8, 8],
                                                  cancel_at=3), wd)
        check(rc == 3, "cancel at step 3: exit %d (%s)" % (rc, err.strip()))
    print("%d cases compared" % len(CASES))
    for k, v in WORST.items():
        print("worst %-24s %.3g" % (k, v))
    if FAILS:
        print("test_samplers: %d FAILURES" % len(FAILS))
        return 1
    print("test_samplers: all passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
