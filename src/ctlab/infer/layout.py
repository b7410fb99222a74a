"""The model laid out for decoding, in one of two forms.

A decode step multiplies a few rows (one per sequence) by every weight matrix, so it is bound by
how fast the matrices stream from memory, and, on a small model, by launching some thirty small
operations per layer (norms, the rotary turn, SwiGLU's gate, residual adds), each costing
microseconds.

- Uncompiled (the default): each float Linear becomes a :class:`TransposedLinear`, ``x @ Wᵀ``
  with Wᵀ stored contiguously (in, out) through the BLAS, which streams the matrix in the order
  the kernel consumes it (``F.linear`` on the (out, in) layout reached less than half the rate
  on a 2-core EPYC). Quantised layers multiply by a GEMM on their converted weight.
- Compiled (``compile=True``, on CPU): every Linear becomes a streaming
  :class:`~ctlab.infer.kernels.DecodeLinear` on the same parameters, and a dense layer's decode
  step (a KV cache, :data:`~ctlab.infer.kernels.STREAM_MAX_ROWS` row: batch 1) runs as

  1. one compiled region: input norm → q, k, v projection → rotary turn;
  2. :meth:`~ctlab.model.layers.Attention.attend`, as in training: the cache update, the
     observer a KV policy watches, the attention;
  3. one compiled region: output projection → residual → FFN norm → SwiGLU → residual;

  with every matrix product :func:`~ctlab.infer.kernels.streamed` and the small operations
  fused around them (``benchmarks/bench_decode.py`` has the figures). Prefills, batches,
  speculative verifications and MoE layers (whose routing picks rows by data) take the model's
  own code.

Both keep the state dict's names and values. On CUDA only the uncompiled form is used: the
compiled kernels were written and measured for CPU only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ctlab.infer.kernels import STREAM_MAX_ROWS, DecodeLinear, Kernel, streamed
from ctlab.model.decoder import Decoder, DecoderLayer
from ctlab.model.layers import SwiGLU, rms_norm, split_heads


def _project(x, norm, eps: float, qkv, cos, sin, heads: int, kv_heads: int, head_dim: int):
    """x (B, T, d) → rotated q (B, H, T, D), k and v (B, H_kv, T, D); ``norm`` the input norm's
    weight, ``qkv`` the projection's (weight, scale, bias)."""
    return split_heads(streamed(rms_norm(x, norm, eps), *qkv), (cos, sin), heads, kv_heads, head_dim)


def _finish(x, heads_out, output, norm, eps: float, gate_up, down):
    """x (B, T, d) and the attention heads' outputs (B, T, H·D) → the layer's output (B, T, d);
    ``output``, ``gate_up``, ``down``: the projections' (weight, scale, bias)."""
    x = x + streamed(heads_out, *output)
    gate, up = streamed(rms_norm(x, norm, eps), *gate_up).chunk(2, dim=-1)
    return x + streamed(F.silu(gate) * up, *down)


PROJECT = Kernel(_project)
FINISH = Kernel(_finish)


class FusedDecoderLayer(DecoderLayer):
    """A dense :class:`DecoderLayer` whose decode steps run in the two compiled regions above;
    :func:`decode_layout` gives a layer this class in place (the same modules and parameters)."""

    def forward(self, x, rotary, mask, cache=None, positions=None):
        if cache is None or x.shape[0] * x.shape[1] > STREAM_MAX_ROWS or not FINISH.available:
            return super().forward(x, rotary, mask, cache, positions)
        attention, norm, ffn_norm = self.attention, self.input_norm, self.ffn_norm
        heads = (attention.num_heads, attention.num_kv_heads, attention.head_dim)
        projected = PROJECT(x, norm.weight.detach(), norm.eps, attention.qkv_proj.operands(), *rotary, *heads)
        if projected is None:  # the compiler could not build it: the model's own code
            return super().forward(x, rotary, mask, cache, positions)
        heads_out = attention.attend(*projected, mask, cache, positions)
        operands = (
            x,
            heads_out,
            attention.o_proj.operands(),
            ffn_norm.weight.detach(),
            ffn_norm.eps,
            self.ffn.gate_up_proj.operands(),
            self.ffn.down_proj.operands(),
        )
        out = FINISH(*operands)
        return (_finish(*operands) if out is None else out), None


class TransposedLinear(nn.Module):
    """``nn.Linear`` with its weight held as (in, out): x (..., in) → (..., out)."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.weight_t = nn.Parameter(linear.weight.detach().t().contiguous(), requires_grad=False)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach(), requires_grad=False)
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x @ self.weight_t
        return out if self.bias is None else out + self.bias

    # the state dict keeps nn.Linear's names and (out, in) layout: checkpoints do not see the layout
    def _save_to_state_dict(self, destination, prefix, keep_vars):
        destination[prefix + "weight"] = self.weight_t.t() if keep_vars else self.weight_t.detach().t()
        if self.bias is not None:
            destination[prefix + "bias"] = self.bias if keep_vars else self.bias.detach()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing, unexpected, errors):
        for name in ("weight", "bias"):
            if name == "bias" and self.bias is None:
                continue
            if prefix + name not in state_dict:
                missing.append(prefix + name)
                continue
            value = state_dict[prefix + name]
            with torch.no_grad():
                (self.weight_t.copy_(value.t()) if name == "weight" else self.bias.copy_(value))


def decode_layout(model: Decoder, compiled: bool = False) -> Decoder:
    """Lay ``model`` out for decoding in place, in the module docstring's compiled or uncompiled
    form (``compiled`` is honoured on CPU); a model laid out before takes the form asked for now.
    A tied head stays tied; weights of another kind (torchao's quantised tensors) and layers of
    other classes stay as they are. Returns the model."""
    compiled = compiled and model.norm.weight.device.type == "cpu"
    tied = model.lm_head if model.config.tie_embeddings else None
    for module in list(model.modules()):
        for name, child in module.named_children():
            float_weight = type(child) in (nn.Linear, DecodeLinear) and getattr(child, "scale", None) is None
            if compiled and type(child) is TransposedLinear:
                laid = DecodeLinear(child.weight_t.detach().t().contiguous(), bias=child.bias)
            elif not float_weight or type(child.weight) is not nn.Parameter:
                continue  # quantised, or torchao's
            elif compiled and type(child) is nn.Linear:
                laid = DecodeLinear(child.weight, bias=child.bias)  # the same parameters: a tied head stays tied
            elif not compiled and child is not tied:
                laid = TransposedLinear(child)
            else:
                continue
            setattr(module, name, laid)
    for module in model.modules():
        if isinstance(module, DecodeLinear):
            module.streaming = compiled
    for layer in model.layers:
        if type(layer) in (DecoderLayer, FusedDecoderLayer) and type(layer.ffn) is SwiGLU:
            layer.__class__ = FusedDecoderLayer if compiled and _streaming(layer) else DecoderLayer
    return model


def _streaming(layer: DecoderLayer) -> bool:
    """Whether every projection of ``layer`` is a streaming :class:`DecodeLinear`."""
    projections = (layer.attention.qkv_proj, layer.attention.o_proj, layer.ffn.gate_up_proj, layer.ffn.down_proj)
    return all(isinstance(p, DecodeLinear) and p.streaming for p in projections)
