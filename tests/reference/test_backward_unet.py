#!/usr/bin/python3
# SPDX-License-Identifier: GPL-3.0-or-later
"""`dreambooth backward --net unet` against PyTorch autograd.

  test_backward_unet.py --cli PATH_TO_dreambooth [--workdir DIR]

Inputs: sample F32 [2, 4, 8, 8], timestep I64 [2], encoder_hidden_states F32 [2, 7, X] and a
random grad_output F32 [2, 4, 8, 8]; the loss is sum(unet(...) * grad_output).
  - full (--params '*'): every parameter gradient (grad.<diffusers name>), grad.sample and
    grad.encoder_hidden_states against autograd of sd_unet.UNet2DConditionModel in float64
    over the stored (rounded) weights: tiny-sd1 diffusers F32, tiny-sd1 single-file F16,
    tiny-sd2 diffusers F16, tiny-sd2 single-file F32 (both proj_in forms: 1x1 conv, Linear);
    the first case also with --no-checkpointing, whose gradients must equal the checkpointed
    ones within relative L2 1e-6;
  - LoRA rank 4, alpha 8, targets attn (tiny-sd1 F32), transformer (tiny-sd2 F16), conv
    (tiny-sd1 single-file F16), nonzero --lora-init (PEFT names <module>.lora_A.weight /
    .lora_B.weight; convs down [4, C, k, k], up [O, 4, 1, 1]): the adapter gradients and the
    input gradients against a PEFT-like wrapper y = base(x) + alpha/r * B(A(x)).
Tolerances, every tensor: relative L2 error ||c - ref|| / ||ref|| <= 1e-4 for gradients
(attn1/attn2 to_k weights: see compare), <= 1e-5 for the output. Exit status 1 on any failure.
"""
import argparse
import copy
import os
import sys

try:
    import numpy as np
    import torch
    from torch import nn
    import torch.nn.functional as F
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import make_model
    import st_io
    from harness import FAILS, fail, rel_err
    import harness
except ImportError as e:
    print("test_backward_unet: FAIL: cannot import the reference (%s); /usr/bin/python3 with torch is required" % e)
    sys.exit(1)

TOL_GRAD = 1e-4
TOL_OUT = 1e-5
TOL_CKPT = 1e-6
RANK, ALPHA = 4, 8.0


class LoraLayer(nn.Module):
    """PEFT lora.Linear / lora.Conv2d: base(x) + scaling * B(A(x)); for a conv, A is a conv with
    the base's kernel, stride and padding, B a 1x1 conv."""

    def __init__(self, base, a, b, scaling):
        super().__init__()
        self.base, self.scaling = base, scaling
        self.lora_A = nn.Parameter(a)
        self.lora_B = nn.Parameter(b)

    def forward(self, x):
        if isinstance(self.base, nn.Conv2d):
            h = F.conv2d(x, self.lora_A, None, self.base.stride, self.base.padding)
            return self.base(x) + self.scaling * F.conv2d(h, self.lora_B)
        return self.base(x) + self.scaling * ((x @ self.lora_A.t()) @ self.lora_B.t())


def lora_targeted(name, mod, targets):
    """train_params.c lora_targeted for the UNet."""
    if not isinstance(mod, (nn.Linear, nn.Conv2d)):
        return False
    one = isinstance(mod, nn.Linear) or mod.kernel_size == (1, 1)
    if ".attentions." in name or name.startswith("mid_block.attentions"):
        if name.endswith((".to_q", ".to_k", ".to_v", ".to_out.0")):
            return True
        return targets in ("transformer", "conv") and one
    return targets == "conv" and any(s in name for s in (".resnets.", ".downsamplers.", ".upsamplers."))


def make_lora_init(unet, targets, seed):
    g = np.random.default_rng(seed)
    init = {}
    for name, mod in unet.named_modules():
        if not lora_targeted(name, mod, targets):
            continue
        w = mod.weight
        if w.dim() == 4:
            a_shape, b_shape = (RANK,) + tuple(w.shape[1:]), (w.shape[0], RANK, 1, 1)
        else:
            a_shape, b_shape = (RANK, w.shape[1]), (w.shape[0], RANK)
        fan = int(np.prod(a_shape[1:]))
        init[name + ".lora_A.weight"] = (g.uniform(-1, 1, a_shape) / np.sqrt(fan)).astype(np.float32)
        init[name + ".lora_B.weight"] = (0.05 * g.standard_normal(b_shape)).astype(np.float32)
    return init


def reference(unet, inputs, go, train_all, lora=None):
    """float64 autograd of sum(unet(...) * go) -> (output, {grad name: array})."""
    m = copy.deepcopy(unet).double()
    for p in m.parameters():
        p.requires_grad_(train_all)
    params = dict(m.named_parameters())
    wrapped = {}
    for mod, (a, b) in sorted((lora or {}).items()):
        parent, child = mod.rsplit(".", 1)
        pm = m.get_submodule(parent)
        w = LoraLayer(getattr(pm, child), torch.from_numpy(a).double(), torch.from_numpy(b).double(),
                      ALPHA / RANK)
        setattr(pm, child, w)
        wrapped[mod] = w
    x = torch.from_numpy(inputs["sample"]).double().requires_grad_(True)
    ctx = torch.from_numpy(inputs["encoder_hidden_states"]).double().requires_grad_(True)
    out = m(x, torch.from_numpy(inputs["timestep"]), ctx)
    (out * torch.from_numpy(go).double()).sum().backward()
    grads = {"grad.sample": x.grad.numpy(), "grad.encoder_hidden_states": ctx.grad.numpy()}
    if train_all:
        grads.update({"grad." + n: p.grad.numpy() for n, p in params.items()})
    for mod, w in wrapped.items():
        grads["grad.%s.lora_A.weight" % mod] = w.lora_A.grad.numpy()
        grads["grad.%s.lora_B.weight" % mod] = w.lora_B.grad.numpy()
    return out.detach().numpy(), grads


def cli_backward(cli, model, work, tag, inputs, go, extra):
    return harness.run_net(cli, "backward", model, "unet", dict(inputs, grad_output=go), work, extra,
                           tag="-" + tag)


def block_of(k):
    """'grad.up_blocks.1.resnets.2.conv1.bias' -> 'up_blocks.1.resnets.2' (the block)."""
    parts = k[len("grad."):].split(".")
    n = 4 if parts[0] in ("down_blocks", "up_blocks") else 3 if parts[0] == "mid_block" else 1
    return ".".join(parts[:n])


def compare(name, got, ref_out, ref_grads):
    """Every gradient within TOL_GRAD (relative L2), with two structural exceptions whose
    exact gradient (partly) cancels, so that the reference holds rounding noise:
      - attn1/attn2 to_k: softmax is invariant to adding one vector to every key of a row;
        measured against the norm of the same layer's to_q gradient when that is larger;
      - a gradient whose reference norm is below 1e-6 x the largest gradient norm of its
        block (tiny-sd1 has one channel per GroupNorm group: any per-channel constant added
        before a GroupNorm, e.g. conv1.bias, time_emb_proj, cancels exactly): measured
        against that largest norm."""
    block_max = {}
    for k, ref in ref_grads.items():
        b = block_of(k)
        block_max[b] = max(block_max.get(b, 0.0), float(np.linalg.norm(ref)))
    if got is None:
        return
    bad = sorted(set(ref_grads) ^ {k for k in got if k.startswith("grad.")})
    if bad:
        fail("%s: gradient names differ from the reference: %s" % (name, bad[:6]))
        return
    n_fail = len(FAILS)
    e_out = rel_err(got["sample"], ref_out)
    worst, worst_name = 0.0, None
    for k, ref in ref_grads.items():
        g = got[k]
        if g.shape != ref.shape or g.dtype != np.float32:
            fail("%s: %s is %s %s, want float32 %s" % (name, k, g.dtype, g.shape, ref.shape))
            return
        scale = np.linalg.norm(ref)
        qk = k.replace(".to_k.", ".to_q.")
        if qk != k and qk in ref_grads:
            scale = max(scale, np.linalg.norm(ref_grads[qk]))
        if scale < 1e-6 * block_max[block_of(k)]:
            scale = block_max[block_of(k)]
        e = float(np.linalg.norm(np.float64(g) - ref) / max(scale, 1e-30))
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


def run_case(cli, work, kind, layout, dtype, loras, ckpt_check):
    name = "%s %s %s" % (kind, layout, dtype)
    d = os.path.join(work, "%s-%s-%s" % (kind, layout, dtype))
    os.makedirs(d, exist_ok=True)
    path = os.path.join(d, "model" if layout == "diffusers" else "model.safetensors")
    m = make_model.make_model(kind, layout, dtype, 7, path, inferable=True, nets=("unet",))
    unet = m.unet
    X = m.configs["unet"]["cross_attention_dim"]
    g = np.random.default_rng(31)
    inputs = {"sample": g.standard_normal((2, 4, 8, 8)).astype(np.float32),
              "timestep": np.array([981, 17], np.int64),
              "encoder_hidden_states": g.standard_normal((2, 7, X)).astype(np.float32)}
    go = g.standard_normal((2, 4, 8, 8)).astype(np.float32)

    got, err = cli_backward(cli, path, d, "full", inputs, go, ["--params", "*"])
    if err:
        fail("%s full: %s" % (name, err))
    else:
        compare(name + " full", got, *reference(unet, inputs, go, True))
    if ckpt_check and got is not None:
        got2, err = cli_backward(cli, path, d, "full-nockpt", inputs, go,
                                 ["--params", "*", "--no-checkpointing"])
        if err:
            fail("%s --no-checkpointing: %s" % (name, err))
        else:
            worst = max(rel_err(got2[k], got[k]) for k in got)
            line = "%s: checkpointing on vs off: worst rel L2 diff %.3g over %d tensors (tol %g)" % (
                name, worst, len(got), TOL_CKPT)
            (print("ok   " + line) if worst <= TOL_CKPT else fail(line))

    for targets in loras:
        init = make_lora_init(unet, targets, 23)
        init_path = os.path.join(d, "lora-%s.safetensors" % targets)
        st_io.save_file({"unet." + k: v for k, v in init.items()}, init_path)
        mods = sorted({k.rsplit(".lora_", 1)[0] for k in init})
        lora = {mod: (init[mod + ".lora_A.weight"], init[mod + ".lora_B.weight"]) for mod in mods}
        extra = ["--lora", "%d:%g:%s" % (RANK, ALPHA, targets), "--lora-init", init_path]
        got, err = cli_backward(cli, path, d, "lora-" + targets, inputs, go, extra)
        if err:
            fail("%s lora %s: %s" % (name, targets, err))
        else:
            compare("%s lora %s (%d adapters)" % (name, targets, len(mods)), got,
                    *reference(unet, inputs, go, False, lora))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cli", required=True)
    ap.add_argument("--workdir")
    a = ap.parse_args()
    torch.set_num_threads(2)

    def body(work):
        run_case(a.cli, work, "tiny-sd1", "diffusers", "f32", ("attn",), True)
        run_case(a.cli, work, "tiny-sd1", "single-file", "f16", ("conv",), False)
        run_case(a.cli, work, "tiny-sd2", "diffusers", "f16", ("transformer",), False)
        run_case(a.cli, work, "tiny-sd2", "single-file", "f32", (), False)
    return harness.main("test_backward_unet", a, body)


if __name__ == "__main__":
    sys.exit(main())
