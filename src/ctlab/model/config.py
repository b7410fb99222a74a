"""One config dataclass for every ctlab model, and the named presets.

The decoder is Llama/Qwen2-shaped (RMSNorm, RoPE, grouped-query attention, SwiGLU); the
feed-forward of each layer is ``dense``, ``moe`` (Qwen2-MoE routing) or ``mhmoe`` (multi-head
MoE, arXiv 2404.15045). Field names follow the papers; :mod:`ctlab.model.hf` maps them to and
from transformers' config names.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from ctlab.fields import reject_unknown

FFN_KINDS = ("dense", "moe", "mhmoe")


@dataclass
class ModelConfig:
    vocab_size: int = 8000
    hidden_size: int = 256
    intermediate_size: int = 688  # dense SwiGLU width
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 4  # < num_heads: grouped-query attention
    head_dim: int | None = None  # default hidden_size // num_heads
    max_position_embeddings: int = 2048
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    qkv_bias: bool = False  # Qwen2 has biases on q, k, v
    tie_embeddings: bool = False
    init_std: float = 0.02
    # feed-forward: dense, moe or mhmoe
    ffn: str = "dense"
    num_experts: int = 8
    experts_per_token: int = 2
    expert_intermediate_size: int = 344
    norm_topk_prob: bool = True  # renormalise the top-k router weights (Mixtral); Qwen2-MoE: optional
    shared_expert_intermediate_size: int = 0  # > 0: a shared expert gated by sigmoid (Qwen2-MoE)
    decoder_sparse_step: int = 1  # layer i is sparse when (i + 1) % step == 0 ...
    mlp_only_layers: list[int] = field(default_factory=list)  # ... and i is not listed here
    router_aux_loss_coef: float = 0.001
    mh_heads: int = 4  # MH-MoE: sub-tokens per token
    # special token ids (from the tokenizer)
    bos_token_id: int | None = 0
    eos_token_id: int | None = 1
    pad_token_id: int | None = 2

    def __post_init__(self) -> None:
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_heads
        problems = []
        if self.ffn not in FFN_KINDS:
            problems.append(f"ffn must be one of {', '.join(FFN_KINDS)}, not {self.ffn!r}")
        if self.num_heads % self.num_kv_heads:
            problems.append("num_heads must be a multiple of num_kv_heads")
        if self.head_dim % 2:
            problems.append("head_dim must be even (rotary embedding)")
        if self.ffn != "dense" and not 1 <= self.experts_per_token <= self.num_experts:
            problems.append("experts_per_token must be between 1 and num_experts")
        if self.ffn == "mhmoe" and self.hidden_size % self.mh_heads:
            problems.append("hidden_size must be a multiple of mh_heads")
        if problems:
            raise ValueError("; ".join(problems))

    def is_sparse(self, layer: int) -> bool:
        """Whether layer ``layer`` (0-based) has a routed feed-forward (Qwen2-MoE's placement rule)."""
        return self.ffn != "dense" and layer not in self.mlp_only_layers and (layer + 1) % self.decoder_sparse_step == 0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        reject_unknown(cls, data, "model config")
        return cls(**data)

    def replace(self, **changes) -> ModelConfig:
        """A copy with ``changes``; a head_dim that was derived is derived again from the new shape."""
        reject_unknown(ModelConfig, changes, "model config")
        if "head_dim" not in changes and self.head_dim == self.hidden_size // self.num_heads:
            changes["head_dim"] = None
        return dataclasses.replace(self, **changes)


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
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r} (choose from {', '.join(PRESETS)})")
    return PRESETS[name].replace(**overrides)
