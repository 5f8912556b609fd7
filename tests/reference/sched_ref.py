# SPDX-License-Identifier: GPL-3.0-or-later
"""PyTorch port of the diffusers scheduler formulas the C samplers mirror (diffusers 0.40:
schedulers/scheduling_ddim.py, scheduling_ddpm.py, scheduling_euler_discrete.py,
scheduling_euler_ancestral_discrete.py, scheduling_dpmsolver_multistep.py with solver_order 2,
algorithm_type dpmsolver++, solver_type midpoint, lower_order_final, final_sigmas_type zero)
and of StableDiffusionPipeline's denoising loop, restricted to what SD sampling uses
(no thresholding, no s_churn, fixed_small DDPM variance). Written from the diffusers sources'
semantics; the dtypes follow diffusers (float32 tensors, float64 numpy where it uses numpy).

run_pipeline(...) drives one sampler with the toy model of tests/sampler_driver.c.
"""
import math

import numpy as np
import torch

SD_CONFIG = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                 beta_schedule="scaled_linear", prediction_type="epsilon", steps_offset=1,
                 set_alpha_to_one=False, clip_sample=False, clip_sample_range=1.0,
                 timestep_spacing=None, use_karras_sigmas=False)

DEFAULT_SPACING = {"ddim": "leading", "ddpm": "leading", "euler": "linspace",
                   "euler_a": "linspace", "dpmpp": "linspace"}


def alphas_cumprod_of(cfg):
    n = cfg["num_train_timesteps"]
    if cfg["beta_schedule"] == "scaled_linear":
        betas = torch.linspace(cfg["beta_start"] ** 0.5, cfg["beta_end"] ** 0.5, n, dtype=torch.float32) ** 2
    elif cfg["beta_schedule"] == "linear":
        betas = torch.linspace(cfg["beta_start"], cfg["beta_end"], n, dtype=torch.float32)
    else:
        raise ValueError(cfg["beta_schedule"])
    return torch.cumprod(1.0 - betas, dim=0)


def spaced_timesteps(cfg, steps, kind, spacing):
    """Descending inference timesteps (float64 numpy) before each scheduler's cast."""
    n = cfg["num_train_timesteps"]
    euler = kind in ("euler", "euler_a")
    if kind == "dpmpp":
        if spacing == "linspace":
            return np.linspace(0, n - 1, steps + 1).round()[::-1][:-1].astype(np.float64)
        if spacing == "leading":
            ratio = n // (steps + 1)
            return (np.arange(0, steps + 1) * ratio).round()[::-1][:-1].astype(np.float64) + cfg["steps_offset"]
    if spacing == "linspace":
        t = np.linspace(0, n - 1, steps, dtype=np.float32 if euler else np.float64)[::-1]
        return t.astype(np.float64) if euler else t.round()
    if spacing == "leading":
        ratio = n // steps
        return (np.arange(0, steps) * ratio).round()[::-1].astype(np.float64) + cfg["steps_offset"]
    if spacing == "trailing":
        ratio = n / steps
        return np.round(np.arange(n, 0, -ratio)) - 1.0
    raise ValueError(spacing)


def sigma_to_t(sigma, log_sigmas):
    log_sigma = np.log(np.maximum(sigma, 1e-10))
    dists = log_sigma - log_sigmas.astype(np.float64)[:, None]
    low = np.cumsum(dists >= 0, axis=0).argmax(axis=0).clip(max=log_sigmas.shape[0] - 2)
    lo, hi = log_sigmas[low].astype(np.float64), log_sigmas[low + 1].astype(np.float64)
    w = np.clip((lo - log_sigma) / (lo - hi), 0, 1)
    return ((1 - w) * low + w * (low + 1)).reshape(np.shape(sigma))


def karras(sigma_min, sigma_max, steps, rho=7.0):
    ramp = np.linspace(0, 1, steps)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return (hi + ramp * (lo - hi)) ** rho


class Schedule:
    """set_timesteps of one diffusers scheduler: timesteps, sigmas, init_noise_sigma."""

    def __init__(self, cfg, kind, steps):
        self.cfg, self.kind, self.steps = cfg, kind, steps
        self.ac = alphas_cumprod_of(cfg)
        n = cfg["num_train_timesteps"]
        spacing = cfg["timestep_spacing"] or DEFAULT_SPACING[kind]
        t = spaced_timesteps(cfg, steps, kind, spacing)
        train_sigmas = np.array(((1 - self.ac) / self.ac) ** 0.5)  # float32
        log_sigmas = np.log(train_sigmas)
        self.final_ac = torch.tensor(1.0) if cfg["set_alpha_to_one"] else self.ac[0]
        self.init_noise_sigma = torch.tensor(1.0)
        self.sigmas = torch.zeros(steps + 1)
        if kind in ("ddim", "ddpm"):
            self.timesteps = torch.from_numpy(t.astype(np.int64))
        elif kind in ("euler", "euler_a"):
            tf = t.astype(np.float32)
            sig = np.interp(tf, np.arange(0, n), train_sigmas)
            if kind == "euler" and cfg["use_karras_sigmas"]:
                sig = karras(sig[-1].item(), sig[0].item(), steps)
                tf = np.array([sigma_to_t(s, log_sigmas) for s in sig])
            self.sigmas = torch.from_numpy(np.concatenate([sig, [0.0]]).astype(np.float32))
            self.timesteps = torch.from_numpy(tf.astype(np.float32))
            mx = self.sigmas.max()
            self.init_noise_sigma = mx if spacing in ("linspace", "trailing") else (mx ** 2 + 1) ** 0.5
        elif kind == "dpmpp":
            if cfg["use_karras_sigmas"]:
                sig = karras(train_sigmas[0].item(), train_sigmas[-1].item(), steps)
                t = np.array([sigma_to_t(s, log_sigmas) for s in sig]).round()
            else:
                sig = np.interp(t, np.arange(0, n), train_sigmas)
            self.sigmas = torch.from_numpy(np.concatenate([sig, [0.0]]).astype(np.float32))
            self.timesteps = torch.from_numpy(t.astype(np.int64))
        else:
            raise ValueError(kind)


def x0_clip(cfg, x0):
    r = cfg["clip_sample_range"]
    return x0.clamp(-r, r) if cfg["clip_sample"] else x0


def step_ddim(s, i, out, x, eta, gen):
    cfg = s.cfg
    t = int(s.timesteps[i])
    prev_t = t - cfg["num_train_timesteps"] // s.steps
    a_t = s.ac[t]
    a_prev = s.ac[prev_t] if prev_t >= 0 else s.final_ac
    b_t = 1 - a_t
    if cfg["prediction_type"] == "epsilon":
        x0, eps = (x - b_t ** 0.5 * out) / a_t ** 0.5, out
    else:
        x0 = a_t ** 0.5 * x - b_t ** 0.5 * out
        eps = a_t ** 0.5 * out + b_t ** 0.5 * x
    x0 = x0_clip(cfg, x0)
    variance = ((1 - a_prev) / b_t) * (1 - a_t / a_prev)
    std = eta * variance ** 0.5
    prev = a_prev ** 0.5 * x0 + (1 - a_prev - std ** 2) ** 0.5 * eps
    if eta > 0:
        prev = prev + std * torch.randn(out.shape, generator=gen, dtype=out.dtype)
    return prev


def step_ddpm(s, i, out, x, gen):
    cfg = s.cfg
    t = int(s.timesteps[i])
    prev_t = int(s.timesteps[i + 1]) if i + 1 < s.steps else -1
    a_t = s.ac[t]
    a_prev = s.ac[prev_t] if prev_t >= 0 else torch.tensor(1.0)
    b_t, b_prev = 1 - a_t, 1 - a_prev
    cur_alpha = a_t / a_prev
    cur_beta = 1 - cur_alpha
    if cfg["prediction_type"] == "epsilon":
        x0 = (x - b_t ** 0.5 * out) / a_t ** 0.5
    else:
        x0 = a_t ** 0.5 * x - b_t ** 0.5 * out
    x0 = x0_clip(cfg, x0)
    prev = (a_prev ** 0.5 * cur_beta) / b_t * x0 + cur_alpha ** 0.5 * b_prev / b_t * x
    if t > 0:
        noise = torch.randn(out.shape, generator=gen, dtype=out.dtype)
        var = torch.clamp((1 - a_prev) / (1 - a_t) * cur_beta, min=1e-20)
        prev = prev + var ** 0.5 * noise
    return prev


def step_euler(s, i, out, x, ancestral, gen):
    cfg = s.cfg
    sigma, sigma_next = s.sigmas[i], s.sigmas[i + 1]
    if cfg["prediction_type"] == "epsilon":
        x0 = x - sigma * out
    else:
        x0 = out * (-sigma / (sigma ** 2 + 1) ** 0.5) + x / (sigma ** 2 + 1)
    derivative = (x - x0) / sigma
    if not ancestral:
        return x + derivative * (sigma_next - sigma)
    up = (sigma_next ** 2 * (sigma ** 2 - sigma_next ** 2) / sigma ** 2) ** 0.5
    down = (sigma_next ** 2 - up ** 2) ** 0.5
    prev = x + derivative * (down - sigma)
    return prev + torch.randn(out.shape, generator=gen, dtype=out.dtype) * up


def alpha_sigma(sigma):
    a = 1 / (sigma ** 2 + 1) ** 0.5
    return a, sigma * a


def step_dpmpp(s, i, out, x, history):
    cfg = s.cfg
    a0, s0 = alpha_sigma(s.sigmas[i])
    x0 = (x - s0 * out) / a0 if cfg["prediction_type"] == "epsilon" else a0 * x - s0 * out
    history.append(x0)
    at, st = alpha_sigma(s.sigmas[i + 1])
    lam_t, lam_0 = torch.log(at) - torch.log(st), torch.log(a0) - torch.log(s0)
    h = lam_t - lam_0
    if i == 0 or i == s.steps - 1:  # first order: warm-up, and lower_order_final
        return (st / s0) * x - (at * (torch.exp(-h) - 1.0)) * x0
    a1, s1 = alpha_sigma(s.sigmas[i - 1])
    lam_1 = torch.log(a1) - torch.log(s1)
    r0 = (lam_0 - lam_1) / h
    m0, m1 = history[-1], history[-2]
    d1 = (1.0 / r0) * (m0 - m1)
    return (st / s0) * x - (at * (torch.exp(-h) - 1.0)) * m0 - 0.5 * (at * (torch.exp(-h) - 1.0)) * d1


def toy_model(x_in, t, cfg_scale):
    """The toy 'UNet + CFG' of sampler_driver.c (float32)."""
    n = x_in.numel()
    r = ((torch.arange(n) % 7 - 3).to(torch.float32) / 3.0).reshape(x_in.shape)
    ct = float(np.float32(math.cos(float(t) / 300.0)))
    st = float(np.float32(math.sin(float(t) / 200.0)))
    cond = 0.95 * x_in + (0.02 * r) * ct
    uncond = 0.93 * x_in + (0.01 * r) * st
    return uncond + cfg_scale * (cond - uncond)


SAMPLERS = {"ddim": ("ddim", False), "euler": ("euler", False), "euler-a": ("euler_a", False),
            "dpm++2m": ("dpmpp", False), "dpm++2m-karras": ("dpmpp", True), "ddpm": ("ddpm", False)}


def schedule_for(sampler, steps, prediction="epsilon", spacing=None, karras_sigmas=False):
    """The Schedule of one sampler name on the SD scheduler config."""
    kind, force_karras = SAMPLERS[sampler]
    cfg = dict(SD_CONFIG, prediction_type=prediction, timestep_spacing=spacing,
               use_karras_sigmas=force_karras or (karras_sigmas and kind == "euler"))
    return Schedule(cfg, kind, steps)


def run_pipeline(sampler, steps, shape, seed, cfg_scale=7.5, eta=0.0, prediction="epsilon",
                 spacing=None, karras_sigmas=False):
    """StableDiffusionPipeline's loop with one CPU generator. Returns (schedule, noise0, latents)."""
    kind = SAMPLERS[sampler][0]
    s = schedule_for(sampler, steps, prediction, spacing, karras_sigmas)
    gen = torch.Generator().manual_seed(seed)
    noise0 = torch.randn(shape, generator=gen, dtype=torch.float32)
    x = noise0 * s.init_noise_sigma
    history = []
    for i in range(steps):
        t = s.timesteps[i]
        x_in = x / ((s.sigmas[i] ** 2 + 1) ** 0.5) if kind in ("euler", "euler_a") else x
        out = toy_model(x_in, float(t), cfg_scale)
        if kind == "ddim":
            x = step_ddim(s, i, out, x, eta, gen)
        elif kind == "ddpm":
            x = step_ddpm(s, i, out, x, gen)
        elif kind in ("euler", "euler_a"):
            x = step_euler(s, i, out, x, kind == "euler_a", gen)
        else:
            x = step_dpmpp(s, i, out, x, history)
    return s, noise0, x
