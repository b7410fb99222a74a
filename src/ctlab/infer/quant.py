"""Weight-only int8 and fp8 (e4m3) weights for inference.

The Linear layers go through torchao (``Int8WeightOnlyConfig``: int8 per output channel;
``Float8WeightOnlyConfig``: e4m3 per output channel), which runs on CPU and CUDA with the
project's torch. optimum-quanto does the same, but its int8 decode measured 2.5× slower than
torchao's on ``small`` on CPU, so ctlab uses torchao. The router of a MoE layer stays in full
precision (a small matrix whose rounding would change which experts a token reaches).

torchao quantises ``nn.Linear`` modules only. The embeddings (a large share of a small
model's weights) and the stacked expert weights of :class:`~ctlab.model.moe.Experts`
(E, out, in) are quantised here with torchao's own per-row schemes (the tests check the values
equal torchao's on the same matrix): int8 with scale = max |w| / 127.5 in [-128, 127], e4m3 with
scale = max |w| / 448. They are dequantised to the activation dtype where they are read: the
looked-up rows, the experts a token routes to. A head tied to the embeddings reads the
quantised embeddings too.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ctlab.errors import UserError
from ctlab.model.decoder import Decoder
from ctlab.model.moe import Experts

FP8_MAX = 448.0  # the largest finite e4m3 value


def quantize_rows(weight: torch.Tensor, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(..., out, in) weights → quantised values of the same shape and scales (..., out, 1)."""
    peak = weight.abs().amax(dim=-1, keepdim=True).float().clamp(min=1e-12)
    if kind == "int8":  # torchao's symmetric int8: the range [-128, 127] spans ±peak
        scale = peak / 127.5
        return torch.round(weight.float() * (1.0 / scale)).clamp(-128, 127).to(torch.int8), scale
    scale = peak / FP8_MAX
    return (weight.float() / scale).to(torch.float8_e4m3fn), scale


class Dequantized:
    """Expert ``i``'s weight, dequantised to ``dtype`` when it is asked for."""

    def __init__(self, values: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype):
        self.values, self.scales, self.dtype = values, scales, dtype

    def __getitem__(self, expert: int) -> torch.Tensor:
        return (self.values[expert].to(torch.float32) * self.scales[expert]).to(self.dtype)


class QuantizedEmbedding(nn.Module):
    """An embedding table (V, d) held as int8 or fp8 rows with one scale each."""

    def __init__(self, embedding: nn.Embedding, kind: str):
        super().__init__()
        values, scales = quantize_rows(embedding.weight.data, kind)
        self.register_buffer("values", values)
        self.register_buffer("scales", scales)
        self.dtype = embedding.weight.dtype

    @property
    def weight(self) -> torch.Tensor:
        """The dequantised table (V, d), for a head tied to it."""
        return (self.values.to(torch.float32) * self.scales).to(self.dtype)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (...) → (..., d)."""
        return (self.values[ids].to(torch.float32) * self.scales[ids]).to(self.dtype)


class TiedHead(nn.Module):
    """The LM head of a model whose head is its (quantised) embedding table."""

    def __init__(self, embedding: QuantizedEmbedding):
        super().__init__()
        self.embedding = embedding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.embedding.weight.to(x.dtype))


class QuantizedExperts(Experts):
    """:class:`Experts` with int8 or fp8 weights: the same routing and dispatch, the same
    outputs up to the rounding of the weights."""

    def __init__(self, experts: Experts, kind: str):
        nn.Module.__init__(self)
        for name in ("gate_up_proj", "down_proj"):
            values, scales = quantize_rows(getattr(experts, name).data, kind)
            self.register_buffer(name, values)
            self.register_buffer(f"{name}_scale", scales)

    def expert_weights(self, dtype: torch.dtype) -> tuple[Dequantized, Dequantized]:
        return (
            Dequantized(self.gate_up_proj, self.gate_up_proj_scale, dtype),
            Dequantized(self.down_proj, self.down_proj_scale, dtype),
        )


def quantize(model: Decoder, kind: str) -> Decoder:
    """Quantise ``model``'s weights in place to ``kind`` ("int8" or "fp8"); returns it."""
    if kind not in ("int8", "fp8"):
        raise UserError(f"unknown quantisation {kind!r} (int8 or fp8)")
    from torchao.quantization import Float8WeightOnlyConfig, Int8WeightOnlyConfig, quantize_

    tied = model.config.tie_embeddings

    def chosen(module: nn.Module, name: str) -> bool:
        return isinstance(module, nn.Linear) and "router" not in name and not (tied and name == "lm_head")

    quantize_(model, Int8WeightOnlyConfig() if kind == "int8" else Float8WeightOnlyConfig(), filter_fn=chosen)
    model.embed_tokens = QuantizedEmbedding(model.embed_tokens, kind)
    if tied:
        model.lm_head = TiedHead(model.embed_tokens)
    for module in list(model.modules()):
        for name, child in module.named_children():
            if isinstance(child, Experts) and not isinstance(child, QuantizedExperts):
                setattr(module, name, QuantizedExperts(child, kind))
    return model


def weight_bytes(model: nn.Module) -> int:
    """Bytes of the model's weights as stored (quantised values and their scales included; a
    tied head counted once)."""
    seen, total = set(), 0
    for tensor in list(model.parameters()) + list(model.buffers()):
        if id(tensor) in seen:
            continue
        seen.add(id(tensor))
        total += stored_bytes(tensor)
    return total


def stored_bytes(tensor: torch.Tensor) -> int:
    """Bytes of a tensor, looking inside torchao's tensor subclasses (values + scales)."""
    inner = getattr(tensor, "__tensor_flatten__", None)
    if inner is not None and type(tensor) not in (torch.Tensor, nn.Parameter):
        names, _ = tensor.__tensor_flatten__()
        return sum(stored_bytes(getattr(tensor, n)) for n in names)
    return tensor.numel() * tensor.element_size()
