#!/usr/bin/python3
# SPDX-License-Identifier: GPL-3.0-or-later
"""The C UNet2DConditionModel forward against the PyTorch reference (sd_unet.py).

  test_unet.py --cli PATH_TO_dreambooth [--bpe GZ] [--workdir DIR] [--keep]

For tiny-sd1 and tiny-sd2, diffusers folder and single file (whose configs are the ones the
loader infers, make_model's inferable configs), F32 and F16 storage (plus BF16 single files),
`dreambooth forward MODEL --net unet` on
  - sample [2,4,16,16], timestep I64 [2], encoder_hidden_states [2,77,D]
  - sample [2,4,8,16] (h != w), timestep F32 [2] (fractional), encoder_hidden_states [2,5,D]
  - sample [1,4,16,8] (batch 1), timestep F64 0-d (broadcast), encoder_hidden_states [1,77,D]
  - sample [3,4,8,8], timestep I32 [1] (broadcast to 3), encoder_hidden_states [3,77,D]
must give `sample` F32 of the input's shape with relative L2 error ||c - ref|| / ||ref||
<= 1e-5 against the float32 reference module holding the stored (dtype-rounded) weights.
Also: a latent size that is not a multiple of 2^(blocks-1) must be refused with exit 1 and
one line on stderr; and through the C API (ctypes on libdreambooth.so next to the CLI):
db_unet_forward reports progress after every block with increasing fractions ending at 1.0,
its output equals the reference, and a callback returning nonzero at the third block stops it
with DB_ERR_CANCELLED and a message. Exit status 1 on any failure (also when torch is missing). --bpe is
accepted for symmetry with the other reference tests and not needed.
"""
import argparse
import os
import sys

try:
    import numpy as np
    import torch
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import make_model
    import sd_configs
    from harness import fail, rel_err
    import harness
except ImportError as e:
    print("test_unet: FAIL: cannot import the reference (%s); /usr/bin/python3 with torch is required" % e)
    sys.exit(1)

TOL = 1e-5  # relative L2 error of the output sample, every case


def cli_unet(cli, model, tensors, work, threads=None):
    """Runs forward --net unet; returns (sample, None) or (None, error)."""
    outs, err = harness.run_net(cli, "forward", model, "unet", tensors, work,
                                ["--threads", str(threads)] if threads else [], want_f32=("sample",))
    return (outs["sample"], None) if outs else (None, err)


def cases(cross_dim):
    """(label, sample, timestep (numpy, any dtype/rank), context)."""
    g = np.random.default_rng(5)

    def rnd(*shape):
        return g.standard_normal(shape).astype(np.float32)

    return [
        ("B2 16x16 t I64[2] S77", rnd(2, 4, 16, 16), np.array([981, 1], np.int64), rnd(2, 77, cross_dim)),
        ("B2 8x16 t F32[2] S5", rnd(2, 4, 8, 16), np.array([500.5, 37.25], np.float32), rnd(2, 5, cross_dim)),
        ("B1 16x8 t F64[] S77", rnd(1, 4, 16, 8), np.array(741.0, np.float64), rnd(1, 77, cross_dim)),
        ("B3 8x8 t I32[1] S77", rnd(3, 4, 8, 8), np.array([250], np.int32), rnd(3, 77, cross_dim)),
    ]


def reference(unet, sample, t, ctx):
    with torch.no_grad():
        return unet(torch.from_numpy(sample), torch.from_numpy(np.array(t)),
                    torch.from_numpy(ctx)).numpy()


def run_case(cli, work, kind, layout, dtype):
    name = "%s %s %s" % (kind, layout, dtype)
    d = os.path.join(work, "%s-%s-%s" % (kind, layout, dtype))
    os.makedirs(d, exist_ok=True)
    out = os.path.join(d, "model" if layout == "diffusers" else "model.safetensors")
    m = make_model.make_model(kind, layout, dtype, 3, out, nets=("unet",))
    cfgs = getattr(m, "configs", None)  # single files: configs the loader can infer
    cross = (cfgs["unet"] if cfgs else sd_configs.unet_config(kind))["cross_attention_dim"]
    for label, sample, t, ctx in cases(cross):
        ref = reference(m.unet, sample, t, ctx)
        got, err = cli_unet(cli, out, {"sample": sample, "timestep": t,
                                       "encoder_hidden_states": ctx}, d)
        if err:
            fail("%s: %s: %s" % (name, label, err))
            continue
        if got.shape != ref.shape:
            fail("%s: %s: shape %s, want %s" % (name, label, list(got.shape), list(ref.shape)))
            continue
        e = rel_err(got, ref)
        line = "%s: %s: rel L2 err %.3g (tol %g)" % (name, label, e, TOL)
        if e <= TOL and np.isfinite(got).all():
            print("ok   " + line)
        else:
            fail(line)
    # tiny UNets have 2 blocks: h and w must be even
    bad = {"sample": np.zeros((1, 4, 6, 5), np.float32), "timestep": np.array([1], np.int64),
           "encoder_hidden_states": np.zeros((1, 77, cross), np.float32)}
    got, err = cli_unet(cli, out, bad, d)
    if err is None:
        fail("%s: a 6x5 latent was accepted" % name)
    elif not err.startswith("exit 1:") or "\n" in err:
        fail("%s: 6x5 latent: expected exit 1 with one line, got %r" % (name, err))
    else:
        print("ok   %s: 6x5 latent refused (%s)" % (name, err))


DB_ERR_CANCELLED = 7


def check_api(cli, work):
    """Progress and cancellation through the C API."""
    import ctypes
    lib_path = os.path.join(os.path.dirname(os.path.abspath(cli)), "libdreambooth.so")
    try:
        lib = ctypes.CDLL(lib_path)
    except OSError as e:
        fail("api: cannot load %s: %s" % (lib_path, e))
        return

    class DbError(ctypes.Structure):
        _fields_ = [("status", ctypes.c_int), ("msg", ctypes.c_char * 1024)]

    PROGRESS = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_double, ctypes.c_char_p)
    fp = ctypes.POINTER(ctypes.c_float)
    lib.db_model_open.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_char_p, ctypes.c_void_p,
                                  ctypes.POINTER(DbError)]
    lib.db_model_free.argtypes = [ctypes.c_void_p]
    lib.db_unet_forward.argtypes = [ctypes.c_void_p, fp, fp, fp, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                                    ctypes.c_int, fp, PROGRESS, ctypes.c_void_p, ctypes.POINTER(DbError)]
    d = os.path.join(work, "api")
    m = make_model.make_model("tiny-sd1", "diffusers", "f32", 4, os.path.join(d, "model"), nets=("unet",))
    model, err = ctypes.c_void_p(), DbError()
    if lib.db_model_open(ctypes.byref(model), os.path.join(d, "model").encode(), None, ctypes.byref(err)):
        fail("api: db_model_open: %s" % err.msg.decode())
        return
    try:
        g = np.random.default_rng(9)
        sample = g.standard_normal((2, 4, 8, 8)).astype(np.float32)
        t = np.array([10.0, 900.0], np.float32)
        cfgs = getattr(m, "configs", None)
        cross = (cfgs["unet"] if cfgs else sd_configs.unet_config("tiny-sd1"))["cross_attention_dim"]
        ctx = g.standard_normal((2, 7, cross)).astype(np.float32)
        out = np.zeros_like(sample)
        seen = []

        def ptr(a):
            return a.ctypes.data_as(fp)

        def run(cancel_at):
            def cb(user, frac, stage):
                seen.append((frac, stage))
                return 1 if len(seen) == cancel_at else 0
            cbf = PROGRESS(cb)
            del seen[:]
            return lib.db_unet_forward(model, ptr(sample), ptr(t), ptr(ctx), 2, 8, 8, 7, ptr(out), cbf,
                                       None, ctypes.byref(err))

        st = run(0)
        fr = [f for f, _ in seen]
        ref = reference(m.unet, sample, t, ctx)
        e = rel_err(out, ref)
        if st != 0:
            fail("api: db_unet_forward returned %d: %s" % (st, err.msg.decode()))
        elif len(fr) < 3 or any(b <= a for a, b in zip(fr, fr[1:])) or fr[-1] != 1.0 or not all(s for _, s in seen):
            fail("api: progress fractions not increasing to 1.0: %s" % fr)
        elif e > TOL:
            fail("api: output rel L2 err %.3g > %g" % (e, TOL))
        else:
            print("ok   api: %d progress calls, increasing to 1.0; output rel L2 err %.3g" % (len(fr), e))
        st = run(3)
        if st != DB_ERR_CANCELLED or len(seen) != 3 or not err.msg:
            fail("api: cancel at block 3: status %d after %d calls, message %r" % (st, len(seen), err.msg))
        else:
            print("ok   api: cancelled at block 3 -> DB_ERR_CANCELLED (%s)" % err.msg.decode())
    finally:
        lib.db_model_free(model)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cli", required=True)
    ap.add_argument("--bpe")
    ap.add_argument("--workdir")
    a = ap.parse_args()
    torch.set_num_threads(1)

    def body(work):
        for kind in ("tiny-sd1", "tiny-sd2"):
            for layout in ("diffusers", "single-file"):
                for dtype in ("f32", "f16"):
                    run_case(a.cli, work, kind, layout, dtype)
            run_case(a.cli, work, kind, "single-file", "bf16")
        check_api(a.cli, work)
    return harness.main("test_unet", a, body)


if __name__ == "__main__":
    sys.exit(main())
