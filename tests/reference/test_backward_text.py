#!/usr/bin/python3
# SPDX-License-Identifier: GPL-3.0-or-later
"""`dreambooth backward --net text-encoder` against PyTorch autograd.

  test_backward_text.py --cli PATH_TO_dreambooth [--workdir DIR]

For tiny-sd1 and tiny-sd2, diffusers folder and single file, F32 and F16 storage, with
input_ids I64 [2, 77] (random ids, repeated padding) and a random grad_output F32 [2, 77, D],
the loss being sum(last_hidden_state * grad_output):
  - full: --params '*': every parameter gradient (grad.<diffusers name>) against autograd of
    clip_text.CLIPTextModel in float64 over the stored (rounded) weights;
  - partial: --params 'text_model.encoder.layers.1.*,text_model.final_layer_norm.weight':
    exactly those gradients (the C side skips the layers below);
  - LoRA rank 4, alpha 8, targets attn (F32 models) and transformer (F16), nonzero --lora-init (PEFT names
    <module>.lora_A.weight [4, in], .lora_B.weight [out, 4]): the adapter gradients and the
    forward output, against a PEFT-like wrapper (y = base(x) + alpha/r * B(A(x)));
    the transformer case also trains layers.0.mlp.fc1.weight beside its adapter.
Tolerances, every tensor: relative L2 error ||c - ref|| / ||ref|| <= 1e-4 for gradients
(k_proj.bias, whose exact gradient is zero: ||c - ref|| / ||ref grad q_proj.bias|| <= 1e-4),
<= 1e-5 for last_hidden_state. Exit status 1 on any failure (also when torch is missing).
"""
import argparse
import copy
import os
import sys

try:
    import numpy as np
    import torch
    from torch import nn
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import make_model
    import st_io
    from harness import FAILS, fail, rel_err
    import harness
except ImportError as e:
    print("test_backward_text: FAIL: cannot import the reference (%s); /usr/bin/python3 with torch is required" % e)
    sys.exit(1)

TOL_GRAD = 1e-4
TOL_OUT = 1e-5
RANK, ALPHA = 4, 8.0
TARGETS = {"attn": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj"),
           "transformer": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                           "self_attn.out_proj", "mlp.fc1", "mlp.fc2")}


class LoraLinear(nn.Module):
    """PEFT lora.Linear: base(x) + scaling * lora_B(lora_A(x)), scaling = alpha / r."""

    def __init__(self, base, a, b, scaling):
        super().__init__()
        self.base = base
        self.lora_A = nn.Parameter(a)
        self.lora_B = nn.Parameter(b)
        self.scaling = scaling

    def forward(self, x):
        return self.base(x) + self.scaling * ((x @ self.lora_A.t()) @ self.lora_B.t())


def lora_modules(te, targets):
    """Module paths (canonical) of the adapted linears, in layer order."""
    n = len(te.text_model.encoder.layers)
    return ["text_model.encoder.layers.%d.%s" % (i, t) for i in range(n) for t in TARGETS[targets]]


def make_lora_init(te, targets, seed):
    g = np.random.default_rng(seed)
    init = {}
    for mod in lora_modules(te, targets):
        lin = te.get_submodule(mod)
        fin, fout = lin.in_features, lin.out_features
        init[mod + ".lora_A.weight"] = g.uniform(-1, 1, (RANK, fin)).astype(np.float32) / np.sqrt(fin)
        init[mod + ".lora_B.weight"] = (0.05 * g.standard_normal((fout, RANK))).astype(np.float32)
    return init


def reference(te, ids, go, train=None, lora=None):
    """float64 autograd of sum(te(ids) * go). train: names of trained base parameters (None =
    all); lora: {module: (A, B)} adapters to wrap. -> (output, {grad name: array})."""
    m = copy.deepcopy(te).double()
    for p in m.parameters():
        p.requires_grad_(False)
    params = dict(m.named_parameters())
    trained = list(params) if train is None else list(train)
    for name in trained:
        params[name].requires_grad_(True)
    wrapped = {}
    for mod, (a, b) in (lora or {}).items():
        parent, child = mod.rsplit(".", 1)
        pm = m.get_submodule(parent)
        w = LoraLinear(getattr(pm, child), torch.from_numpy(a).double(), torch.from_numpy(b).double(),
                       ALPHA / RANK)
        setattr(pm, child, w)
        wrapped[mod] = w
    out = m(torch.from_numpy(ids))
    (out * torch.from_numpy(go).double()).sum().backward()
    grads = {"grad." + n: params[n].grad.numpy() for n in trained}
    for mod, w in wrapped.items():
        grads["grad.%s.lora_A.weight" % mod] = w.lora_A.grad.numpy()
        grads["grad.%s.lora_B.weight" % mod] = w.lora_B.grad.numpy()
    return out.detach().numpy(), grads


def cli_backward(cli, model, work, tag, ids, go, extra):
    return harness.run_net(cli, "backward", model, "text-encoder", {"input_ids": ids, "grad_output": go},
                           work, extra, tag="-" + tag)


def compare(name, got, ref_out, ref_grads):
    """Every gradient within TOL_GRAD (relative L2). k_proj.bias is the exception: its exact
    gradient is zero (softmax is invariant to adding q.b_k to every score of a row), so the
    reference holds only rounding noise; its error is measured against the norm of the same
    layer's q_proj.bias gradient instead (the C side takes that one from the full model)."""
    if got is None:
        return
    bad = sorted(set(ref_grads) ^ {k for k in got if k.startswith("grad.")})
    if bad:
        fail("%s: gradient names differ from the reference: %s" % (name, bad[:6]))
        return
    n_fail = len(FAILS)
    e_out = rel_err(got["last_hidden_state"], ref_out)
    worst, worst_name = 0.0, None
    for k, ref in ref_grads.items():
        g = got[k]
        if g.shape != ref.shape or g.dtype != np.float32:
            fail("%s: %s is %s %s, want float32 %s" % (name, k, g.dtype, g.shape, ref.shape))
            return
        if k.endswith("self_attn.k_proj.bias"):
            qb = k.replace("k_proj.bias", "q_proj.bias")
            scale = np.linalg.norm(ref_grads[qb]) if qb in ref_grads else 1.0
            e = float(np.linalg.norm(np.float64(g) - ref) / scale)
        else:
            e = rel_err(g, ref)
        if not np.isfinite(g).all() or not e <= TOL_GRAD:
            fail("%s: %s rel L2 err %.3g (tol %g)" % (name, k, e, TOL_GRAD))
        if e > worst or worst_name is None:
            worst, worst_name = e, k
    line = "%s: %d gradients, worst rel L2 err %.3g (%s; tol %g); output %.3g (tol %g)" % (
        name, len(ref_grads), worst, worst_name, TOL_GRAD, e_out, TOL_OUT)
    if e_out > TOL_OUT:
        fail(line)
    elif len(FAILS) == n_fail:
        print("ok   " + line)


def run_case(cli, work, kind, layout, dtype):
    name = "%s %s %s" % (kind, layout, dtype)
    d = os.path.join(work, "%s-%s-%s" % (kind, layout, dtype))
    os.makedirs(d, exist_ok=True)
    path = os.path.join(d, "model" if layout == "diffusers" else "model.safetensors")
    m = make_model.make_model(kind, layout, dtype, 5, path, inferable=True, nets=("text",))
    te = m.text_encoder
    D = m.configs["text"]["hidden_size"]
    g = np.random.default_rng(17)
    ids = g.integers(0, m.configs["text"]["vocab_size"], size=(2, 77)).astype(np.int64)
    ids[:, 0], ids[:, 40:] = 49406, 49407  # BOS and repeated padding rows
    go = g.standard_normal((2, 77, D)).astype(np.float32)

    got, err = cli_backward(cli, path, d, "full", ids, go, ["--params", "*"])
    if err:
        fail("%s full: %s" % (name, err))
    else:
        compare(name + " full", got, *reference(te, ids, go))

    sel = [n for n, _ in te.named_parameters()
           if n.startswith("text_model.encoder.layers.1.") or n == "text_model.final_layer_norm.weight"]
    got, err = cli_backward(cli, path, d, "part", ids, go,
                            ["--params", "text_model.encoder.layers.1.*,text_model.final_layer_norm.weight"])
    if err:
        fail("%s partial: %s" % (name, err))
    else:
        compare(name + " partial", got, *reference(te, ids, go, train=sel))

    # LoRA: attn on F32 storage, transformer (plus one trained base weight) on F16
    for targets in ("attn",) if dtype == "f32" else ("transformer",):
        init = make_lora_init(te, targets, 23)
        init_path = os.path.join(d, "lora-%s.safetensors" % targets)
        # PEFT prefixes the text encoder's keys: the CLI takes both forms
        st_io.save_file({("text_encoder." if targets == "attn" else "") + k: v for k, v in init.items()},
                        init_path)
        lora = {mod: (init[mod + ".lora_A.weight"], init[mod + ".lora_B.weight"])
                for mod in lora_modules(te, targets)}
        extra = ["--lora", "%d:%g:%s" % (RANK, ALPHA, targets), "--lora-init", init_path]
        train = []
        if targets == "transformer":
            extra += ["--params", "text_model.encoder.layers.0.mlp.fc1.weight"]
            train = ["text_model.encoder.layers.0.mlp.fc1.weight"]
        got, err = cli_backward(cli, path, d, "lora-" + targets, ids, go, extra)
        if err:
            fail("%s lora %s: %s" % (name, targets, err))
        else:
            compare("%s lora %s" % (name, targets), got, *reference(te, ids, go, train=train, lora=lora))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cli", required=True)
    ap.add_argument("--workdir")
    a = ap.parse_args()
    torch.set_num_threads(2)

    def body(work):
        for kind in ("tiny-sd1", "tiny-sd2"):
            for layout in ("diffusers", "single-file"):
                for dtype in ("f32", "f16"):
                    run_case(a.cli, work, kind, layout, dtype)
    return harness.main("test_backward_text", a, body)


if __name__ == "__main__":
    sys.exit(main())
