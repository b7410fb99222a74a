"""Weights laid out for decoding: each Linear's matrix stored transposed, (in, out).

A decode step multiplies one row per sequence by every weight matrix, so it is bound by how
fast the matrices stream from memory. On CPU, ``x @ Wᵀ`` with Wᵀ stored contiguously (in, out)
streams the matrix in the order the kernel consumes it; ``F.linear(x, W)`` on the (out, in)
training layout reads it as dot products of strided rows and, on a 2-core EPYC, reaches less
than half the bandwidth (measured by ``benchmarks/bench_decode.py``: the 17 matrices of
``tiny`` in 1.3 ms instead of 3.0 ms per step). The function is the same up to the order of
the sums; the engine applies the layout to the model it is given.
"""

from __future__ import annotations

import torch
from torch import nn

from ctlab.model.decoder import Decoder


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


def decode_layout(model: Decoder) -> Decoder:
    """Store ``model``'s plain Linear weights transposed, in place (a head tied to the
    embeddings, and quantised layers, keep theirs); returns the model."""
    for module in list(model.modules()):
        for name, child in module.named_children():
            if type(child) is not nn.Linear or type(child.weight) is not nn.Parameter:
                continue
            if model.config.tie_embeddings and child is model.lm_head:
                continue
            setattr(module, name, TransposedLinear(child))
    return model
