"""The tiny random models the inference tests share."""

import torch

from ctlab.model.config import preset
from ctlab.model.decoder import Decoder

VOCAB = 300

SHAPES = {
    "llama-gqa": dict(num_kv_heads=2),
    "qwen2-bias": dict(qkv_bias=True),
    "moe": dict(ffn="moe", shared_expert_intermediate_size=32, num_kv_heads=2),
}


def tiny_model(**overrides) -> Decoder:
    """A 2-layer, 64-wide model with random weights, biases and norms (every weight matters)."""
    config = preset(
        "tiny",
        **{
            "vocab_size": VOCAB,
            "hidden_size": 64,
            "num_layers": 2,
            "num_heads": 4,
            "num_kv_heads": 4,
            "intermediate_size": 96,
            "num_experts": 4,
            "experts_per_token": 2,
            "expert_intermediate_size": 32,
            "max_position_embeddings": 256,
            **overrides,
        },
    )
    model = Decoder(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(std=0.5)
            elif "norm" in name:
                p.copy_(1 + 0.2 * torch.randn_like(p))
            elif name.endswith("weight") and "embed" not in name:
                p.mul_(3)  # sharper distributions than the init's: greedy ties are rare
    return model.eval()
