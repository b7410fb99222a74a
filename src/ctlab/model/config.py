"""One config dataclass for every ctlab model, and the named presets.

The decoder is Llama/Qwen2-shaped (RMSNorm, RoPE, grouped-query attention, SwiGLU); the
feed-forward of each layer is ``dense``, ``moe`` (Qwen2-MoE routing) or ``mhmoe`` (multi-head
MoE, arXiv 2404.15045). Field names follow the papers; :mod:`ctlab.model.hf` maps them to and
from transformers' config names.
"""

from __future__ import annotations

import dataclasses
from dataclasses import field
from typing import Literal

from pydantic import NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt, model_validator

from ctlab.config import ConfigError, config, overlay, parse


@config
class ModelConfig:
    vocab_size: PositiveInt = 8000
    hidden_size: PositiveInt = 256
    intermediate_size: PositiveInt = 688  # dense SwiGLU width
    num_layers: PositiveInt = 4
    num_heads: PositiveInt = 4
    num_kv_heads: PositiveInt = 4  # < num_heads: grouped-query attention
    head_dim: PositiveInt | None = None  # default hidden_size // num_heads
    max_position_embeddings: PositiveInt = 2048  # the longest input the model takes
    rope_theta: PositiveFloat = 10000.0
    rms_norm_eps: PositiveFloat = 1e-5
    qkv_bias: bool = False  # Qwen2 has biases on q, k, v
    tie_embeddings: bool = False
    init_std: PositiveFloat = 0.02
    # feed-forward: dense, moe or mhmoe
    ffn: Literal["dense", "moe", "mhmoe"] = "dense"
    num_experts: PositiveInt = 8
    experts_per_token: PositiveInt = 2
    expert_intermediate_size: PositiveInt = 344
    norm_topk_prob: bool = True  # renormalise the top-k router weights (Mixtral); Qwen2-MoE: optional
    shared_expert_intermediate_size: NonNegativeInt = 0  # > 0: a shared expert gated by sigmoid (Qwen2-MoE)
    decoder_sparse_step: PositiveInt = 1  # layer i is sparse when (i + 1) % step == 0 ...
    mlp_only_layers: list[NonNegativeInt] = field(default_factory=list)  # ... and i is not listed here
    router_aux_loss_coef: NonNegativeFloat = 0.001
    mh_heads: PositiveInt = 4  # MH-MoE: sub-tokens per token
    # special token ids (from the tokenizer)
    bos_token_id: NonNegativeInt | None = 0
    eos_token_id: NonNegativeInt | None = 1
    pad_token_id: NonNegativeInt | None = 2

    def __post_init__(self) -> None:
        if self.head_dim is None:
            self.head_dim = self.derived_head_dim()

    @model_validator(mode="after")
    def _consistent(self) -> ModelConfig:
        problems = []
        if self.num_heads % self.num_kv_heads:
            problems.append("num_heads must be a multiple of num_kv_heads")
        if self.head_dim % 2:
            problems.append("head_dim must be even (rotary embedding)")
        if self.ffn != "dense" and self.experts_per_token > self.num_experts:
            problems.append("experts_per_token must be at most num_experts")
        if self.ffn == "mhmoe" and self.hidden_size % self.mh_heads:
            problems.append("hidden_size must be a multiple of mh_heads")
        for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
            if (getattr(self, name) or 0) >= self.vocab_size:
                problems.append(f"{name} must be below vocab_size ({self.vocab_size})")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def derived_head_dim(self) -> int:
        """The head width when none is given: the hidden size split over the heads."""
        return max(self.hidden_size // self.num_heads, 1)

    def is_sparse(self, layer: int) -> bool:
        """Whether layer ``layer`` (0-based) has a routed feed-forward (Qwen2-MoE's placement rule)."""
        return self.ffn != "dense" and layer not in self.mlp_only_layers and (layer + 1) % self.decoder_sparse_step == 0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict, where: str = "model config") -> ModelConfig:
        """A config from what a file holds (strictly validated: a :class:`ConfigError` otherwise)."""
        return parse(cls, data, where)

    def replace(self, **changes) -> ModelConfig:
        """A copy with ``changes``, validated as a user's settings are (a :class:`ConfigError`
        names the field); a head_dim that was derived is derived again from the new shape."""
        if "head_dim" not in changes and self.head_dim == self.derived_head_dim():
            changes["head_dim"] = None
        return parse(ModelConfig, overlay(self, changes), "model")


PRESETS: dict[str, ModelConfig] = {
    # a few M parameters: trains on 2 CPU cores
    "tiny": ModelConfig(),
    "small": ModelConfig(
        vocab_size=32000,
        hidden_size=768,
        intermediate_size=2048,
        num_layers=12,
        num_heads=12,
        num_kv_heads=4,
        max_position_embeddings=4096,
    ),
    # 8 experts of half the dense width, 2 per token: the same active feed-forward as "tiny"
    "tiny-moe": ModelConfig(ffn="moe", num_experts=8, experts_per_token=2, expert_intermediate_size=344),
    # 4 sub-tokens of 64 dims, each routed to 2 of 8 experts; with the two d×d projections about
    # the same active feed-forward compute as "tiny"
    "tiny-mhmoe": ModelConfig(
        ffn="mhmoe", num_experts=8, experts_per_token=2, expert_intermediate_size=256, mh_heads=4
    ),
    # CT-LLM's published 2B shape (for reference and parameter counting)
    "ct-2b": ModelConfig(
        vocab_size=125696,
        hidden_size=2048,
        intermediate_size=5504,
        num_layers=32,
        num_heads=16,
        num_kv_heads=16,
        max_position_embeddings=4096,
        rope_theta=10000.0,
        rms_norm_eps=1e-5,
    ),
}


def preset(name: str, **overrides) -> ModelConfig:
    """A named preset with ``overrides`` (a :class:`ConfigError` names a bad one)."""
    if name not in PRESETS:
        raise ConfigError(f"unknown model preset {name!r} (choose from {', '.join(PRESETS)})")
    return PRESETS[name].replace(**overrides)
