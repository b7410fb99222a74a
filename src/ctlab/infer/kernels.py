"""The decode kernel: one row times a weight matrix, streaming the matrix once.

A decode step at batch 1 multiplies one row by every weight matrix, so it is bound by how fast
the matrices stream from memory. :func:`streamed` writes that product as
``(x[..., None, :] · W).sum(-1) · scale`` over W held (out, in) in its storage dtype (fp32,
bf16, int8 or e4m3, with one scale per output row when quantised); torch's compiler (inductor)
turns it into a kernel that reads each row of W once, converts it to fp32 in registers and
keeps both cores at work. Measured on a 2-core EPYC, the matrices alone: the 49 of ``small``
take 15 ms per token instead of 26 ms through the BLAS in fp32, and 7 ms in int8, where
dequantising a matrix for a GEMM costs more than the GEMM (whole-decode figures:
``benchmarks/bench_decode.py``, ``bench_quant.py``). With more rows than
:data:`STREAM_MAX_ROWS` (a prefill, a batch, a speculative verification) a GEMM on the
converted matrix is faster, and :class:`DecodeLinear` uses it.

Compiling costs time once per process (about 8 s with the compiler's cache warm, 30–40 s on a
fresh machine), so the engine compiles only when asked (``compile=True``,
``--compile``): chats, lightly loaded servers and long generations at batch 1 gain, a short
one-off loses.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn

# the kernel serves one row (a decode step at batch 1): at several rows its generated loops read
# the matrix once per row (a 5-row speculative verification took 19 ms per call on tiny's head,
# and LayerSkip fell to half the plain speed), so more rows take the GEMM
STREAM_MAX_ROWS = 1


def streamed(
    x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor | None, bias: torch.Tensor | None
) -> torch.Tensor:
    """x (..., in) · weight (out, in) [× scale (out,)] [+ bias (out,)] → (..., out) in x's
    dtype, summed in fp32."""
    out = (x[..., None, :].float() * weight.float()).sum(-1)
    out = (out if scale is None else out * scale).to(x.dtype)
    return out if bias is None else out + bias


class Kernel:
    """``function`` compiled by inductor (any shapes) at its first call (so that a process that
    never decodes compiled does not import the compiler). Where the compiler cannot build it (no
    C++ compiler on the machine) a call returns None, with a warning the first time, and the
    kernel stays off (``available`` False): callers then take their uncompiled path."""

    def __init__(self, function):
        self.function = function
        self.compiled = None
        self.available = True

    def __call__(self, *args):
        if not self.available:
            return None
        if self.compiled is None:
            # every intermediate is written out (they are vectors at decode widths), never recomputed
            # inside a matrix product's loop: inlining a norm into an int8 product made it 3× slower
            self.compiled = torch.compile(self.function, dynamic=True, options={"realize_opcount_threshold": 0})
        try:
            return self.compiled(*args)
        except torch._dynamo.exc.BackendCompilerFailed as error:
            warnings.warn(f"decoding without compiled kernels, more slowly: {error}", stacklevel=2)
            self.available = False
            return None


STREAMED = Kernel(streamed)


def frozen(tensor: torch.Tensor | None) -> nn.Parameter | None:
    """``tensor`` as a parameter that takes no gradient; a parameter is kept as it is (shared
    with the model it came from, its ``requires_grad`` untouched: the engine runs without
    gradients)."""
    if tensor is None or isinstance(tensor, nn.Parameter):
        return tensor
    return nn.Parameter(tensor, requires_grad=False)


class DecodeLinear(nn.Module):
    """A Linear whose weight (out, in) is held in its storage dtype — float, or int8 / e4m3
    with ``scale`` (out,) per output row: x (..., in) → (..., out). With ``streaming`` on (the
    engine's compiled decoding), :data:`STREAM_MAX_ROWS` row goes through the streaming kernel;
    otherwise a GEMM on the weight converted to x's dtype. It keeps ``nn.Linear``'s state
    dict names."""

    def __init__(self, weight: torch.Tensor, scale: torch.Tensor | None = None, bias: torch.Tensor | None = None):
        super().__init__()
        if scale is None:
            self.weight = frozen(weight)
        else:  # quantised values are a buffer: a head tied to a quantised table shares the tensor itself
            self.register_buffer("weight", weight)
        self.register_buffer("scale", scale)  # None for a float weight: then not in the state dict
        self.bias = frozen(bias)
        self.out_features, self.in_features = weight.shape
        self.streaming = False

    def operands(self) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """weight, scale, bias as plain tensors for :func:`streamed`: the compiler then makes one
        kernel for every matrix shape (it would specialise on each parameter's shape)."""
        return self.weight.detach(), self.scale, None if self.bias is None else self.bias.detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.streaming and 0 < x.numel() // self.in_features <= STREAM_MAX_ROWS:
            out = STREAMED(x, *self.operands())
            if out is not None:
                return out
        if self.scale is None:
            return F.linear(x, self.weight.to(x.dtype), self.bias)
        # (x · W) × scale: the values convert exactly to any float dtype and the scales apply to
        # the output; fp16 products of the unscaled values (up to 448) could overflow, so fp16
        # rows are multiplied in fp32
        dtype = torch.float32 if x.dtype == torch.float16 else x.dtype
        out = (F.linear(x.to(dtype), self.weight.to(dtype)) * self.scale.to(dtype)).to(x.dtype)
        return out if self.bias is None else out + self.bias
