# SPDX-License-Identifier: GPL-3.0-or-later
"""A torch CLIP text encoder equivalent to transformers' CLIPTextModel (modeling_clip.py):
token + position embeddings, pre-LN encoder layers with causal self-attention (q scaled by
head_dim**-0.5), MLP fc1 -> quick_gelu|gelu -> fc2, final_layer_norm. forward(input_ids)
returns last_hidden_state [B, T, D]. State-dict names are transformers' exactly:
text_model.embeddings.token_embedding.weight, ...encoder.layers.{i}.self_attn.q_proj.weight,
text_model.final_layer_norm.weight, and (optional, as older files carry it)
text_model.embeddings.position_ids.
"""
import math

import torch
from torch import nn
import torch.nn.functional as F


def clip_text_config(hidden=768, layers=12, heads=12, intermediate=3072, act="quick_gelu",
                     vocab=49408, max_pos=77, eps=1e-5, projection_dim=768):
    """A transformers CLIPTextConfig dict (the text_encoder/config.json keys that matter)."""
    return {
        "architectures": ["CLIPTextModel"], "model_type": "clip_text_model",
        "vocab_size": vocab, "hidden_size": hidden, "intermediate_size": intermediate,
        "num_hidden_layers": layers, "num_attention_heads": heads,
        "max_position_embeddings": max_pos, "hidden_act": act, "layer_norm_eps": eps,
        "projection_dim": projection_dim, "attention_dropout": 0.0, "dropout": 0.0,
        "initializer_factor": 1.0, "initializer_range": 0.02, "torch_dtype": "float32",
        "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1,
    }


def quick_gelu(x):
    return x * torch.sigmoid(1.702 * x)


class CLIPAttention(nn.Module):
    def __init__(self, c, device=None):
        super().__init__()
        d, self.heads = c["hidden_size"], c["num_attention_heads"]
        self.head_dim = d // self.heads
        self.scale = self.head_dim ** -0.5
        self.q_proj, self.k_proj = nn.Linear(d, d, device=device), nn.Linear(d, d, device=device)
        self.v_proj, self.out_proj = nn.Linear(d, d, device=device), nn.Linear(d, d, device=device)

    def forward(self, x, mask):
        b, t, d = x.shape
        def split(y):  # [B,T,D] -> [B,H,T,hd]
            return y.view(b, t, self.heads, self.head_dim).transpose(1, 2)
        q = split(self.q_proj(x) * self.scale)
        k, v = split(self.k_proj(x)), split(self.v_proj(x))
        w = torch.softmax(q @ k.transpose(-1, -2) + mask, dim=-1)  # [B,H,T,T]
        y = (w @ v).transpose(1, 2).reshape(b, t, d)
        return self.out_proj(y)


class CLIPMLP(nn.Module):
    def __init__(self, c, device=None):
        super().__init__()
        self.act = c["hidden_act"]
        self.fc1 = nn.Linear(c["hidden_size"], c["intermediate_size"], device=device)
        self.fc2 = nn.Linear(c["intermediate_size"], c["hidden_size"], device=device)

    def forward(self, x):
        h = self.fc1(x)
        if self.act == "quick_gelu":
            h = quick_gelu(h)
        elif self.act == "gelu":
            h = F.gelu(h)  # exact (erf) GELU, transformers' "gelu"
        else:
            raise ValueError("unsupported hidden_act %r" % self.act)
        return self.fc2(h)


class CLIPEncoderLayer(nn.Module):
    def __init__(self, c, device=None):
        super().__init__()
        d, eps = c["hidden_size"], c["layer_norm_eps"]
        self.self_attn = CLIPAttention(c, device)
        self.layer_norm1 = nn.LayerNorm(d, eps=eps, device=device)
        self.mlp = CLIPMLP(c, device)
        self.layer_norm2 = nn.LayerNorm(d, eps=eps, device=device)

    def forward(self, x, mask):
        x = x + self.self_attn(self.layer_norm1(x), mask)
        return x + self.mlp(self.layer_norm2(x))


class CLIPEncoder(nn.Module):
    def __init__(self, c, device=None):
        super().__init__()
        self.layers = nn.ModuleList(CLIPEncoderLayer(c, device) for _ in range(c["num_hidden_layers"]))


class CLIPTextEmbeddings(nn.Module):
    def __init__(self, c, position_ids=False, device=None):
        super().__init__()
        self.token_embedding = nn.Embedding(c["vocab_size"], c["hidden_size"], device=device)
        self.position_embedding = nn.Embedding(c["max_position_embeddings"], c["hidden_size"], device=device)
        self.register_buffer("position_ids", torch.arange(c["max_position_embeddings"], device=device).unsqueeze(0),
                             persistent=position_ids)

    def forward(self, ids):
        return self.token_embedding(ids) + self.position_embedding(self.position_ids[:, :ids.shape[1]])


class CLIPTextTransformer(nn.Module):
    def __init__(self, c, position_ids=False, device=None):
        super().__init__()
        self.embeddings = CLIPTextEmbeddings(c, position_ids, device)
        self.encoder = CLIPEncoder(c, device)
        self.final_layer_norm = nn.LayerNorm(c["hidden_size"], eps=c["layer_norm_eps"], device=device)

    def forward(self, ids):
        t = ids.shape[1]
        x = self.embeddings(ids)
        # causal mask: position i attends to j <= i (transformers fills with finfo.min)
        mask = torch.full((t, t), torch.finfo(x.dtype).min, dtype=x.dtype).triu(1)
        for layer in self.encoder.layers:
            x = layer(x, mask)
        return self.final_layer_norm(x)


class CLIPTextModel(nn.Module):
    """transformers CLIPTextModel. position_ids=True keeps text_model.embeddings.position_ids
    in state_dict() (older transformers versions saved it; real files sometimes carry it).
    device="meta" builds it without allocating (shapes and parameter counts only)."""

    def __init__(self, config, position_ids=False, device=None):
        super().__init__()
        self.config = dict(config)
        self.text_model = CLIPTextTransformer(self.config, position_ids, device)

    def forward(self, input_ids):
        return self.text_model(input_ids.long())


def init_random_(model, seed, std=0.02):
    """Deterministic random init (independent of torch's global RNG): linear/embedding
    weights ~ N(0, std), biases ~ N(0, std), layer norms 1 + N(0, 0.1) and N(0, 0.1), so that
    a swapped weight/bias or a missing norm shows in a comparison."""
    g = torch.Generator().manual_seed(int(seed))
    with torch.no_grad():
        for name, p in model.named_parameters():
            r = torch.randn(p.shape, generator=g, dtype=torch.float32)
            if "layer_norm" in name:
                p.copy_(1.0 + 0.1 * r if name.endswith("weight") else 0.1 * r)
            elif "embedding" in name:
                p.copy_(r * (4 * std))
            else:
                fan_in = p.shape[-1] if p.dim() > 1 else 1
                scale = std if p.dim() == 1 else 1.0 / math.sqrt(fan_in)
                p.copy_(r * scale)
    return model


def round_to_storage_(module, dtype):
    """Rounds every floating parameter/buffer to the storage dtype ("f32"/"f16"/"bf16") and back
    to float32, so the module holds exactly the values a file of that dtype holds."""
    tdt = {"f32": None, "f16": torch.float16, "bf16": torch.bfloat16}[dtype]
    if tdt is None:
        return module
    with torch.no_grad():
        for t in list(module.parameters()) + list(module.buffers()):
            if t.is_floating_point():
                t.copy_(t.to(tdt).float())
    return module
