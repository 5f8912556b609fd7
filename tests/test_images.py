#!/usr/bin/python3
# SPDX-License-Identifier: GPL-3.0-or-later
"""Image input of `dreambooth encode-image` (engine/cli/image_load.c), every kind the issue lists:

  test_images.py --cli PATH_TO_dreambooth --bpe bpe_simple_vocab_16e6.txt.gz [--workdir DIR]

Loaded kinds (RGB, grayscale, palette, 16-bit, RGBA, gray+alpha, float TIFF, RGB and CMYK JPEG,
a center-cropped resize) must give the expected [-1, 1] pixels in the 'image' tensor (--with-image;
tolerances per case below) and latents of the right shape; refused kinds (0x0, 1x1, truncated,
corrupt, garbage, 30000x30000) must exit 1 with exactly one stderr line naming the file, and the
huge image must be refused with bounded memory (peak RSS < 400 MiB). Images are written with PIL
(python3-pil) or, for the malformed ones, by hand with zlib.
"""
import argparse
import json
import os
import resource
import struct
import subprocess
import sys
import zlib

try:
    import numpy as np
    from PIL import Image
except ImportError as e:
    print("test_images: FAIL: needs /usr/bin/python3 with numpy and PIL (python3-pil): %s" % e)
    sys.exit(1)

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "reference"))
import harness  # noqa: E402  (work folder, exceptions, summary line, exit status)
FAILS = harness.FAILS


def read_st(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        hdr = json.loads(f.read(n))
        data = f.read()
    out = {}
    for k, v in hdr.items():
        if k == "__metadata__":
            continue
        a, b = v["data_offsets"]
        out[k] = np.frombuffer(data[a:b], dtype=np.float32).reshape(v["shape"])
    return out


def png_chunk(t, d):
    return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)


def raw_png(w, h, rows=None, color=0):
    """Gray 8-bit PNG by hand (any w, h, even 0): rows = iterable of row bytes."""
    ihdr = struct.pack(">IIBBBBB", w, h, 8, color, 0, 0, 0)
    co = zlib.compressobj(9)
    idat = b""
    for r in rows if rows is not None else (bytes(w) for _ in range(h)):
        idat += co.compress(b"\0" + r)
    idat += co.flush()
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def huge_png(path, w, h):
    """A w x h gray PNG of zero rows, streamed (a few MB on disk)."""
    co = zlib.compressobj(9)
    row = bytes(w + 1)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)))
        buf = []
        for _ in range(h):
            buf.append(co.compress(row))
        buf.append(co.flush())
        f.write(png_chunk(b"IDAT", b"".join(buf)))
        f.write(png_chunk(b"IEND", b""))


def run(cli, args):
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    p = subprocess.run([cli] + args, capture_output=True, text=True, timeout=300)
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KiB, max over children so far
    return p, peak if peak > before else None


def loaded(cli, model, work, name, path, expect, tol, size=None, mean_tol=None):
    out = os.path.join(work, name + ".latent.safetensors")
    args = ["encode-image", model, path, "--out", out, "--with-image"] + (["--size", size] if size else [])
    p, _ = run(cli, args)
    why = []
    if p.returncode != 0:
        why.append("exit %d: %s" % (p.returncode, p.stderr.strip()[:300]))
    else:
        t = read_st(out)
        img = t["image"][0]
        if img.shape != expect.shape:
            why.append("image shape %s, expected %s" % (img.shape, expect.shape))
        else:
            d = np.abs(img - expect)
            if d.max() > tol:
                why.append("max |diff| %.4g > %.4g" % (d.max(), tol))
            if mean_tol is not None and d.mean() > mean_tol:
                why.append("mean |diff| %.4g > %.4g" % (d.mean(), mean_tol))
        H, W = expect.shape[1:]
        for k in ("mean", "logvar", "latent"):
            s = t[k].shape if k in t else ()
            if len(s) != 4 or s[0] != 1 or H % s[2] or W % s[3] or H // s[2] != W // s[3] \
                    or not np.isfinite(t[k]).all():
                why.append("tensor %s missing, misshapen %s or not finite" % (k, s))
    print("%s %s" % ("FAIL" if why else "ok  ", name) + ("  <- " + "; ".join(why) if why else ""))
    if why:
        FAILS.append(name)


def refused(cli, model, work, name, path, words=(), max_rss_kib=None, size=None):
    out = os.path.join(work, name + ".latent.safetensors")
    if os.path.exists(out):
        os.remove(out)
    p, peak = run(cli, ["encode-image", model, path, "--out", out] + (["--size", size] if size else []))
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    why = []
    if p.returncode != 1:
        why.append("exit %d (want 1)" % p.returncode)
    if len(lines) != 1:
        why.append("%d stderr lines (want 1)" % len(lines))
    msg = " ".join(lines)
    if os.path.basename(path) not in msg:
        why.append("message does not name the file")
    for w in words:
        if w.lower() not in msg.lower():
            why.append("message lacks %r" % w)
    if max_rss_kib is not None and peak is not None and peak > max_rss_kib:
        why.append("peak RSS %d KiB > %d" % (peak, max_rss_kib))
    if os.path.exists(out):
        why.append("an output was written")
    print("%s %s: %s%s" % ("FAIL" if why else "ok  ", name, msg[:200],
                           ("  <- " + "; ".join(why)) if why else ""))
    if why:
        FAILS.append(name)


def to_pm1(rgb01):
    """[H, W, 3] in [0, 1] -> [3, H, W] in [-1, 1]"""
    return (rgb01.transpose(2, 0, 1) * 2.0 - 1.0).astype(np.float32)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cli", required=True)
    ap.add_argument("--bpe", required=True)
    ap.add_argument("--workdir")
    a = ap.parse_args()
    cli = a.cli

    def body(work):
        model = os.path.join(work, "tiny")
        p = subprocess.run([cli, "init-model", "--arch", "tiny-sd1", "--out", model, "--force", "-q",
                            "--tokenizer-from", a.bpe], capture_output=True, text=True, timeout=300)
        if p.returncode != 0:
            raise RuntimeError("init-model failed: " + p.stderr)
        rng = np.random.default_rng(3)
        H, W = 16, 24
        rgb = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
        f = os.path.join(work, "rgb.png")
        Image.fromarray(rgb).save(f)
        loaded(cli, model, work, "RGB 8-bit PNG", f, to_pm1(rgb / 255.0), 1e-6)

        g = rng.integers(0, 256, (H, W), dtype=np.uint8)
        f = os.path.join(work, "gray.png")
        Image.fromarray(g).save(f)
        loaded(cli, model, work, "grayscale PNG", f, to_pm1(np.repeat(g[..., None], 3, 2) / 255.0), 1e-6)

        pal = Image.fromarray(rgb).quantize(colors=16)
        f = os.path.join(work, "palette.png")
        pal.save(f)
        exp = np.asarray(pal.convert("RGB")) / 255.0
        loaded(cli, model, work, "indexed (palette) PNG", f, to_pm1(exp), 1e-6)

        g16 = rng.integers(0, 65536, (H, W), dtype=np.uint16)
        f = os.path.join(work, "gray16.png")
        Image.fromarray(g16, mode="I;16").save(f)
        loaded(cli, model, work, "16-bit grayscale PNG", f, to_pm1(np.repeat(g16[..., None], 3, 2) / 65535.0), 1e-5)

        rgba = rng.integers(0, 256, (H, W, 4), dtype=np.uint8)
        rgba[0, :, 3] = 0
        rgba[1, :, 3] = 255
        f = os.path.join(work, "rgba.png")
        Image.fromarray(rgba, "RGBA").save(f)
        al = rgba[..., 3:] / 255.0
        loaded(cli, model, work, "RGBA PNG (over white)", f, to_pm1(rgba[..., :3] / 255.0 * al + 1.0 - al), 1e-5)

        la = np.stack([g, rgba[..., 3]], 2)
        f = os.path.join(work, "la.png")
        Image.fromarray(la, "LA").save(f)
        al = la[..., 1:] / 255.0
        loaded(cli, model, work, "gray+alpha PNG", f, to_pm1(np.repeat(la[..., :1] / 255.0 * al + 1 - al, 3, 2)), 1e-5)

        fl = rng.random((H, W), dtype=np.float32)
        f = os.path.join(work, "float.tif")
        Image.fromarray(fl, mode="F").save(f)
        p, _ = run(cli, ["encode-image", model, f, "--out", os.path.join(work, "float.st"), "--with-image"])
        ok = p.returncode == 0 and read_st(os.path.join(work, "float.st"))["image"].shape == (1, 3, H, W)
        print("%s float TIFF loads (GEGL treats float TIFF as linear light: values not compared)%s"
              % ("ok  " if ok else "FAIL", "" if ok else ": " + p.stderr.strip()))
        if not ok:
            FAILS.append("float tiff")

        f = os.path.join(work, "rgb.jpg")
        Image.fromarray(rgb).save(f, quality=95)
        exp = np.asarray(Image.open(f).convert("RGB")) / 255.0
        loaded(cli, model, work, "RGB JPEG (vs PIL's decode)", f, to_pm1(exp), 0.1, mean_tol=0.02)

        f = os.path.join(work, "cmyk.jpg")
        Image.fromarray(rgb).convert("CMYK").save(f, quality=95)
        # babl's profile-less CMYK -> RGB is PIL's (1-C)(1-K) taken as linear light, so sRGB-encoded
        lin = np.asarray(Image.open(f).convert("RGB")) / 255.0
        exp = np.where(lin <= 0.0031308, 12.92 * lin, 1.055 * lin ** (1 / 2.4) - 0.055)
        loaded(cli, model, work, "CMYK JPEG (vs PIL's decode, sRGB-encoded)", f, to_pm1(exp), 0.1, mean_tol=0.02)

        # resize: 64x32 -> 16x16 = center 32x32 crop, shrunk 2x; the image is made of 2x2 blocks,
        # so a correctly placed crop and sample grid gives each block's value exactly
        big = rng.integers(0, 256, (32, 64, 3), dtype=np.uint8)
        big = np.repeat(np.repeat(big[::2, ::2], 2, 0), 2, 1)
        f = os.path.join(work, "wide.png")
        Image.fromarray(big).save(f)
        crop = big[:, 16:48].astype(np.float64).reshape(16, 2, 16, 2, 3).mean((1, 3)) / 255.0
        loaded(cli, model, work, "64x32 -> 16x16 center crop + resample", f, to_pm1(crop), 1e-5, size="16x16")

        # refused
        for name, data, words in (
            ("zero.png", raw_png(0, 0, rows=[]), ()),
            ("one.png", raw_png(1, 1), ("1x1",)),
            ("garbage.png", bytes((i * 37 + 5) % 256 for i in range(3000)), ()),
            ("empty.png", b"", ()),
        ):
            f = os.path.join(work, name)
            with open(f, "wb") as fh:
                fh.write(data)
            refused(cli, model, work, name, f, words)
        noise = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
        full = os.path.join(work, "noise.png")
        Image.fromarray(noise).save(full)
        d = open(full, "rb").read()
        for name, blob in (("truncated.png", d[: len(d) // 2]), ("truncated-end.png", d[: len(d) - 30]),
                           ("corrupt.png", d[:200] + bytes(b ^ 0x5A for b in d[200:400]) + d[400:])):
            f = os.path.join(work, name)
            with open(f, "wb") as fh:
                fh.write(blob)
            refused(cli, model, work, name, f)
        # a chunk whose length field runs far past the end (libpng under GEGL skipped it for
        # seconds, 1 KiB per empty read), and a file that ends cleanly before IEND
        sig = b"\x89PNG\r\n\x1a\n"
        ihdr = png_chunk(b"IHDR", struct.pack(">IIBBBBB", 16, 16, 8, 2, 0, 0, 0))
        for name, blob, words in (
                ("huge-chunk.png", sig + struct.pack(">I", 0x696E7075) + b"tIDR" + ihdr,
                 ("runs past the end",)),
                ("no-iend.png", d[: d.index(b"IEND") - 4], ("no IEND",))):
            f = os.path.join(work, name)
            with open(f, "wb") as fh:
                fh.write(blob)
            refused(cli, model, work, name, f, words)
        jf = os.path.join(work, "noise.jpg")
        Image.fromarray(noise).save(jf)
        d = open(jf, "rb").read()
        f = os.path.join(work, "truncated.jpg")
        with open(f, "wb") as fh:
            fh.write(d[: len(d) // 3])
        refused(cli, model, work, "truncated.jpg", f)
        refused(cli, model, work, "missing.png", os.path.join(work, "missing.png"))
        f = os.path.join(work, "huge.png")
        huge_png(f, 30000, 30000)
        refused(cli, model, work, "huge.png", f, ("30000x30000",), max_rss_kib=400 * 1024)
    return harness.main("test_images", a, body)


if __name__ == "__main__":
    sys.exit(main())
