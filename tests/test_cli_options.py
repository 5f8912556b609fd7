#!/usr/bin/python3
# SPDX-License-Identifier: GPL-3.0-or-later
"""Bad options across every CLI command, and disk-full output:

  test_cli_options.py --cli PATH_TO_dreambooth --bpe bpe_simple_vocab_16e6.txt.gz [--workdir DIR]

1. A table of bad invocations of info, tokenize, forward, backward, init-model, generate and
   encode-image: each must exit with the listed status (2 usage, 1 refused), print exactly one
   stderr line (naming the option or file where listed) and never die by a signal.
2. Disk full (RLIMIT_FSIZE in the child: write() fails with EFBIG): forward --out, generate --out
   and init-model (single file and diffusers folder, --force) must fail with one line saying what
   happened, and the previous file or folder must survive byte for byte.
"""
import argparse
import hashlib
import json
import os
import resource
import struct
import subprocess
import sys
import zlib

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "reference"))
import harness  # noqa: E402  (work folder, exceptions, summary line, exit status)
FAILS = harness.FAILS


def st_write(path, tensors):
    """tensors: name -> (dtype, shape, bytes)"""
    hdr, off, blobs = {}, 0, []
    for k, (dt, shape, data) in tensors.items():
        hdr[k] = {"dtype": dt, "shape": shape, "data_offsets": [off, off + len(data)]}
        off += len(data)
        blobs.append(data)
    h = json.dumps(hdr).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def check(name, p, want_rc, words=()):
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    why = []
    if p.returncode < 0:
        why.append("killed by signal %d" % -p.returncode)
    elif p.returncode not in want_rc:
        why.append("exit %d (want %s)" % (p.returncode, "/".join(map(str, want_rc))))
    if len(lines) != 1:
        why.append("%d stderr lines (want 1)" % len(lines))
    msg = " ".join(lines)
    for w in words:
        if w.lower() not in msg.lower():
            why.append("message lacks %r" % w)
    print("%s %s: exit %d: %s%s" % ("FAIL" if why else "ok  ", name, p.returncode, msg[:220],
                                     ("  <- " + "; ".join(why)) if why else ""))
    if why:
        FAILS.append(name)
    return msg


def run(cli, args, fsize=None, env=None):
    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
    return subprocess.run([cli] + args, capture_output=True, timeout=300,
                          preexec_fn=limit if fsize else None, env=env,
                          text=True, errors="replace")


def digest(path):
    h = hashlib.sha256()
    if os.path.isdir(path):
        for root, dirs, files in sorted(os.walk(path)):
            dirs.sort()
            for f in sorted(files):
                p = os.path.join(root, f)
                h.update(p[len(path):].encode())
                h.update(open(p, "rb").read())
    else:
        h.update(open(path, "rb").read())
    return h.hexdigest()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cli", required=True)
    ap.add_argument("--bpe", required=True)
    ap.add_argument("--workdir")
    a = ap.parse_args()
    cli = a.cli

    def body(work):
        M = os.path.join(work, "tiny")
        p = run(cli, ["init-model", "--arch", "tiny-sd1", "--out", M, "--force", "-q", "--tokenizer-from", a.bpe])
        if p.returncode != 0:
            raise RuntimeError("init-model failed: " + p.stderr)
        ids = os.path.join(work, "ids.safetensors")
        st_write(ids, {"input_ids": ("I64", [1, 77], struct.pack("<77q", 49406, *([49407] * 76)))})
        img = os.path.join(work, "img.png")
        with open(img, "wb") as f:  # 16x16 gray PNG by hand
            chunk = lambda t, d: struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))
            f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 16, 16, 8, 0, 0, 0, 0))
                    + chunk(b"IDAT", zlib.compress(b"".join(b"\0" + bytes(range(16)) for _ in range(16))))
                    + chunk(b"IEND", b""))
        out = os.path.join(work, "out.safetensors")
        png = os.path.join(work, "out.png")
        bad_utf8 = "a \udcff photo"  # surrogateescape: the raw byte 0xff on the command line
        U, F, UF = (2,), (1,), (1, 2)
        table = [
            # (name, args, exit statuses, words the message must hold)
            ("unknown command", ["frobnicate"], U, ("frobnicate",)),
            ("info: no model", ["info"], U, ()),
            ("info: missing model", ["info", os.path.join(work, "nope")], F, ("nope",)),
            ("info: --threads 0", ["info", M, "--threads", "0"], UF, ("--threads", "1..1024")),
            ("info: --threads -3", ["info", M, "--threads", "-3"], UF, ("--threads",)),
            ("info: --threads abc", ["info", M, "--threads", "abc"], U, ("threads",)),
            ("info: --prediction x", ["info", M, "--prediction", "x"], UF, ("--prediction",)),
            ("info: --weight-cache most", ["info", M, "--weight-cache", "most"], UF,
             ("--weight-cache", "auto, none or all")),
            ("info: unknown option", ["info", M, "--bogus"], U, ("bogus",)),
            ("tokenize: no prompt", ["tokenize", M], U, ()),
            ("tokenize: invalid UTF-8", ["tokenize", M, bad_utf8], F, ("UTF-8",)),
            ("forward: no --net", ["forward", M, "--in", ids, "--out", out], U, ()),
            ("forward: unknown net", ["forward", M, "--net", "bogus", "--in", ids, "--out", out], U, ("bogus",)),
            ("forward: missing input", ["forward", M, "--net", "text-encoder", "--in", os.path.join(work, "no.st"),
                                        "--out", out], F, ("no.st",)),
            ("forward: input not safetensors", ["forward", M, "--net", "unet", "--in", img, "--out", out], F, ("img.png",)),
            ("forward: wrong input tensor", ["forward", M, "--net", "unet", "--in", ids, "--out", out], F, ("sample",)),
            ("forward: --threads 0", ["forward", M, "--net", "text-encoder", "--in", ids, "--out", out,
                                      "--threads", "0"], UF, ("--threads",)),
            ("backward: no args", ["backward", M], U, ()),
            ("backward: unknown net", ["backward", M, "--net", "bogus", "--in", ids, "--out", out], UF, ("bogus",)),
            ("init-model: no --arch", ["init-model", "--out", os.path.join(work, "x")], U, ()),
            ("init-model: unknown arch", ["init-model", "--arch", "sdxl", "--out", os.path.join(work, "x")], UF, ("sdxl",)),
            ("init-model: unknown dtype", ["init-model", "--arch", "tiny-sd1", "--dtype", "f8",
                                           "--out", os.path.join(work, "x")], UF, ("f8",)),
            ("init-model: unknown layout", ["init-model", "--arch", "tiny-sd1", "--layout", "ckpt",
                                            "--out", os.path.join(work, "x")], UF, ("ckpt",)),
            ("init-model: negative seed", ["init-model", "--arch", "tiny-sd1", "--seed", "-1",
                                           "--out", os.path.join(work, "x")], UF, ("seed",)),
            ("init-model: exists", ["init-model", "--arch", "tiny-sd1", "--out", M], UF, ("tiny",)),
        ]
        gen = ["generate", M, "--prompt", "a photo", "--out", png]
        for name, extra, rc, words in (
            ("steps 0", ["--steps", "0"], U, ("--steps", "1..1000")),
            ("steps 1001", ["--steps", "1001"], U, ("--steps",)),
            ("negative cfg", ["--cfg", "-1"], U, ("--cfg", "0..100")),
            ("cfg nan", ["--cfg", "nan"], U, ("--cfg",)),
            ("eta 2", ["--eta", "2"], U, ("--eta",)),
            ("count 0", ["--count", "0"], U, ("--count",)),
            ("width 99", ["--width", "99"], U, ("99",)),
            ("width 0", ["--width", "0"], U, ("--width",)),
            ("height 99999", ["--height", "99999"], U, ("--width/--height",)),
            ("unknown sampler", ["--sampler", "plms"], U, ("plms", "ddim")),
            ("seed abc", ["--seed", "abc"], U, ("--seed",)),
            ("seed -1", ["--seed", "-1"], U, ("--seed",)),
            ("threads 0", ["--threads", "0"], UF, ("--threads",)),
            ("invalid UTF-8 prompt", ["--prompt", bad_utf8], U, ("--prompt", "UTF-8")),
            ("invalid UTF-8 negative", ["--negative", bad_utf8], U, ("--negative", "UTF-8")),
            ("unknown LoRA", ["--lora", os.path.join(work, "nolora.safetensors")], F, ("nolora",)),
        ):
            table.append(("generate: " + name, gen + extra, rc, words))
        table.append(("generate: no --out", ["generate", M, "--prompt", "x"], U, ("--out",)))
        enc = ["encode-image", M, img, "--out", out]
        for name, extra, rc, words in (
            ("size 100x100", ["--size", "100x100"], U, ("--size", "multiples of 8")),
            ("size 0x0", ["--size", "0x0"], U, ("--size",)),
            ("size abc", ["--size", "abc"], U, ("--size",)),
            ("size 8192x8", ["--size", "8192x8"], U, ("--size",)),
            ("tile -5", ["--tile", "-5"], U, ("--tile",)),
            ("threads 0", ["--threads", "0"], UF, ("--threads",)),
        ):
            table.append(("encode-image: " + name, enc + extra, rc, words))
        table.append(("encode-image: no --out", ["encode-image", M, img], U, ()))
        table.append(("encode-image: missing image", ["encode-image", M, os.path.join(work, "no.png"), "--out", out],
                      F, ("no.png",)))
        env = dict(os.environ, LC_ALL="C.UTF-8")
        for name, args, rc, words in table:
            args = [x.encode("utf-8", "surrogateescape") if isinstance(x, str) else x for x in args]
            p = subprocess.run([cli.encode()] + args, capture_output=True, timeout=300, env=env)
            p.stderr = p.stderr.decode("utf-8", "replace")
            check(name, p, rc, words)
        print("option cases: %d" % len(table))

        # memory estimate: refused with "needs X GiB, Y GiB available" unless --force
        low = dict(os.environ, DREAMBOOTH_MEM_AVAILABLE=str(1 << 20))
        for name, args in (("generate", gen + ["--steps", "1"]),
                           ("forward", ["forward", M, "--net", "text-encoder", "--in", ids, "--out", out]),
                           ("encode-image", enc)):
            p = run(cli, args, env=low)
            check("memory: %s refused" % name, p, F, ("needs", "GiB available", "--force"))
            p = run(cli, args + ["--force"], env=low)
            if p.returncode != 0:
                FAILS.append("memory: %s --force" % name)
                print("FAIL memory: %s --force: exit %d: %s" % (name, p.returncode, p.stderr.strip()[:200]))
            else:
                print("ok   memory: %s --force runs" % name)

        # disk full: the old output survives, one line says what happened
        fwd_out = os.path.join(work, "fwd.safetensors")
        p = run(cli, ["forward", M, "--net", "text-encoder", "--in", ids, "--out", fwd_out])
        png_out = os.path.join(work, "old.png")
        p2 = run(cli, ["generate", M, "--prompt", "a", "--steps", "1", "--seed", "1", "--out", png_out])
        single = os.path.join(work, "single.safetensors")
        p3 = run(cli, ["init-model", "--arch", "tiny-sd1", "--layout", "single-file", "--out", single, "-q"])
        if p.returncode or p2.returncode or p3.returncode:
            raise RuntimeError("the first outputs failed: %s %s %s" % (p.stderr, p2.stderr, p3.stderr))
        full = [
            ("forward --out", ["forward", M, "--net", "text-encoder", "--in", ids, "--out", fwd_out], fwd_out, 2048),
            ("generate --out FILE.png", ["generate", M, "--prompt", "b", "--steps", "1", "--seed", "2",
                                         "--out", png_out], png_out, 300),
            ("init-model single file --force", ["init-model", "--arch", "tiny-sd1", "--layout", "single-file",
                                                "--seed", "3", "--out", single, "--force", "-q"], single, 1 << 20),
            ("init-model diffusers --force", ["init-model", "--arch", "tiny-sd1", "--seed", "3", "--out", M,
                                              "--force", "-q", "--tokenizer-from", a.bpe], M, 1 << 20),
        ]
        for name, args, target, lim in full:
            before = digest(target)
            p = run(cli, args, fsize=lim)
            check("disk full: " + name, p, F, ())
            msg = p.stderr.lower()
            if not any(w in msg for w in ("too large", "no space", "disk", "full", "efbig", "write")):
                FAILS.append("disk full message: " + name)
                print("FAIL disk full: %s: the message does not say the write failed" % name)
            if digest(target) != before:
                FAILS.append("disk full kept: " + name)
                print("FAIL disk full: %s: %s changed" % (name, target))
            leftovers = [f for f in os.listdir(os.path.dirname(target)) if ".tmp" in f]
            if leftovers:
                FAILS.append("disk full temp: " + name)
                print("FAIL disk full: %s: temp files left: %s" % (name, leftovers))
    return harness.main("test_cli_options", a, body)


if __name__ == "__main__":
    sys.exit(main())
