# SPDX-License-Identifier: GPL-3.0-or-later
"""What the reference tests share: the failure list, relative error, running one network of
the CLI on a safetensors file of inputs, and the main loop (work folder, exceptions count as
failures, one summary line, exit status 1 on any failure)."""
import os
import shutil
import subprocess
import tempfile
import traceback

import numpy as np

import st_io

FAILS = []


def fail(what):
    FAILS.append(what)
    print("FAIL " + what)


def rel_err(got, ref):
    """||got - ref|| / ||ref|| in float64 (relative L2)."""
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    return float(np.linalg.norm(got - ref) / max(np.linalg.norm(ref), 1e-30))


def run_net(cli, command, model, net, inputs, work, extra=(), tag="", timeout=600, want_f32=()):
    """`dreambooth COMMAND MODEL --net NET` (forward or backward) on inputs (name -> array,
    saved with their dtypes) -> (outputs dict, None), or (None, "exit N: stderr"), or
    (None, "output has no F32 x") when an output named in want_f32 is missing or not F32."""
    inp = os.path.join(work, "in%s.safetensors" % tag)
    out = os.path.join(work, "out%s.safetensors" % tag)
    if os.path.exists(out):
        os.remove(out)
    st_io.save_file(inputs, inp)
    p = subprocess.run([cli, command, model, "--net", net, "--in", inp, "--out", out] + list(extra),
                       capture_output=True, text=True, timeout=timeout)
    if p.returncode != 0:
        return None, "exit %d: %s" % (p.returncode, p.stderr.strip())
    hdr, _, _ = st_io.read_header(out)
    for name in want_f32:
        if hdr.get(name, {}).get("dtype") != "F32":
            return None, "output has no F32 %s: %s" % (name, {k: v["dtype"] for k, v in hdr.items()})
    return st_io.load_file(out), None


def main(name, args, body):
    """Runs body(work) in args.workdir (kept) or a temporary folder (removed); checks that
    args.cli is executable first. Returns the exit status."""
    if not os.access(args.cli, os.X_OK):
        print("%s: FAIL: %s is not an executable" % (name, args.cli))
        return 1
    work = args.workdir or tempfile.mkdtemp(prefix=name + "-")
    os.makedirs(work, exist_ok=True)
    try:
        body(work)
    except Exception as ex:
        traceback.print_exc()
        FAILS.append("exception: %s" % ex)
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    print("%s: %s (%d failure(s))" % (name, "FAIL" if FAILS else "PASS", len(FAILS)))
    return 1 if FAILS else 0
