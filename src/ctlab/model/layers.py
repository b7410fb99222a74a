"""The decoder's building blocks: RMSNorm, rotary embedding, attention (with or without a KV cache), SwiGLU.

Attention keeps to each document of a packed sequence: documents are told apart by their
position ids, which restart at 0 at every document (as the packed loader produces them), and
the mask is causal within a document. Projections are fused (q, k, v in one matrix; gate and
up in one) for speed; :mod:`ctlab.model.hf` splits them for transformers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ctlab.model.cache import KVCache
from ctlab.model.config import ModelConfig


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x (..., size) → (..., size), normalised in fp32 and scaled by ``weight`` (size,)."""
    return weight * F.rms_norm(x.float(), weight.shape, eps=eps).to(x.dtype)


def rotary_tables(position_ids: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype):
    """cos and signed sin, each (B, T, head_dim), for ``position_ids`` (B, T), computed in fp32.
    The sin's first half is negated: :func:`apply_rotary` then rotates with one roll."""
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64, device=position_ids.device).float() / head_dim
    inv_freq = 1.0 / (theta**exponents)
    freqs = position_ids[..., None].float() * inv_freq
    return torch.cat((freqs, freqs), dim=-1).cos().to(dtype), torch.cat((-freqs.sin(), freqs.sin()), dim=-1).to(dtype)


class RotaryTables:
    """cos and sin of every position, computed once per device in fp32 and looked up by position:
    a decode step then costs one index instead of the trigonometry. The tables are no module
    state (a model cast to bf16 and back keeps exact angles); they grow when a later position
    is asked for."""

    def __init__(self, head_dim: int, theta: float, positions: int):
        self.head_dim, self.theta, self.positions = head_dim, theta, positions
        self.tables: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def __call__(self, position_ids: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin (B, T, head_dim) in ``dtype`` for ``position_ids`` (B, T)."""
        device = position_ids.device
        table = self.tables.get(device)
        needed = int(position_ids.max()) + 1 if position_ids.numel() else 0
        if table is None or table[0].shape[1] < needed:
            self.positions = max(self.positions, needed)
            table = rotary_tables(
                torch.arange(self.positions, device=device)[None], self.head_dim, self.theta, torch.float32
            )
            self.tables[device] = table
        return table[0][0][position_ids].to(dtype), table[1][0][position_ids].to(dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (B, H, T, D) rotated by cos, signed sin (B, T, D) (:func:`rotary_tables`): each pair
    (x_i, x_{i+D/2}) turns by its angle, as in Llama: x·cos + (−x₂, x₁)·sin."""
    return torch.addcmul(x * cos[:, None], x.roll(x.shape[-1] // 2, dims=-1), sin[:, None])


def document_mask(position_ids: torch.Tensor) -> torch.Tensor | None:
    """The attention mask of a packed batch with ``position_ids`` (B, T): (B, 1, T, T) bool,
    True where attention is allowed (causal within each document), or None when every row is
    one document (plain causal attention suffices). A document starts wherever the position
    id is 0."""
    starts = position_ids == 0
    if not starts[:, 1:].any():
        return None
    length = position_ids.shape[1]
    document = torch.cumsum(starts.long(), dim=1)  # (B, T)
    same = document[:, :, None] == document[:, None, :]
    causal = torch.ones(length, length, dtype=torch.bool, device=position_ids.device).tril()
    return (same & causal)[:, None]


class Attention(nn.Module):
    def __init__(self, config: ModelConfig, layer: int):
        super().__init__()
        self.layer = layer
        self.num_heads, self.num_kv_heads, self.head_dim = config.num_heads, config.num_kv_heads, config.head_dim
        q_size, kv_size = config.num_heads * config.head_dim, config.num_kv_heads * config.head_dim
        self.qkv_proj = nn.Linear(config.hidden_size, q_size + 2 * kv_size, bias=config.qkv_bias)
        self.o_proj = nn.Linear(q_size, config.hidden_size, bias=False)

    def forward(
        self,
        x: torch.Tensor,
        rotary: tuple[torch.Tensor, torch.Tensor],
        mask: torch.Tensor | None,
        cache: KVCache | None = None,
        positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x (B, T, d) → (B, T, d). Without a cache, ``mask``: see :func:`document_mask` (None:
        causal). With one, the new keys/values join it at ``positions`` (B, T) and each query
        sees the cached entries at positions up to its own."""
        batch, length, _ = x.shape
        q, k, v = split_heads(self.qkv_proj(x), rotary, self.num_heads, self.num_kv_heads, self.head_dim)
        if cache is None:
            causal = mask is None and length > 1
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, enable_gqa=True)
            return self.o_proj(out.transpose(1, 2).reshape(batch, length, -1))
        k, v, mask, causal = cache.update(self.layer, k, v, positions)
        if cache.observer is not None:
            cache.observer(self.layer, q, cache)
        if causal:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
            return self.o_proj(out.transpose(1, 2).reshape(batch, length, -1))
        # each KV head's query group as one block of G·T queries: no KV head is repeated
        group = self.num_heads // self.num_kv_heads
        q = q.reshape(batch, self.num_kv_heads, group * length, self.head_dim)
        if mask is not None:
            mask = mask[:, :, None].expand(-1, -1, group, -1, -1).reshape(batch, self.num_kv_heads, group * length, -1)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        out = out.reshape(batch, self.num_heads, length, self.head_dim)  # CUDA kernels may return another layout
        return self.o_proj(out.transpose(1, 2).reshape(batch, length, -1))


def split_heads(
    qkv: torch.Tensor, rotary: tuple[torch.Tensor, torch.Tensor], heads: int, kv_heads: int, head_dim: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The fused projection qkv (B, T, (H + 2·H_kv)·D) → q (B, H, T, D) and k rotated, v
    (B, H_kv, T, D)."""
    batch, length, _ = qkv.shape
    rotated_heads = heads + kv_heads
    qkv = qkv.view(batch, length, rotated_heads + kv_heads, head_dim)
    qk = apply_rotary(qkv[:, :, :rotated_heads].transpose(1, 2), *rotary)  # q and k heads rotated at once
    return qk[:, :heads], qk[:, heads:], qkv[:, :, rotated_heads:].transpose(1, 2)


class SwiGLU(nn.Module):
    """down(silu(gate(x)) * up(x)), gate and up fused: x (..., d) → (..., d)."""

    def __init__(self, hidden_size: int, intermediate_size: int):
        super().__init__()
        self.gate_up_proj = nn.Linear(hidden_size, 2 * intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(F.silu(gate) * up)
