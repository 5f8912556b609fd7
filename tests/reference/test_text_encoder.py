#!/usr/bin/python3
# SPDX-License-Identifier: GPL-3.0-or-later
"""The C CLIP tokenizer and text encoder against the PyTorch reference.

  test_text_encoder.py --cli PATH_TO_dreambooth --bpe bpe_simple_vocab_16e6.txt.gz [--workdir DIR]

For tiny-sd1 and tiny-sd2, diffusers folder and single file, F32 and F16 storage (plus an SD1
single file without the text_model. level, with position_ids, BF16):
  - `dreambooth tokenize MODEL PROMPT...` must print exactly the reference ids (tokenizer_ref.py;
    SD1 pads with 49407, SD2 with 0); single files get --tokenizer (the diffusers tokenizer/
    folder or the .gz);
  - `dreambooth forward MODEL --net text-encoder` on input_ids I64 [3,77] (the prompts' ids) and
    I32 [2,77] (random ids) must give last_hidden_state F32 [B,77,D] with relative L2 error
    ||c - ref|| / ||ref|| <= 1e-5 against the float32 reference computed from the stored
    (rounded) weights. For SD2 single files (one more OpenCLIP block) the reference is the
    diffusers model: the C side must drop the last block (penultimate-layer rule).
Also a self-check of the generators: an OpenCLIP-style forward over the SD2 single file's own
tensors (packed in_proj) equals the reference. Exit status 1 on any failure (also when torch
is missing).
"""
import argparse
import os
import subprocess
import sys

try:
    import numpy as np
    import torch
    import torch.nn.functional as F
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import make_model
    import st_io
    from harness import fail, rel_err
    import harness
    import tokenizer_ref
except ImportError as e:
    print("test_text_encoder: FAIL: cannot import the reference (%s); /usr/bin/python3 with torch is required" % e)
    sys.exit(1)

TOL = 1e-5  # relative L2 error of last_hidden_state, every case
PROMPTS = [
    "a photo of sks dog",
    "",
    "A PHOTO of  the Eiffel-tower's   top, at 3pm; caf\u00e9 &amp; cr\u00e8me br\u00fbl\u00e9e \U0001F415!! "
    + "and some more words to overflow the context " * 8,
]


_TOK = {}


def ref_ids(bpe, family, prompts):
    """77 ids per prompt: BOS, tokens, EOS, padding (SD1: EOS 49407; SD2: "!" = id 0)."""
    if bpe not in _TOK:
        _TOK[bpe] = tokenizer_ref.Tokenizer.from_bpe(bpe)
    pad = tokenizer_ref.EOS if family == "sd1" else 0
    return np.array([_TOK[bpe].encode_padded(p, pad)[0] for p in prompts], dtype=np.int64)


def cli_tokenize(cli, model, prompts, tok_opt):
    p = subprocess.run([cli, "tokenize", model] + prompts + tok_opt, capture_output=True, text=True,
                       timeout=120)
    if p.returncode != 0:
        return None, "exit %d: %s" % (p.returncode, p.stderr.strip())
    rows = [ln.split() for ln in p.stdout.splitlines() if ln.strip()]
    try:
        return np.array([[int(x) for x in r] for r in rows], dtype=np.int64), None
    except ValueError:
        return None, "unparsable output %r" % p.stdout[:200]


def cli_forward(cli, model, ids, dtype, tok_opt, work):
    outs, err = harness.run_net(cli, "forward", model, "text-encoder", {"input_ids": ids.astype(dtype)},
                                work, tok_opt, want_f32=("last_hidden_state",))
    return (outs["last_hidden_state"], None) if outs else (None, err)


def openclip_forward(path, ids, cfg):
    """SD2 single file: OpenCLIP semantics (nn.MultiheadAttention with the packed in_proj) over
    the file's own tensors, first num_hidden_layers resblocks, then ln_final."""
    t = {k: torch.from_numpy(v.astype(np.float32)) for k, v in st_io.load_file(path, as_f32=True).items()
         if k.startswith("cond_stage_model.model.")}
    p = "cond_stage_model.model."
    d, h = cfg["hidden_size"], cfg["num_attention_heads"]
    x = t[p + "token_embedding.weight"][torch.from_numpy(ids)] + t[p + "positional_embedding"]
    mask = torch.full((ids.shape[1], ids.shape[1]), float("-inf")).triu(1)
    for i in range(cfg["num_hidden_layers"]):
        r = p + "transformer.resblocks.%d." % i
        mha = torch.nn.MultiheadAttention(d, h, batch_first=True)
        mha.in_proj_weight.copy_(t[r + "attn.in_proj_weight"])
        mha.in_proj_bias.copy_(t[r + "attn.in_proj_bias"])
        mha.out_proj.weight.copy_(t[r + "attn.out_proj.weight"])
        mha.out_proj.bias.copy_(t[r + "attn.out_proj.bias"])
        y = F.layer_norm(x, (d,), t[r + "ln_1.weight"], t[r + "ln_1.bias"])
        x = x + mha(y, y, y, need_weights=False, attn_mask=mask)[0]
        y = F.layer_norm(x, (d,), t[r + "ln_2.weight"], t[r + "ln_2.bias"])
        y = F.gelu(F.linear(y, t[r + "mlp.c_fc.weight"], t[r + "mlp.c_fc.bias"]))
        x = x + F.linear(y, t[r + "mlp.c_proj.weight"], t[r + "mlp.c_proj.bias"])
    return F.layer_norm(x, (d,), t[p + "ln_final.weight"], t[p + "ln_final.bias"]).numpy()


def run_case(cli, bpe, work, kind, layout, dtype, tok_src, **opts):
    family = make_model.FAMILY[kind]
    name = "%s %s %s%s" % (kind, layout, dtype, "".join(" %s=%s" % kv for kv in sorted(opts.items())))
    d = os.path.join(work, "%s-%s-%s%s" % (kind, layout, dtype, "-var" if opts else ""))
    os.makedirs(d, exist_ok=True)
    out = os.path.join(d, "model" if layout == "diffusers" else "model.safetensors")
    # inferable configs in both layouts: one model, so both layouts must give the same result
    m = make_model.make_model(kind, layout, dtype, 7, out, bpe=bpe if layout == "diffusers" else None,
                              inferable=True, **opts)
    tok_opt = [] if layout == "diffusers" else ["--tokenizer", tok_src]
    ids = ref_ids(bpe, family, PROMPTS)
    got, err = cli_tokenize(cli, out, PROMPTS, tok_opt)
    if err:
        fail("%s: tokenize: %s" % (name, err))
    elif got.shape != ids.shape or not np.array_equal(got, ids):
        bad = [i for i in range(min(len(got), len(ids))) if not np.array_equal(got[i], ids[i])]
        fail("%s: tokenize: ids differ from the reference in prompt(s) %s (got shape %s): got %s want %s"
             % (name, bad, got.shape, got[bad[0]].tolist() if bad else None, ids[bad[0]].tolist() if bad else None))
    else:
        print("ok   %s: tokenize: %d prompts x 77 ids identical (pad %d)" % (name, len(PROMPTS), ids[1][-1]))
    if family == "sd2" and layout == "single-file":
        with torch.no_grad():
            ref = m.text_encoder(torch.from_numpy(ids)).numpy()
            e2 = rel_err(openclip_forward(out, ids, m.configs["text"]), ref)
        if e2 > 1e-5:
            fail("%s: self-check: OpenCLIP forward over the file differs from the reference: %.3g" % (name, e2))
        else:
            print("ok   %s: self-check: OpenCLIP forward over the file's first %d blocks = reference (%.3g)"
                  % (name, m.configs["text"]["num_hidden_layers"], e2))
    g = np.random.default_rng(11)
    inputs = [("I64 prompts", ids, np.int64),
              ("I32 random", g.integers(0, 49408, size=(2, 77)), np.int32)]
    with torch.no_grad():
        for what, x, npdt in inputs:
            ref = m.text_encoder(torch.from_numpy(x.astype(np.int64))).numpy()
            got, err = cli_forward(cli, out, x, npdt, tok_opt, d)
            if err:
                fail("%s: forward %s: %s" % (name, what, err))
                continue
            if got.shape != ref.shape:
                fail("%s: forward %s: shape %s, want %s" % (name, what, list(got.shape), list(ref.shape)))
                continue
            e = rel_err(got, ref)
            line = "%s: forward %s [%d,77,%d]: rel L2 err %.3g (tol %g)" % (name, what, ref.shape[0], ref.shape[2], e, TOL)
            if e <= TOL and np.isfinite(got).all():
                print("ok   " + line)
            else:
                fail(line)
    return m


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cli", required=True)
    ap.add_argument("--bpe", required=True)
    ap.add_argument("--workdir")
    a = ap.parse_args()
    if not os.path.exists(a.bpe):
        print("test_text_encoder: FAIL: missing fixture %s" % a.bpe)
        return 1

    def body(work):
        for kind in ("tiny-sd1", "tiny-sd2"):
            for dtype in ("f32", "f16"):
                dm = run_case(a.cli, a.bpe, work, kind, "diffusers", dtype, None)
                # single files: the diffusers tokenizer folder for F32, the .gz for F16
                tok = dm.tokenizer if dtype == "f32" else a.bpe
                run_case(a.cli, a.bpe, work, kind, "single-file", dtype, tok)
        run_case(a.cli, a.bpe, work, "tiny-sd1", "single-file", "bf16", a.bpe,
                 text_model_level=False, position_ids=True)
        run_case(a.cli, a.bpe, work, "tiny-sd2", "diffusers", "bf16", None, position_ids=True)
        # as diffusers' conversion script writes single files: SD2 keeps only diffusers' blocks
        for kind in ("tiny-sd1", "tiny-sd2"):
            run_case(a.cli, a.bpe, work, kind, "single-file", "f16", a.bpe, converted=True)
    return harness.main("test_text_encoder", a, body)


if __name__ == "__main__":
    sys.exit(main())
