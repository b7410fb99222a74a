"""The decoder's building blocks: RMSNorm, rotary embedding, attention, SwiGLU, and the KV cache.

Attention keeps to each document of a packed sequence: documents are told apart by their
position ids, which restart at 0 at every document (as the packed loader produces them), and
the mask is causal within a document. Projections are fused (q, k, v in one matrix; gate and
up in one) for speed; :mod:`ctlab.model.hf` splits them for transformers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ctlab.model.config import ModelConfig


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., size) → (..., size), normalised in fp32 and scaled."""
        normed = x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * normed.to(x.dtype)


def rotary_tables(position_ids: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype):
    """cos, sin of shape (B, T, head_dim) for ``position_ids`` (B, T), computed in fp32."""
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64, device=position_ids.device).float() / head_dim
    inv_freq = 1.0 / (theta**exponents)
    freqs = position_ids[..., None].float() * inv_freq
    angles = torch.cat((freqs, freqs), dim=-1)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (B, H, T, D) rotated by cos, sin (B, T, D)."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos[:, None] + rotated * sin[:, None]


def document_mask(position_ids: torch.Tensor, past: int = 0) -> torch.Tensor | None:
    """The attention mask for queries at ``position_ids`` (B, T) over ``past`` cached keys plus
    themselves: (B, 1, T, past + T) bool, True where attention is allowed, or None when every
    row is one document that starts at the first key (plain causal attention suffices).

    A document starts wherever the position id is 0; cached keys belong to the document of
    the first query (generation continues one document). None also when a single query
    continues the cached document (it sees every key).
    """
    starts = position_ids == 0
    if (past == 0 and not starts[:, 1:].any()) or (past > 0 and position_ids.shape[1] == 1 and not starts.any()):
        return None
    batch, length = position_ids.shape
    document = torch.cumsum(starts.long(), dim=1)  # (B, T)
    keys = torch.cat([document[:, :1].expand(batch, past), document], dim=1)  # (B, past + T)
    same = document[:, :, None] == keys[:, None, :]
    causal = torch.ones(length, past + length, dtype=torch.bool, device=position_ids.device).tril(past)
    return (same & causal)[:, None]


class KVCache:
    """Keys and values of every layer for the positions seen so far: per layer (B, H_kv, T, D).

    ``crop`` drops the newest positions (a rejected speculation, say).
    """

    def __init__(self, num_layers: int):
        self.keys: list[torch.Tensor | None] = [None] * num_layers
        self.values: list[torch.Tensor | None] = [None] * num_layers

    def __len__(self) -> int:
        return 0 if self.keys[0] is None else self.keys[0].shape[2]

    def update(self, layer: int, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append (B, H_kv, T_new, D) keys/values to ``layer``; returns the layer's full keys/values."""
        if self.keys[layer] is not None:
            keys = torch.cat([self.keys[layer], keys], dim=2)
            values = torch.cat([self.values[layer], values], dim=2)
        self.keys[layer], self.values[layer] = keys, values
        return keys, values

    def crop(self, length: int) -> None:
        """Keep the first ``length`` positions of every layer."""
        for i, (k, v) in enumerate(zip(self.keys, self.values, strict=True)):
            if k is not None:
                self.keys[i], self.values[i] = k[:, :, :length], v[:, :, :length]


class Attention(nn.Module):
    def __init__(self, config: ModelConfig, layer: int):
        super().__init__()
        self.layer = layer
        self.num_heads, self.num_kv_heads, self.head_dim = config.num_heads, config.num_kv_heads, config.head_dim
        q_size, kv_size = config.num_heads * config.head_dim, config.num_kv_heads * config.head_dim
        self.qkv_proj = nn.Linear(config.hidden_size, q_size + 2 * kv_size, bias=config.qkv_bias)
        self.o_proj = nn.Linear(q_size, config.hidden_size, bias=False)
        self.split = (q_size, kv_size, kv_size)

    def forward(
        self,
        x: torch.Tensor,
        rotary: tuple[torch.Tensor, torch.Tensor],
        mask: torch.Tensor | None,
        cache: KVCache | None,
    ) -> torch.Tensor:
        """x (B, T, d) → (B, T, d). ``mask``: see :func:`document_mask` (None: causal)."""
        batch, length, _ = x.shape
        q, k, v = self.qkv_proj(x).split(self.split, dim=-1)
        q = q.view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)
        k = k.view(batch, length, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = v.view(batch, length, self.num_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rotary(q, *rotary), apply_rotary(k, *rotary)
        causal = mask is None and length > 1
        if cache is not None:
            causal = causal and cache.keys[self.layer] is None  # one new query sees every cached key
            k, v = cache.update(self.layer, k, v)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, enable_gqa=True)
        return self.o_proj(out.transpose(1, 2).reshape(batch, length, -1))


class SwiGLU(nn.Module):
    """down(silu(gate(x)) * up(x)), gate and up fused: x (..., d) → (..., d)."""

    def __init__(self, hidden_size: int, intermediate_size: int):
        super().__init__()
        self.gate_up_proj = nn.Linear(hidden_size, 2 * intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(F.silu(gate) * up)
