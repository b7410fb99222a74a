"""The small model configs and models the model tests share."""

import torch

from ctlab.model.config import ModelConfig, preset
from ctlab.model.decoder import Decoder

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


KINDS = {  # the feed-forwards the decoder tests run, each with what makes its weights matter
    "dense": dict(qkv_bias=True),
    "moe": dict(ffn="moe", shared_expert_intermediate_size=32),
    "mhmoe": dict(ffn="mhmoe"),
}


def model_of(kind: str = "dense", **overrides) -> Decoder:
    """A ``tiny`` decoder of ``kind`` in eval mode, its biases random (nonzero)."""
    model = Decoder(tiny(**KINDS[kind], **overrides)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(std=0.5)
    return model


def ids(batch: int = 2, length: int = 13) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length))
