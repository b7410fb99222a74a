"""The small model configs the model tests share."""

from ctlab.model.config import ModelConfig, preset

VOCAB = 300


def tiny(**overrides) -> ModelConfig:
    """A 2-layer, 64-wide ``tiny`` (grouped-query: 2 kv heads) with small experts; ``overrides`` win."""
    base = dict(
        vocab_size=VOCAB,
        hidden_size=64,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        intermediate_size=96,
        num_experts=4,
        experts_per_token=2,
        expert_intermediate_size=32,
        mh_heads=4,
    )
    return preset("tiny", **{**base, **overrides})
