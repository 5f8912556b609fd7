#!/usr/bin/python3
# SPDX-License-Identifier: GPL-3.0-or-later
"""Independent check of our sampling against diffusers' own scheduler and model code.

Not a meson test: diffusers is not installable here. It imports diffusers from an extracted
source tree; nothing of diffusers lives in this repository. To extract one (the mirror is a
bare git directory; any release tag works, v0.40.0 is what sched_ref.py follows):

  mkdir -p /tmp/diffusers-src
  git --git-dir=/work/.mirror/huggingface+diffusers/repo archive v0.40.0 src/diffusers \\
      | tar -x -C /tmp/diffusers-src
  /usr/bin/python3 tests/reference/check_against_diffusers.py \\
      --diffusers-src /tmp/diffusers-src/src --cli build/engine/dreambooth \\
      --bpe ../shared/data/clip/bpe_simple_vocab_16e6.txt.gz

Third-party packages diffusers imports but this machine lacks (huggingface_hub, safetensors,
filelock, tqdm, packaging) are replaced by small stand-ins defined below, and the few torch
2.x namespaces diffusers >= 0.30 touches at import time (torch.xpu, torch.mps, torch.compiler,
float8 dtypes, torch.distributed.device_mesh, torch.nn.attention) by inert placeholders, so
that diffusers' scheduler, UNet2DConditionModel, AutoencoderKL and VaeImageProcessor import
under Debian's /usr/bin/python3 with torch 1.13. None of these are used by the code paths
exercised here.

Part 1 (always): tests/reference/sched_ref.py (our port, which the meson tests use as the
reference for engine/samplers.c) against diffusers' DDIMScheduler, DDPMScheduler,
EulerDiscreteScheduler (also use_karras_sigmas), EulerAncestralDiscreteScheduler and
DPMSolverMultistepScheduler (dpmsolver++, solver_order 2, use_karras_sigmas False/True), on
the SD scheduler config with steps_offset 1: alphas_cumprod, timesteps, sigmas,
init_noise_sigma, scale_model_input at every step and the final latent of 10- and 25-step
loops driven by sched_ref.toy_model with identically seeded CPU generators, for epsilon and
v_prediction and timestep_spacing leading/trailing/linspace (DDIM also with eta 0.5).
Tolerance: 1e-6 relative L2 on the final latent (both sides float32 torch).

Part 2 (with --cli and --bpe): `dreambooth init-model --arch tiny-sd1`, its weights loaded
(load_state_dict strict=True) into diffusers' UNet2DConditionModel and AutoencoderKL (text
encoder: clip_text.py, transformers being unavailable), and StableDiffusionPipeline's loop
(randn_tensor(generator) * init_noise_sigma, cat([x]*2), scale_model_input, UNet, chunk,
uncond + 7.5 * (text - uncond), scheduler.step(..., generator)) with the scheduler made
from_config of the model's scheduler_config.json; compared with `dreambooth generate
--latent-out` per sampler (relative L2 <= 1e-4), and diffusers' VaeImageProcessor
postprocess of the decoded latent against the PNG pixels (at most 1 level off on at most 1%
of values).

Exit status 0 when everything is within tolerance, 1 otherwise.
"""
import argparse
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
import types

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import sched_ref  # noqa: E402
import st_io  # noqa: E402

TOL_SCHED = 1e-6   # final latent, toy loop, relative L2 (port vs diffusers)
TOL_E2E = 1e-4     # final latent, tiny-sd1, relative L2 (C engine vs diffusers)
FAILS = []
# Timesteps of Karras Euler: diffusers' _sigma_to_t computes its weight in float32 under NumPy 1.x's
# value-based casting (np.float64 scalar - float32 array), in float64 under NumPy 2 (NEP 50), as
# sched_ref.py and engine/schedule.c do; main() selects NEP 50 promotion when NumPy 1.x has it.
TOL_TS = 0.0


# ---- stand-ins for missing packages and torch 2.x names -----------------------------------

class _Anything(type):
    """A class whose attributes are classes; calling it returns a lone callable argument
    unchanged (so it works as a decorator) and None otherwise."""

    def __getattr__(cls, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Anything(name, (object,), {})

    def __call__(cls, *a, **k):
        return a[0] if len(a) == 1 and not k and callable(a[0]) else None

    def __or__(cls, other):
        return cls

    def __ror__(cls, other):
        return cls


class _StubModule(types.ModuleType):
    __path__ = []

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        # upper-case names are constants (cache paths); the rest classes/functions
        v = tempfile.gettempdir() if name.isupper() else _Anything(name, (object,), {})
        setattr(self, name, v)
        return v


class _StubFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def __init__(self, roots):
        self.roots = roots

    def find_spec(self, fullname, path, target=None):
        if fullname.split(".")[0] in self.roots:
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        m = _StubModule(spec.name)
        m.__version__ = "0.30.0"
        return m

    def exec_module(self, module):
        pass


class _Version:
    """packaging.version.Version, numeric release part only."""

    def __init__(self, s):
        s = str(s)
        nums = [int(x) for x in re.findall(r"\d+", s.split("+")[0])[:3]]
        self.release = tuple(nums + [0] * (3 - len(nums)))
        self.major, self.minor, self.micro = self.release
        self.base_version = ".".join(map(str, self.release))
        self.is_prerelease = bool(re.search(r"(a|b|rc|dev)\d*", s))

    def _t(self, o):
        return (o if isinstance(o, _Version) else _Version(o)).release

    def __lt__(self, o): return self.release < self._t(o)
    def __le__(self, o): return self.release <= self._t(o)
    def __gt__(self, o): return self.release > self._t(o)
    def __ge__(self, o): return self.release >= self._t(o)
    def __eq__(self, o): return self.release == self._t(o)
    def __ne__(self, o): return self.release != self._t(o)
    def __hash__(self): return hash(self.release)
    def __str__(self): return self.base_version


def _inert_namespace(name):
    class _Dev(types.ModuleType):
        def __getattr__(self, attr):
            if attr.startswith("__"):
                raise AttributeError(attr)
            if attr == "is_available":
                return lambda *a, **k: False
            return lambda *a, **k: 0
    return _Dev(name)


def install_stand_ins():
    missing = {m for m in ("huggingface_hub", "safetensors", "filelock", "tqdm", "importlib_metadata")
               if importlib.util.find_spec(m) is None}
    if missing:
        sys.meta_path.insert(0, _StubFinder(missing))
    if importlib.util.find_spec("packaging") is None:
        pk = types.ModuleType("packaging")
        pk.__path__ = []
        pv = types.ModuleType("packaging.version")
        pv.Version = pv.parse = _Version
        pv.InvalidVersion = ValueError
        pk.version = pv
        sys.modules["packaging"], sys.modules["packaging.version"] = pk, pv
    for n in ("xpu", "mps", "mtia", "npu"):
        if not hasattr(torch, n):
            setattr(torch, n, _inert_namespace("torch." + n))
            sys.modules["torch." + n] = getattr(torch, n)
    for n in ("float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz", "float8_e8m0fnu",
              "uint16", "uint32", "uint64") + tuple("uint%d" % i for i in range(1, 8)) + \
            tuple("int%d" % i for i in range(1, 8)):
        if not hasattr(torch, n):
            setattr(torch, n, type("placeholder_dtype_" + n, (), {"itemsize": 1})())
    if not hasattr(torch, "compiler"):
        c = types.ModuleType("torch.compiler")
        c.disable = lambda f=None, *a, **k: f if callable(f) else (lambda g: g)
        c.is_compiling = lambda: False
        c.cudagraph_mark_step_begin = lambda: None
        torch.compiler = c
        sys.modules["torch.compiler"] = c
    importlib.import_module("torch.distributed")
    for name in ("torch.distributed.device_mesh", "torch.distributed._functional_collectives",
                 "torch.distributed.tensor", "torch.distributed._tensor", "torch.nn.attention",
                 "torch.nn.attention.flex_attention"):
        try:
            importlib.import_module(name)
        except Exception:
            m = _StubModule(name)
            sys.modules[name] = m
            parent, _, leaf = name.rpartition(".")
            if parent in sys.modules and not hasattr(sys.modules[parent], leaf):
                setattr(sys.modules[parent], leaf, m)
    # diffusers' import-time check of installed package versions needs real metadata
    d = types.ModuleType("diffusers.dependency_versions_check")
    d.dep_version_check = lambda *a, **k: None
    sys.modules["diffusers.dependency_versions_check"] = d


def import_diffusers(src):
    install_stand_ins()
    sys.path.insert(0, os.path.abspath(src))
    import diffusers
    if not os.path.abspath(diffusers.__file__).startswith(os.path.abspath(src)):
        raise SystemExit("diffusers imported from %s, not from --diffusers-src" % diffusers.__file__)
    return diffusers


# ---- helpers ------------------------------------------------------------------------------

def check(ok, what):
    print(("ok   " if ok else "FAIL ") + what)
    if not ok:
        FAILS.append(what)
    return ok


def rel_l2(a, b):
    a = np.asarray(a, np.float64).ravel()
    b = np.asarray(b, np.float64).ravel()
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def max_abs(a, b):
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    if a.shape != b.shape:
        return float("inf")
    return float(np.max(np.abs(a - b))) if a.size else 0.0


SD_SCHED = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                beta_schedule="scaled_linear", steps_offset=1, set_alpha_to_one=False,
                clip_sample=False, trained_betas=None)

# sampler name -> (diffusers class, extra config)
DIFFUSERS_OF = {
    "ddim": ("DDIMScheduler", {}),
    "ddpm": ("DDPMScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler-karras": ("EulerDiscreteScheduler", {"use_karras_sigmas": True}),
    "euler-a": ("EulerAncestralDiscreteScheduler", {}),
    "dpm++2m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "dpm++2m-karras": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2,
                                                      "use_karras_sigmas": True}),
}


def diffusers_scheduler(D, sampler, base):
    cls_name, extra = DIFFUSERS_OF[sampler]
    return getattr(D, cls_name).from_config(dict(base, **extra))


def pipeline_config_fixups(sch):
    """What StableDiffusionPipeline.__init__ does to the scheduler it is given: steps_offset
    != 1 becomes 1, clip_sample True becomes False (DDIM/DDPM default to clip_sample True when
    the config, like SD's PNDMScheduler configs, does not name it). Returns what it changed."""
    from diffusers.configuration_utils import FrozenDict
    changed = {}
    if getattr(sch.config, "steps_offset", 1) != 1:
        changed["steps_offset"] = 1
    if getattr(sch.config, "clip_sample", False) is True:
        changed["clip_sample"] = False
    if changed:
        sch._internal_dict = FrozenDict(dict(sch.config, **changed))
    return changed


# ---- part 1: sched_ref.py vs diffusers, toy model -----------------------------------------

def port_loop(sampler, steps, pred, spacing, seed, shape, eta):
    name = "euler" if sampler == "euler-karras" else sampler
    kind = sched_ref.SAMPLERS[name][0]
    s = sched_ref.schedule_for(name, steps, pred, spacing, karras_sigmas=sampler == "euler-karras")
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen, dtype=torch.float32) * s.init_noise_sigma
    ins, hist = [], []
    for i in range(steps):
        t = s.timesteps[i]
        x_in = x / ((s.sigmas[i] ** 2 + 1) ** 0.5) if kind in ("euler", "euler_a") else x
        ins.append(x_in.clone())
        out = sched_ref.toy_model(x_in, float(t), 7.5)
        if kind == "ddim":
            x = sched_ref.step_ddim(s, i, out, x, eta, gen)
        elif kind == "ddpm":
            x = sched_ref.step_ddpm(s, i, out, x, gen)
        elif kind in ("euler", "euler_a"):
            x = sched_ref.step_euler(s, i, out, x, kind == "euler_a", gen)
        else:
            x = sched_ref.step_dpmpp(s, i, out, x, hist)
    return s, ins, x


def diffusers_loop(D, sampler, steps, pred, spacing, seed, shape, eta):
    from diffusers.utils.torch_utils import randn_tensor
    sch = diffusers_scheduler(D, sampler, dict(SD_SCHED, prediction_type=pred, timestep_spacing=spacing))
    sch.set_timesteps(steps)
    gen = torch.Generator().manual_seed(seed)
    x = randn_tensor(shape, generator=gen, dtype=torch.float32) * sch.init_noise_sigma
    kw = {"eta": eta} if sampler == "ddim" else {}
    ins = []
    for t in sch.timesteps:
        x_in = sch.scale_model_input(x, t)
        ins.append(x_in.clone())
        out = sched_ref.toy_model(x_in, float(t), 7.5)
        x = sch.step(out, t, x, generator=gen, return_dict=False, **kw)[0]
    return sch, ins, x


def part1(D, quick):
    print("== part 1: sched_ref.py vs diffusers %s schedulers (toy model)" % D.__version__)
    shape = (1, 4, 8, 8)
    worst = {}
    samplers = ["ddim", "ddpm", "euler", "euler-karras", "euler-a", "dpm++2m", "dpm++2m-karras"]
    for sampler in samplers:
        for steps in ((10,) if quick else (10, 25)):
            for pred in ("epsilon", "v_prediction"):
                for spacing in ("leading", "trailing", "linspace"):
                    for eta in ((0.0, 0.5) if sampler == "ddim" else (0.0,)):
                        what = "%s steps=%d %s %s%s" % (sampler, steps, pred, spacing,
                                                       " eta=%g" % eta if eta else "")
                        try:
                            s, pin, px = port_loop(sampler, steps, pred, spacing, 1234, shape, eta)
                        except Exception as e:  # noqa: BLE001
                            check(False, "%s: port raised %r" % (what, e))
                            continue
                        ds, din, dx = diffusers_loop(D, sampler, steps, pred, spacing, 1234, shape, eta)
                        d_ts = max_abs(s.timesteps.double(), ds.timesteps.double())
                        d_ac = max_abs(s.ac, ds.alphas_cumprod)
                        d_sig = max_abs(s.sigmas, ds.sigmas) if hasattr(ds, "sigmas") else 0.0
                        d_ins = abs(float(s.init_noise_sigma) - float(ds.init_noise_sigma))
                        d_in = max(max_abs(a, b) for a, b in zip(pin, din))
                        r = rel_l2(px, dx)
                        ok = d_ts <= TOL_TS and d_ac == 0 and d_sig <= 1e-6 and d_ins <= 1e-6 and \
                            d_in <= 1e-5 and r <= TOL_SCHED and np.isfinite(r)
                        key = sampler
                        w = worst.setdefault(key, [0, 0, 0, 0, 0, 0])
                        for k, v in enumerate((d_ts, d_ac, d_sig, d_ins, d_in, r)):
                            w[k] = max(w[k], v)
                        if not ok or "-v" in sys.argv:
                            check(ok, "%s: |dt|=%g |dac|=%g |dsigma|=%g |dinit|=%g |dx_in|=%g "
                                  "latent rel L2 %.3g" % (what, d_ts, d_ac, d_sig, d_ins, d_in, r))
    print("-- worst case per sampler over steps/prediction/spacing (max abs unless noted):")
    print("   %-15s %9s %9s %9s %9s %9s %11s" % ("sampler", "timesteps", "alphas_cp", "sigmas",
                                                "init_sig", "scale_in", "latent relL2"))
    for k, w in worst.items():
        print("   %-15s %9.2g %9.2g %9.2g %9.2g %9.2g %11.3g" % ((k,) + tuple(w)))


# ---- part 2: dreambooth generate vs diffusers' modules and schedulers ---------------------

def load_into(module, path):
    sd = {k: torch.from_numpy(np.asarray(v, np.float32)) for k, v in st_io.load_file(path, True).items()}
    module.load_state_dict(sd, strict=True)
    return module.eval()


def read_png_rgb(path):
    from PIL import Image
    return np.asarray(Image.open(path).convert("RGB"))


def part2(D, cli, bpe, work, prompt, negative, seed, steps, samplers, preds):
    print("== part 2: `dreambooth generate` vs diffusers %s modules + schedulers (tiny-sd1)" %
          D.__version__)
    import clip_text
    import tokenizer_ref
    from diffusers.image_processor import VaeImageProcessor
    from diffusers.utils.torch_utils import randn_tensor
    model = os.path.join(work, "tiny")
    if not os.path.isdir(model):
        p = subprocess.run([cli, "init-model", "--arch", "tiny-sd1", "--out", model,
                            "--tokenizer-from", bpe], capture_output=True, text=True)
        if not check(p.returncode == 0, "init-model tiny-sd1 (%s)" % p.stderr.strip()[-200:]):
            return

    def cfg(sub):
        with open(os.path.join(model, sub, "config.json")) as f:
            return {k: v for k, v in json.load(f).items() if not k.startswith("_")}
    unet = load_into(D.UNet2DConditionModel.from_config(cfg("unet")),
                     os.path.join(model, "unet", "diffusion_pytorch_model.safetensors"))
    vae = load_into(D.AutoencoderKL.from_config(cfg("vae")),
                    os.path.join(model, "vae", "diffusion_pytorch_model.safetensors"))
    te = load_into(clip_text.CLIPTextModel(cfg("text_encoder")),
                   os.path.join(model, "text_encoder", "model.safetensors"))
    with open(os.path.join(model, "scheduler", "scheduler_config.json")) as f:
        sched_cfg = json.load(f)
    vae_scale = 2 ** (len(vae.config.block_out_channels) - 1)
    proc = VaeImageProcessor(vae_scale_factor=vae_scale)
    tok = tokenizer_ref.Tokenizer.from_bpe(bpe)
    ids = torch.tensor([tok.encode_padded(negative)[0], tok.encode_padded(prompt)[0]])
    size = unet.config.sample_size
    shape = (1, unet.config.in_channels, size, size)
    with torch.no_grad():
        ctx = te(ids)  # [negative, prompt], as encode_prompt's cat([negative, prompt])
        for pred in preds:
            for sampler in samplers:
                base = dict(sched_cfg, prediction_type=pred)
                sch = diffusers_scheduler(D, sampler, base)
                fixed = pipeline_config_fixups(sch)
                if fixed and pred == preds[0]:
                    print("note: %s.from_config(scheduler_config.json) differs from SD's values; "
                          "StableDiffusionPipeline.__init__ sets %s" % (type(sch).__name__, ", ".join(
                              "%s=%s" % kv for kv in fixed.items())))
                sch.set_timesteps(steps)
                gen = torch.Generator().manual_seed(seed)
                lat = randn_tensor(shape, generator=gen, dtype=torch.float32) * sch.init_noise_sigma
                kw = {"eta": 0.0} if sampler == "ddim" else {}
                for t in sch.timesteps:
                    x_in = sch.scale_model_input(torch.cat([lat] * 2), t)
                    out = unet(x_in, t, encoder_hidden_states=ctx, return_dict=False)[0]
                    u, c = out.chunk(2)
                    out = u + 7.5 * (c - u)
                    lat = sch.step(out, t, lat, generator=gen, return_dict=False, **kw)[0]
                img = vae.decode(lat / vae.config.scaling_factor, return_dict=False)[0]
                ref_px = np.asarray(proc.postprocess(img, output_type="pil")[0].convert("RGB"))

                lat_path = os.path.join(work, "lat-%s-%s.safetensors" % (sampler, pred))
                png_path = os.path.join(work, "img-%s-%s.png" % (sampler, pred))
                args = [cli, "generate", model, "--prompt", prompt, "--negative", negative,
                        "--seed", str(seed), "--steps", str(steps), "--sampler", sampler,
                        "--latent-out", lat_path, "--out", png_path, "--threads", "1"]
                if pred == "v_prediction":
                    args += ["--prediction", "v"]
                p = subprocess.run(args, capture_output=True, text=True)
                what = "generate %s %s %d steps seed %d" % (sampler, pred, steps, seed)
                if not check(p.returncode == 0, "%s: exit %d %s" % (what, p.returncode, p.stderr.strip())):
                    continue
                c_lat = st_io.load_file(lat_path)["latent"]
                r = rel_l2(c_lat, lat.numpy())
                check(r <= TOL_E2E, "%s: latent rel L2 %.3g (max abs %.3g, |ref| rms %.3g)" %
                      (what, r, max_abs(c_lat, lat.numpy()), float(lat.pow(2).mean().sqrt())))
                px = read_png_rgb(png_path)
                if px.shape != ref_px.shape:
                    check(False, "%s: PNG %s vs diffusers %s" % (what, px.shape, ref_px.shape))
                    continue
                d = np.abs(px.astype(np.int32) - ref_px.astype(np.int32))
                frac = float((d > 0).mean())
                check(d.max() <= 1 and frac <= 0.01,
                      "%s: PNG vs VaeImageProcessor.postprocess: max %d levels, %.3f%% of values differ"
                      % (what, int(d.max()), 100 * frac))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--diffusers-src", required=True, help="the src/ folder of an extracted diffusers")
    ap.add_argument("--cli", help="build/engine/dreambooth (part 2)")
    ap.add_argument("--bpe", help="bpe_simple_vocab_16e6.txt.gz (part 2)")
    ap.add_argument("--work", help="work folder for part 2 (kept)")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--prompt", default="a photo of sks dog, highly detailed")
    ap.add_argument("--negative", default="blurry, low quality")
    ap.add_argument("--samplers", default="ddim,euler,euler-a,dpm++2m,dpm++2m-karras,ddpm")
    ap.add_argument("--v-prediction", action="store_true", help="part 2 also with --prediction v")
    ap.add_argument("--quick", action="store_true", help="part 1 with 10 steps only")
    ap.add_argument("--skip-part1", action="store_true")
    ap.add_argument("-v", action="store_true", help="print every part-1 case")
    ap.add_argument("--legacy-numpy-promotion", action="store_true",
                    help="keep NumPy 1.x value-based casting (Karras Euler timesteps 1 ulp off)")
    a = ap.parse_args()
    global TOL_TS
    if int(np.__version__.split(".")[0]) < 2:
        if a.legacy_numpy_promotion or not hasattr(np, "_set_promotion_state"):
            TOL_TS = 1e-4
            print("note: NumPy %s value-based casting; timesteps allowed %g off" % (np.__version__, TOL_TS))
        else:
            np._set_promotion_state("weak")
            print("note: NumPy %s with NEP 50 (NumPy 2) promotion" % np.__version__)
    torch.set_num_threads(1)
    D = import_diffusers(a.diffusers_src)
    if not a.skip_part1:
        part1(D, a.quick)
    if a.cli and a.bpe:
        work = a.work or tempfile.mkdtemp(prefix="check_diffusers.")
        os.makedirs(work, exist_ok=True)
        preds = ["epsilon"] + (["v_prediction"] if a.v_prediction else [])
        part2(D, a.cli, a.bpe, work, a.prompt, a.negative, a.seed, a.steps, a.samplers.split(","), preds)
        print("part 2 files in", work)
    if FAILS:
        print("check_against_diffusers: %d FAILURES" % len(FAILS))
        return 1
    print("check_against_diffusers: all within tolerance")
    return 0


if __name__ == "__main__":
    sys.exit(main())
