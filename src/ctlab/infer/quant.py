"""Weight-only int8 and fp8 (e4m3) weights for inference.

Every quantised matrix is held per output row: int8 with scale = max |w| / 127.5 in
[-128, 127], e4m3 with scale = max |w| / 448 — torchao's ``Int8WeightOnlyConfig`` and
``Float8WeightOnlyConfig`` schemes (the tests check the values equal torchao's on the same
matrix). The Linear layers become :class:`~ctlab.infer.kernels.DecodeLinear`: in the engine's
compiled decoding its kernel reads the int8 / e4m3 values and converts them in registers;
otherwise it converts the matrix for a GEMM. torchao's and optimum-quanto's CPU paths convert
the whole matrix at every call, and decoded at 0.45× and 0.2× fp32 on ``small``
(BENCHMARKS.md), so ctlab keeps torchao as the reference for the values and the products, not
for the arithmetic. The router of a MoE layer stays in full precision (a small matrix whose
rounding would change which experts a token reaches).

The embeddings (a large share of a small model's weights) and the stacked expert weights of
:class:`~ctlab.model.moe.Experts` (E, out, in) are quantised the same way and dequantised to
the activation dtype where they are read: the looked-up rows, the experts a token routes to.
A head tied to the embeddings multiplies by the quantised table.
"""

from __future__ import annotations

import torch
from torch import nn

from ctlab.errors import UserError
from ctlab.infer.kernels import DecodeLinear
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
    """An embedding table (V, d) held as int8 or fp8 rows with one scale (V,) each."""

    def __init__(self, embedding: nn.Embedding, kind: str):
        super().__init__()
        values, scales = quantize_rows(embedding.weight.data, kind)
        self.register_buffer("values", values)
        self.register_buffer("scales", scales.view(-1))
        self.dtype = embedding.weight.dtype

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (...) → (..., d)."""
        return (self.values[ids].to(torch.float32) * self.scales[ids][..., None]).to(self.dtype)


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
    tied = model.config.tie_embeddings
    for module in list(model.modules()):
        for name, child in module.named_children():
            if isinstance(child, Experts) and not isinstance(child, QuantizedExperts):
                setattr(module, name, QuantizedExperts(child, kind))
            elif type(child) is nn.Linear and name != "router" and not (tied and child is model.lm_head):
                setattr(module, name, quantized_linear(child, kind))
    model.embed_tokens = QuantizedEmbedding(model.embed_tokens, kind)
    if tied:
        model.lm_head = DecodeLinear(model.embed_tokens.values, model.embed_tokens.scales)
    return model


def quantized_linear(linear: nn.Linear, kind: str) -> DecodeLinear:
    """``linear`` with its weight quantised per output row to ``kind``."""
    values, scales = quantize_rows(linear.weight.data, kind)
    return DecodeLinear(values, scales.view(-1), linear.bias)


def weight_bytes(model: nn.Module) -> int:
    """Bytes of the model's weights as stored (quantised values and their scales included; a
    tied head counted once)."""
    storages = {
        t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in (*model.parameters(), *model.buffers())
    }
    return sum(storages.values())
