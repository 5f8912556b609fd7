# SPDX-License-Identifier: GPL-3.0-or-later
"""Config dicts shaped like the config.json files of diffusers/transformers SD pipelines.

Kinds: 'sd15', 'sd21' (768, v-prediction, upcast_attention), 'sd21-base' (512, epsilon),
'tiny-sd1', 'tiny-sd2' (small random-weight models for tests).

    unet_config(kind)          -> UNet2DConditionModel config.json dict (diffusers 0.25.0 keys)
    vae_config(kind)           -> AutoencoderKL config.json dict
    text_encoder_config(kind)  -> CLIPTextModel config.json dict (transformers keys)
    scheduler_config(kind, cls="PNDMScheduler"|"DDIMScheduler"|"DDPMScheduler")
    model_index(kind)          -> model_index.json dict of a StableDiffusionPipeline
    to_json(d)                 -> text as save_pretrained writes it (sorted keys, indent 2)
    write_pipeline_configs(dir, kind) writes model_index.json and every <component>/config.json

Tiny kinds (chosen to exercise the traps of the real configs):
  tiny-sd1 UNet: block_out_channels [32, 64], layers_per_block 2, norm_num_groups 8,
      CrossAttnDownBlock2D + DownBlock2D / UpBlock2D + CrossAttnUpBlock2D,
      attention_head_dim 8 (legacy: an int that means 8 HEADS, as SD1 has: head dim 4 at 32 ch,
      8 in the 64-ch mid block), conv proj_in/proj_out, cross_attention_dim 128 (= text hidden).
  tiny-sd2 UNet: block_out_channels [64, 128], layers_per_block 1, norm_num_groups 32,
      attention_head_dim [1, 2] (per-block head COUNTS giving head dim 64 everywhere, as SD2 has;
      up blocks use the list reversed), use_linear_projection true, cross_attention_dim 128.
  The tiny kinds keep the rules single files are read by (SD1: 8 heads; SD2: head dim 64; text
  encoder heads = width / 64), because a single file stores no head counts.
  tiny-sd1 VAE: block_out_channels [32, 64] (scale factor 2), layers_per_block 1, groups 8.
  tiny-sd2 VAE: block_out_channels [16, 32, 32, 32] (scale factor 8), layers_per_block 1, groups 8.
  tiny-sd1 text: hidden 128, 2 layers, 2 heads, mlp 200, quick_gelu, vocab 49408 (real tokenizer).
  tiny-sd2 text: hidden 128, 3 layers, 2 heads, mlp 256, gelu, vocab 49408.
"""
import copy
import json
import os

DIFFUSERS_VERSION = "0.25.0"
TRANSFORMERS_VERSION = "4.36.2"
KINDS = ("sd15", "sd21", "sd21-base", "tiny-sd1", "tiny-sd2")

# Every key UNet2DConditionModel.__init__ registers (diffusers 0.25), with its default.
_UNET_DEFAULTS = {
    "_class_name": "UNet2DConditionModel",
    "_diffusers_version": DIFFUSERS_VERSION,
    "act_fn": "silu",
    "addition_embed_type": None,
    "addition_embed_type_num_heads": 64,
    "addition_time_embed_dim": None,
    "attention_head_dim": 8,
    "attention_type": "default",
    "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False,
    "class_embed_type": None,
    "class_embeddings_concat": False,
    "conv_in_kernel": 3,
    "conv_out_kernel": 3,
    "cross_attention_dim": 768,
    "cross_attention_norm": None,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                         "CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1,
    "dropout": 0.0,
    "dual_cross_attention": False,
    "encoder_hid_dim": None,
    "encoder_hid_dim_type": None,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_only_cross_attention": None,
    "mid_block_scale_factor": 1,
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "num_attention_heads": None,
    "num_class_embeds": None,
    "only_cross_attention": False,
    "out_channels": 4,
    "projection_class_embeddings_input_dim": None,
    "resnet_out_scale_factor": 1.0,
    "resnet_skip_time_act": False,
    "resnet_time_scale_shift": "default",
    "reverse_transformer_layers_per_block": None,
    "sample_size": 64,
    "time_cond_proj_dim": None,
    "time_embedding_act_fn": None,
    "time_embedding_dim": None,
    "time_embedding_type": "positional",
    "timestep_post_act": None,
    "transformer_layers_per_block": 1,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D",
                       "CrossAttnUpBlock2D"],
    "upcast_attention": False,
    "use_linear_projection": False,
}

_UNET_KIND = {
    "sd15": {},
    "sd21": {"attention_head_dim": [5, 10, 20, 20], "cross_attention_dim": 1024,
             "use_linear_projection": True, "upcast_attention": True, "sample_size": 96},
    "sd21-base": {"attention_head_dim": [5, 10, 20, 20], "cross_attention_dim": 1024,
                  "use_linear_projection": True, "upcast_attention": False, "sample_size": 64},
    "tiny-sd1": {"attention_head_dim": 8, "block_out_channels": [32, 64],
                 "cross_attention_dim": 128, "layers_per_block": 2, "norm_num_groups": 8,
                 "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
                 "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"], "sample_size": 16},
    "tiny-sd2": {"attention_head_dim": [1, 2], "block_out_channels": [64, 128],
                 "cross_attention_dim": 128, "layers_per_block": 1, "norm_num_groups": 32,
                 "use_linear_projection": True,
                 "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
                 "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"], "sample_size": 16},
}

_VAE_DEFAULTS = {
    "_class_name": "AutoencoderKL",
    "_diffusers_version": DIFFUSERS_VERSION,
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "force_upcast": True,
    "in_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 512,
    "scaling_factor": 0.18215,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
}

_VAE_KIND = {
    "sd15": {},
    "sd21": {"sample_size": 768},
    "sd21-base": {},
    "tiny-sd1": {"block_out_channels": [32, 64], "layers_per_block": 1, "norm_num_groups": 8,
                 "down_block_types": ["DownEncoderBlock2D"] * 2,
                 "up_block_types": ["UpDecoderBlock2D"] * 2, "sample_size": 32},
    "tiny-sd2": {"block_out_channels": [16, 32, 32, 32], "layers_per_block": 1,
                 "norm_num_groups": 8, "sample_size": 128},
}

# CLIPTextConfig as in the real SD text_encoder/config.json files.
_TEXT_DEFAULTS = {
    "architectures": ["CLIPTextModel"],
    "attention_dropout": 0.0,
    "bos_token_id": 0,
    "dropout": 0.0,
    "eos_token_id": 2,
    "hidden_act": "quick_gelu",
    "hidden_size": 768,
    "initializer_factor": 1.0,
    "initializer_range": 0.02,
    "intermediate_size": 3072,
    "layer_norm_eps": 1e-05,
    "max_position_embeddings": 77,
    "model_type": "clip_text_model",
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "pad_token_id": 1,
    "projection_dim": 768,
    "torch_dtype": "float32",
    "transformers_version": TRANSFORMERS_VERSION,
    "vocab_size": 49408,
}

_SD2_TEXT = {"hidden_act": "gelu", "hidden_size": 1024, "intermediate_size": 4096,
             "num_attention_heads": 16, "num_hidden_layers": 23, "projection_dim": 512}
_TEXT_KIND = {
    "sd15": {},
    "sd21": _SD2_TEXT,
    "sd21-base": _SD2_TEXT,
    "tiny-sd1": {"hidden_size": 128, "intermediate_size": 200, "num_attention_heads": 2,
                 "num_hidden_layers": 2, "projection_dim": 32},
    "tiny-sd2": {"hidden_act": "gelu", "hidden_size": 128, "intermediate_size": 256,
                 "num_attention_heads": 2, "num_hidden_layers": 3, "projection_dim": 64},
}

_SCHED_COMMON = {
    "_diffusers_version": DIFFUSERS_VERSION,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "trained_betas": None,
}
_SCHED_EXTRA = {
    # SD 1.x/2.x ship "clip_sample": false with their PNDMScheduler config; without it a
    # DDIMScheduler/DDPMScheduler made from this config would clip (their default is True)
    "PNDMScheduler": {"clip_sample": False, "skip_prk_steps": True},
    "DDIMScheduler": {"clip_sample": False, "clip_sample_range": 1.0,
                      "dynamic_thresholding_ratio": 0.995, "rescale_betas_zero_snr": False,
                      "sample_max_value": 1.0, "thresholding": False},
    "DDPMScheduler": {"clip_sample": False, "clip_sample_range": 1.0,
                      "dynamic_thresholding_ratio": 0.995, "rescale_betas_zero_snr": False,
                      "sample_max_value": 1.0, "thresholding": False, "variance_type": "fixed_small"},
}


def _check(kind):
    if kind not in KINDS:
        raise ValueError("unknown kind %r (expected one of %s)" % (kind, ", ".join(KINDS)))


def _merge(base, extra):
    d = copy.deepcopy(base)
    d.update(copy.deepcopy(extra))
    return d


def unet_config(kind):
    _check(kind)
    return _merge(_UNET_DEFAULTS, _UNET_KIND[kind])


def vae_config(kind):
    _check(kind)
    return _merge(_VAE_DEFAULTS, _VAE_KIND[kind])


def text_encoder_config(kind):
    _check(kind)
    return _merge(_TEXT_DEFAULTS, _TEXT_KIND[kind])


def prediction_type(kind):
    _check(kind)
    return "v_prediction" if kind == "sd21" else "epsilon"


def scheduler_config(kind, cls="PNDMScheduler"):
    _check(kind)
    if cls not in _SCHED_EXTRA:
        raise ValueError("unknown scheduler class %r" % cls)
    d = _merge(_SCHED_COMMON, _SCHED_EXTRA[cls])
    if cls == "DDPMScheduler":
        del d["set_alpha_to_one"]  # DDPMScheduler has no such argument
    d["_class_name"] = cls
    d["prediction_type"] = prediction_type(kind)
    return d


def model_index(kind, scheduler_cls="PNDMScheduler"):
    """model_index.json as StableDiffusionPipeline.save_pretrained writes it without a safety checker."""
    _check(kind)
    return {
        "_class_name": "StableDiffusionPipeline",
        "_diffusers_version": DIFFUSERS_VERSION,
        "feature_extractor": [None, None],
        "image_encoder": [None, None],
        "requires_safety_checker": False,
        "safety_checker": [None, None],
        "scheduler": ["diffusers", scheduler_cls],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }


def to_json(d):
    return json.dumps(d, indent=2, sort_keys=True) + "\n"


def write_pipeline_configs(path, kind, scheduler_cls="PNDMScheduler"):
    """Writes model_index.json, unet/, vae/, text_encoder/config.json, scheduler/scheduler_config.json."""
    files = {
        "model_index.json": model_index(kind, scheduler_cls),
        "unet/config.json": unet_config(kind),
        "vae/config.json": vae_config(kind),
        "text_encoder/config.json": text_encoder_config(kind),
        "scheduler/scheduler_config.json": scheduler_config(kind, scheduler_cls),
    }
    for rel, d in files.items():
        full = os.path.join(path, rel)
        os.makedirs(os.path.dirname(full), exist_ok=True)
        with open(full, "w") as f:
            f.write(to_json(d))
    return sorted(files)


if __name__ == "__main__":
    import sys
    k = sys.argv[1] if len(sys.argv) > 1 else "sd15"
    for name, fn in (("unet", unet_config), ("vae", vae_config), ("text_encoder", text_encoder_config)):
        print("== %s/config.json" % name)
        print(to_json(fn(k)), end="")
