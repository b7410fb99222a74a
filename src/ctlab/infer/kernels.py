"""Matrix products of decode steps: one row times a weight matrix, streaming the matrix once.

A decode step at batch 1 multiplies one row by every weight matrix, so it is bound by how fast
the matrices stream from memory. Two ways to do it, and which is faster depends on the CPU:

- ``transposed``: ``x @ Wᵀ`` through the BLAS, with Wᵀ (in, out) stored contiguously
  (:class:`~ctlab.infer.layout.TransposedLinear`);
- ``streamed``: :func:`streamed` writes the product as ``(x[..., None, :] · W).sum(-1) · scale``
  over W held (out, in) in its storage dtype (fp32, bf16, int8 or e4m3, with one scale per
  output row when quantised); torch's compiler (inductor) turns it into a kernel that reads
  each row of W once and converts it to fp32 in registers.

On a 2-core AMD EPYC the BLAS ran one-row products on one core and the streamed kernel took
``small``'s 49 matrices in 15 ms instead of 26 ms; on a 2-core Intel Xeon (Emerald Rapids)
the BLAS was the faster, 165 µs against 244 µs for ``tiny``'s head. :func:`faster_product`
times both on the machine at hand. Quantised weights always take the streamed kernel at one
row (a GEMM would first convert the whole matrix). With several rows (a prefill, a batch) a
GEMM on the converted matrix is faster: the kernel's loops would read the matrix once per row.

Compiling costs time once per process (seconds with the compiler's on-disk cache warm, tens of
seconds on a fresh machine), so the engine compiles only when asked (``compile=True``,
``--compile``).
"""

from __future__ import annotations

import time
import warnings

import torch
import torch.nn.functional as F
from torch import nn

# the compiled programs of a process (each model shape, row count and layer range is one) may
# outnumber dynamo's default limit of 8 variants per function, past which it runs them uncompiled
RECOMPILE_LIMIT = 64


def streamed(
    x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor | None, bias: torch.Tensor | None
) -> torch.Tensor:
    """One row x (..., 1, in) · weight (out, in) [× scale (out,)] [+ bias (out,)] → (..., 1, out)
    in x's dtype, summed in fp32."""
    out = (x[..., None, :].float() * weight.float()).sum(-1)
    out = (out if scale is None else out * scale).to(x.dtype)
    return out if bias is None else out + bias


def gemm(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor | None, bias: torch.Tensor | None) -> torch.Tensor:
    """x (..., in) · weight (out, in) converted to x's dtype [× scale (out,)] [+ bias] → (..., out).
    Quantised values convert exactly to any float dtype and the scales apply to the output;
    fp16 products of the unscaled values (up to 448) could overflow, so fp16 rows are
    multiplied in fp32."""
    if scale is None:
        return F.linear(x, weight.to(x.dtype), bias)
    dtype = torch.float32 if x.dtype == torch.float16 else x.dtype
    out = (F.linear(x.to(dtype), weight.to(dtype)) * scale.to(dtype)).to(x.dtype)
    return out if bias is None else out + bias


class Kernel:
    """``function`` compiled by inductor at its first call (so that a process that never decodes
    compiled does not import the compiler): ``dynamic`` True for any shapes, False for the shapes
    of each call (a caller marks the sizes that vary with ``torch._dynamo.maybe_mark_dynamic``).
    Where the compiler cannot build it (no C++ compiler on the machine) a call returns None, with
    a warning the first time, and the kernel stays off (``available`` False): callers then take
    their uncompiled path."""

    def __init__(self, function, dynamic: bool):
        self.function, self.dynamic = function, dynamic
        self.compiled = None
        self.available = True

    def __call__(self, *args):
        if not self.available:
            return None
        if self.compiled is None:
            limit = torch._dynamo.config
            limit.recompile_limit = max(limit.recompile_limit, RECOMPILE_LIMIT)
            # every intermediate is written out (they are vectors at decode widths), never recomputed
            # inside a matrix product's loop: inlining a norm into an int8 product made it 3× slower
            options = {"realize_opcount_threshold": 0}
            self.compiled = torch.compile(self.function, dynamic=self.dynamic, options=options)
        try:
            return self.compiled(*args)
        except torch._dynamo.exc.BackendCompilerFailed as error:
            warnings.warn(f"decoding without compiled kernels, more slowly: {error}", stacklevel=2)
            self.available = False
            return None


STREAMED = Kernel(streamed, dynamic=True)
_FASTER: dict[tuple[int, int, torch.dtype], str] = {}


def faster_product(out_features: int, in_features: int, dtype: torch.dtype = torch.float32) -> str:
    """``transposed`` or ``streamed``: the faster one-row product of an (out, in) float matrix on
    this machine, timed once per process and shape (the median of 15 calls each, after a warm-up
    that compiles :data:`STREAMED`); ``transposed`` where the kernel cannot be built."""
    key = (out_features, in_features, dtype)
    if key not in _FASTER:
        generator = torch.Generator().manual_seed(0)
        weight = torch.randn(out_features, in_features, generator=generator).to(dtype)
        weight_t, x = weight.t().contiguous(), torch.randn(1, in_features, generator=generator).to(dtype)
        with torch.inference_mode():
            if STREAMED(x, weight, None, None) is None:
                _FASTER[key] = "transposed"
                return _FASTER[key]
            times = {
                "transposed": _median_seconds(lambda: x @ weight_t),
                "streamed": _median_seconds(lambda: STREAMED(x, weight, None, None)),
            }
        _FASTER[key] = min(times, key=times.get)
    return _FASTER[key]


def _median_seconds(call, repeats: int = 15) -> float:
    call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return sorted(times)[repeats // 2]


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
    engine's compiled decoding), one row goes through the streamed kernel; otherwise a
    :func:`gemm`. It keeps ``nn.Linear``'s state dict names."""

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

    def operands(self) -> tuple[str, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """``"streamed"`` and weight, scale, bias as plain tensors, as a compiled program takes a
        matrix (:func:`ctlab.infer.layout.product`): one program then serves every model of a
        shape (the compiler would specialise on each parameter)."""
        return "streamed", self.weight.detach(), self.scale, None if self.bias is None else self.bias.detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.streaming and x.numel() == self.in_features:
            out = STREAMED(x, *self.operands()[1:])
            if out is not None:
                return out
        return gemm(x, *self.operands()[1:])
