#!/usr/bin/python3
# SPDX-License-Identifier: GPL-3.0-or-later
"""The C AutoencoderKL (encoder -> mean, logvar; decoder) against the PyTorch reference.

  test_vae.py --cli PATH_TO_dreambooth --bpe bpe_simple_vocab_16e6.txt.gz [--workdir DIR]

Untiled (`dreambooth forward MODEL --net vae-encoder|vae-decoder --in IN --out OUT`):
  tiny-sd1 (scale factor 2) and tiny-sd2 (scale factor 8), diffusers folder and single file,
  F32 and F16 storage (plus one BF16 model), encoder on images [2,3,S,S] and [1,3,H,W]
  (H != W), decoder on latents [2,4,s,s] and [1,4,h,w]: relative L2 error
  ||c - ref|| / ||ref|| <= 1e-5 for each of mean, logvar, sample against the float32
  reference module holding the stored (rounded) weights. `--tile 0` must give bit-identical
  output to the default (automatic = untiled at these sizes).
Tiled (`--tile N`, tiles smaller than the input): the same tiles and linear blending
  computed with the reference module (tiled_ref below) <= 1e-5; the difference to untiled is
  printed (it is expected: group norms and attention see one tile) and must stay below
  TILED_VS_UNTILED.
--api PATH: runs tests/test_vae_api.c (progress, cancel, argument checks) on each tiny model.
Exit status 1 on any failure (also when torch is missing).
"""
import argparse
import os
import subprocess
import sys

try:
    import numpy as np
    import torch
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import make_model
    from harness import fail, rel_err
    import harness
except ImportError as e:
    print("test_vae: FAIL: cannot import the reference (%s); /usr/bin/python3 with torch is required" % e)
    sys.exit(1)

TOL = 1e-5               # relative L2 error, every output of every untiled and tiled case
TILED_VS_UNTILED = 0.75  # tiled vs untiled rel L2 diff allowed: tiny random nets with tiny
                         # tiles differ by 0.2-0.5 (tests/bench/vae_compare.py measures the SD VAE)


def cli_run(cli, model, net, inputs, work, extra=()):
    return harness.run_net(cli, "forward", model, net,
                           {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in inputs.items()},
                           work, extra)


def check(name, got, ref, tol=TOL):
    if got is None or got.shape != ref.shape:
        fail("%s: shape %s, want %s" % (name, None if got is None else list(got.shape), list(ref.shape)))
        return None
    e = rel_err(got, ref)
    line = "%s %s: rel L2 err %.3g (tol %g)" % (name, list(ref.shape), e, tol)
    if e <= tol and np.isfinite(got).all():
        print("ok   " + line)
    else:
        fail(line)
    return e


# ---- reference tiling (the algorithm of engine/vae_tiled.c) ----------------------------

def tile_starts(n, t, ov):
    t = min(t, n)
    step = t - ov if t > ov else 1
    count = 1 if t >= n else 1 + (n - t + step - 1) // step
    return t, [min(k * step, n - t) for k in range(count)]


def tile_weights(s, t, n, u, R):
    """Blend weight of each of the t*u output cells of the tile starting at latent cell s."""
    p = np.arange(t * u, dtype=np.float64)
    w = np.ones(t * u)
    if R:
        if s > 0:
            w = np.minimum(w, (p + 0.5) / R)
        if s + t < n:
            w = np.minimum(w, (t * u - p - 0.5) / R)
    return w


def tiled_ref(fn, x, t, ov, u_in, u_out, clamp_second=False):
    """fn(x_tile) -> list of [B, C, th*u_out, tw*u_out] tensors; x [B, C, h*u_in, w*u_in];
    t, ov in latent cells. Linear blending, normalised by the separable weight sums."""
    h, w = x.shape[2] // u_in, x.shape[3] // u_in
    th, ys = tile_starts(h, t, ov)
    tw, xs = tile_starts(w, t, ov)
    R = ov * u_out
    acc, Wy, Wx = None, np.zeros(h * u_out), np.zeros(w * u_out)
    for sy in ys:
        Wy[sy * u_out:(sy + th) * u_out] += tile_weights(sy, th, h, u_out, R)
    for sx in xs:
        Wx[sx * u_out:(sx + tw) * u_out] += tile_weights(sx, tw, w, u_out, R)
    for sy in ys:
        for sx in xs:
            outs = fn(x[:, :, sy * u_in:(sy + th) * u_in, sx * u_in:(sx + tw) * u_in])
            if acc is None:
                acc = [np.zeros((o.shape[0], o.shape[1], h * u_out, w * u_out)) for o in outs]
            wt = np.outer(tile_weights(sy, th, h, u_out, R), tile_weights(sx, tw, w, u_out, R))
            for a, o in zip(acc, outs):
                a[:, :, sy * u_out:(sy + th) * u_out, sx * u_out:(sx + tw) * u_out] += wt * o.numpy()
    acc = [a / np.outer(Wy, Wx) for a in acc]
    if clamp_second:
        acc[1] = np.clip(acc[1], -30.0, 20.0)
    return acc


def encode_moments(vae, x):
    m = vae.quant_conv(vae.encoder(x))
    return list(torch.chunk(m, 2, dim=1))


# ---- cases ---------------------------------------------------------------------------

SIZES = {  # kind: (encoder image sizes [(B, H, W)], decoder latent sizes [(B, h, w)])
    "tiny-sd1": ([(2, 32, 32), (1, 24, 40)], [(2, 16, 16), (1, 12, 20)]),
    "tiny-sd2": ([(2, 64, 64), (1, 48, 80)], [(2, 8, 8), (1, 6, 10)]),
}


def run_api(api, model, name):
    p = subprocess.run([api, model], capture_output=True, text=True, timeout=300)
    out = (p.stdout + p.stderr).strip()
    if p.returncode != 0:
        fail("%s: test_vae_api exit %d: %s" % (name, p.returncode, out[-2000:]))
    else:
        print("ok   %s: %s" % (name, out.splitlines()[-1] if out else "test_vae_api"))


def run_model(cli, work, kind, layout, dtype, g, tiled=False, api=None):
    name = "%s %s %s" % (kind, layout, dtype)
    d = os.path.join(work, "%s-%s-%s" % (kind, layout, dtype))
    os.makedirs(d, exist_ok=True)
    out = os.path.join(d, "model" if layout == "diffusers" else "model.safetensors")
    m = make_model.make_model(kind, layout, dtype, 5, out, nets=("vae",))
    vae = m.vae
    f = vae.scale_factor
    enc_sizes, dec_sizes = SIZES[kind]
    with torch.no_grad():
        for (B, H, W) in enc_sizes:
            x = g.uniform(-1, 1, size=(B, 3, H, W)).astype(np.float32)
            mean, logvar = vae.encode(torch.from_numpy(x))
            got, err = cli_run(cli, out, "vae-encoder", {"sample": x}, d)
            what = "%s: encoder [%d,3,%d,%d]" % (name, B, H, W)
            if err:
                fail("%s: %s" % (what, err))
                continue
            check(what + " mean", got.get("mean"), mean.numpy())
            check(what + " logvar", got.get("logvar"), logvar.numpy())
            if B == 2:
                got0, err = cli_run(cli, out, "vae-encoder", {"sample": x}, d, ["--tile", "0"])
                if err or not all(np.array_equal(got0[k], got[k]) for k in ("mean", "logvar")):
                    fail("%s: --tile 0 differs from the default (%s)" % (what, err))
        for (B, h, w) in dec_sizes:
            z = g.standard_normal(size=(B, 4, h, w)).astype(np.float32)
            ref = vae.decode(torch.from_numpy(z)).numpy()
            got, err = cli_run(cli, out, "vae-decoder", {"latent": z}, d)
            what = "%s: decoder [%d,4,%d,%d]" % (name, B, h, w)
            if err:
                fail("%s: %s" % (what, err))
                continue
            check(what + " sample", got.get("sample"), ref)
        if tiled:
            run_tiled(cli, out, d, name, vae, f, g)
    if api:
        run_api(api, out, name)


def run_tiled(cli, out, d, name, vae, f, g):
    """Tiles smaller than the input, against the reference tiling; report tiled vs untiled."""
    # decoder: latent [1, 4, 20, 28], tiles of 8 latent cells overlapping by 4 (pixels: 8f, 4f)
    # and of 12 overlapping by 2 (uneven last tiles)
    z = g.standard_normal(size=(1, 4, 20, 28)).astype(np.float32)
    full = vae.decode(torch.from_numpy(z)).numpy()
    for t, ov in ((8, 4), (12, 2)):
        ref = tiled_ref(lambda zt: [vae.decode(zt)], torch.from_numpy(z), t, ov, 1, f)[0]
        got, err = cli_run(cli, out, "vae-decoder", {"latent": z}, d,
                           ["--tile", str(t * f), "--tile-overlap", str(ov * f)])
        what = "%s: tiled decoder [1,4,20,28] tile %d overlap %d px" % (name, t * f, ov * f)
        if err:
            fail("%s: %s" % (what, err))
            continue
        check(what + " vs reference tiling", got.get("sample"), ref)
        e = rel_err(got["sample"], full)
        line = "%s: tiled vs untiled rel L2 diff %.3g (documented; bound %g)" % (what, e, TILED_VS_UNTILED)
        if e < TILED_VS_UNTILED:
            print("ok   " + line)
        else:
            fail(line)
    # encoder: image [1, 3, 20f, 28f], tiles of 8 latent cells overlapping by 2
    x = g.uniform(-1, 1, size=(1, 3, 20 * f, 28 * f)).astype(np.float32)
    mean_full = vae.encode(torch.from_numpy(x))[0].numpy()
    t, ov = 8, 2
    ref = tiled_ref(lambda xt: encode_moments(vae, xt), torch.from_numpy(x), t, ov, f, 1, True)
    got, err = cli_run(cli, out, "vae-encoder", {"sample": x}, d,
                       ["--tile", str(t * f), "--tile-overlap", str(ov * f)])
    what = "%s: tiled encoder [1,3,%d,%d] tile %d overlap %d px" % (name, 20 * f, 28 * f, t * f, ov * f)
    if err:
        fail("%s: %s" % (what, err))
        return
    check(what + " mean vs reference tiling", got.get("mean"), ref[0])
    check(what + " logvar vs reference tiling", got.get("logvar"), ref[1])
    e = rel_err(got["mean"], mean_full)
    line = "%s: tiled vs untiled mean rel L2 diff %.3g (documented; bound %g)" % (what, e, TILED_VS_UNTILED)
    if e < TILED_VS_UNTILED:
        print("ok   " + line)
    else:
        fail(line)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cli", required=True)
    ap.add_argument("--bpe", help="unused (uniform test arguments)")
    ap.add_argument("--api", help="test_vae_api executable")
    ap.add_argument("--workdir")
    a = ap.parse_args()
    g = np.random.default_rng(3)
    torch.set_num_threads(2)

    def body(work):
        for kind in ("tiny-sd1", "tiny-sd2"):
            for layout in ("diffusers", "single-file"):
                for dtype in ("f32", "f16"):
                    first = layout == "diffusers" and dtype == "f32"
                    run_model(a.cli, work, kind, layout, dtype, g, tiled=first,
                              api=a.api if first else None)
        run_model(a.cli, work, "tiny-sd2", "single-file", "bf16", g)
    return harness.main("test_vae", a, body)


if __name__ == "__main__":
    sys.exit(main())
