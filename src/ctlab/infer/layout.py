"""The model laid out for decoding, in one of two forms.

A decode step multiplies a few rows (one per sequence) by every weight matrix, so it is bound by
how fast the matrices stream from memory, and, on a small model, by launching some thirty small
operations per layer (norms, the rotary turn, SwiGLU's gate, residual adds, the cache writes),
each costing microseconds.

- Uncompiled (the default): each float Linear becomes a :class:`TransposedLinear`, ``x @ Wᵀ``
  with Wᵀ stored contiguously (in, out) through the BLAS, which streams the matrix in the order
  the kernel consumes it (``F.linear`` on the (out, in) layout reached less than half the rate
  on a 2-core EPYC). Quantised layers multiply by a GEMM on their converted weight.
- Compiled (``compile=True``, on CPU): every Linear becomes a streaming
  :class:`~ctlab.infer.kernels.DecodeLinear` on the same parameters, and the model a
  :class:`FusedDecoder`: a batch-1 decode step through each run of up to two dense layers is
  one compiled program (:func:`decode_step`: the norms, projections (each
  :func:`~ctlab.infer.kernels.streamed`), rotary turn, attention and SwiGLU of both layers),
  after which the new keys and values are written into the cache; the final norm and the head
  are another (``benchmarks/bench_decode.py`` has the figures). Prefills, batches,
  speculative verifications, MoE layers (whose routing picks rows by data) and steps a KV
  policy watches take the model's own code, with each one-row product still streamed.

Both keep the state dict's names and values. On CUDA only the uncompiled form is used: the
compiled kernels were written and measured for CPU only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ctlab.infer.kernels import DecodeLinear, Kernel, streamed
from ctlab.model.cache import KVCache
from ctlab.model.decoder import Decoder, DecoderLayer, LayersOutput
from ctlab.model.layers import SwiGLU, rms_norm, split_heads


def decode_step(x, rotary, slots, layers, caches, heads: int, kv_heads: int, head_dim: int):
    """One token x (1, 1, d) through ``layers`` → its output (1, 1, d) and each layer's new key
    and value (1, H_kv, 1, D), for the caller to write into the cache.

    ``rotary``: its cos, sin (1, 1, D); ``layers``: per layer the input norm's weight and eps,
    the q, k, v projection's (weight, scale, bias), the output projection's, the FFN norm's
    weight and eps, SwiGLU's gate-and-up and down projections'; ``caches``: per layer the
    cache's keys and values (B, H_kv, C, D), whose row 0 holds the entries the token attends to
    in slots [0, the layer's slot in ``slots``). The program only reads the cache: when it
    wrote into it, torch 2.13's on-disk cache of compiled programs served a program built for
    one cache view to another, whose writes then landed in slot 0."""
    new_keys, new_values = [], []
    for layer, (keys, values), slot in zip(layers, caches, slots, strict=True):
        norm, eps, qkv, output, ffn_norm, ffn_eps, gate_up, down = layer
        q, k, v = split_heads(streamed(rms_norm(x, norm, eps), *qkv), rotary, heads, kv_heads, head_dim)
        heads_out = _attend_with_new(q, keys[:1, :, :slot], values[:1, :, :slot], k, v)
        x = x + streamed(heads_out, *output)
        gate, up = streamed(rms_norm(x, ffn_norm, ffn_eps), *gate_up).chunk(2, dim=-1)  # SwiGLU, on plain tensors
        x = x + streamed(F.silu(gate) * up, *down)
        new_keys.append(k)
        new_values.append(v)
    return x, new_keys, new_values


def _attend_with_new(q, keys, values, key, value):
    """One token's queries q (1, H, 1, D) attending to the cached keys, values (1, H_kv, S, D)
    and to its own key, value (1, H_kv, 1, D) → the heads' outputs (1, 1, H·D): the softmax
    over S + 1 entries without copying the S into one tensor with the new one, in fp32."""
    batch, heads, _, head_dim = q.shape
    kv_heads = keys.shape[1]
    grouped = q.float().reshape(batch, kv_heads, heads // kv_heads, head_dim) * head_dim**-0.5  # per KV head
    old = grouped @ keys.float().transpose(-1, -2)  # (1, H_kv, G, S)
    new = (grouped * key.float()).sum(-1, keepdim=True)  # (1, H_kv, G, 1)
    top = torch.maximum(old.amax(-1, keepdim=True), new)
    old, new = (old - top).exp(), (new - top).exp()
    out = (old @ values.float() + new * value.float()) / (old.sum(-1, keepdim=True) + new)
    return out.to(q.dtype).reshape(batch, 1, heads * head_dim)


def exit_step(hidden, norm, eps: float, head):
    """One row's logits: hidden (1, 1, d) through the final norm (its weight ``norm``) and the
    head's (weight, scale, bias) → (1, 1, V)."""
    return streamed(rms_norm(hidden, norm, eps), *head)


STEP = Kernel(decode_step)
EXIT = Kernel(exit_step)
# layers per compiled step: compiling takes longer the more layers one program holds (on a
# 2-core EPYC, the compiler's cache cold: 12 layers 125 s, 4 layers 79 s, 2 layers 30-41 s;
# warm 7 s); runs of two layers and of one (an odd run's last) are the programs a model needs
STEP_LAYERS = 2


class FusedDecoder(Decoder):
    """A :class:`Decoder` whose batch-1 decode steps through dense layers run as :data:`STEP`
    calls of up to :data:`STEP_LAYERS` layers, and whose one-row logits as one :data:`EXIT`.
    :func:`decode_layout` gives a model this class in place (the same modules and parameters);
    ``fused`` says which of its layers the step may take."""

    fused: list[bool]

    def run_layers(self, x, position_ids=None, cache=None, start=0, stop=None, skip=None, output_hidden_states=False):
        stop = len(self.layers) if stop is None else stop
        if not self._steps(x, cache) or skip is not None or output_hidden_states or position_ids is not None:
            return super().run_layers(x, position_ids, cache, start, stop, skip, output_hidden_states)
        position_ids = self.input_positions(x, None, cache, start)  # the context is checked once, here
        rotary = self.rotary(position_ids, x.dtype)
        router = []
        for begin, end, fused in self._runs(start, stop):  # consecutive layers the step takes, or not
            layers = range(begin, end)
            slots = cache.single_slots(layers) if fused else None
            out = None if slots is None else self._step(x, rotary, position_ids, cache, layers, slots)
            if out is None:
                run = super().run_layers(x, position_ids, cache, begin, end)
                out, router = run.hidden, router + run.router
            x = out
        return LayersOutput(x, None, router)

    def _steps(self, x: torch.Tensor, cache: KVCache | None) -> bool:
        """Whether this call may be a :data:`STEP`: one token of one row on a cache no observer
        watches."""
        return cache is not None and x.shape[:2] == (1, 1) and cache.observer is None and STEP.available

    def _runs(self, start: int, stop: int) -> list[tuple[int, int, bool]]:
        """Layers [start, stop) as runs [begin, end) of layers that :data:`STEP` may take
        (fused; at most :data:`STEP_LAYERS` a run) or not (as many as follow each other)."""
        runs = []
        for i in range(start, stop):
            fused = self.fused[i]
            if runs and runs[-1][2] == fused and not (fused and runs[-1][1] - runs[-1][0] == STEP_LAYERS):
                runs[-1] = (runs[-1][0], i + 1, fused)
            else:
                runs.append((i, i + 1, fused))
        return runs

    def _step(self, x, rotary, position_ids, cache: KVCache, layers: range, slots: list[int]) -> torch.Tensor | None:
        """x (1, 1, d) at ``position_ids`` (1, 1) (``rotary``: their cos, sin) through ``layers`` as
        one :data:`STEP` (None where it cannot be built)."""
        caches = [(cache.keys[i], cache.values[i]) for i in layers]
        operands = [self._operands(self.layers[i]) for i in layers]
        shape = self.config.num_heads, self.config.num_kv_heads, self.config.head_dim
        out = STEP(x, rotary, slots, operands, caches, *shape)
        if out is None:
            return None
        x, keys, values = out
        cache.append_single(layers, slots, keys, values, position_ids)
        return x

    def exit_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        head = self.lm_head
        if hidden.shape[:2] == (1, 1) and isinstance(head, DecodeLinear) and head.streaming:
            logits = EXIT(hidden, self.norm.weight.detach(), self.norm.eps, head.operands())
            if logits is not None:
                return logits
        return super().exit_logits(hidden)

    @staticmethod
    def _operands(layer: DecoderLayer) -> tuple:
        """``layer``'s weights as :func:`decode_step` takes them (plain tensors: one compiled
        program then serves every matrix shape)."""
        attention = layer.attention
        return (
            layer.input_norm.weight.detach(),
            layer.input_norm.eps,
            attention.qkv_proj.operands(),
            attention.o_proj.operands(),
            layer.ffn_norm.weight.detach(),
            layer.ffn_norm.eps,
            layer.ffn.gate_up_proj.operands(),
            layer.ffn.down_proj.operands(),
        )


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
    if type(model) in (Decoder, FusedDecoder):
        model.__class__ = FusedDecoder if compiled else Decoder
        if compiled:
            model.fused = [_fusable(layer) for layer in model.layers]
        elif "fused" in vars(model):
            del model.fused
    return model


def _fusable(layer: nn.Module) -> bool:
    """Whether :data:`STEP` may take ``layer``: a dense layer whose every projection is a
    streaming :class:`DecodeLinear`."""
    if type(layer) is not DecoderLayer or type(layer.ffn) is not SwiGLU:
        return False
    projections = (layer.attention.qkv_proj, layer.attention.o_proj, layer.ffn.gate_up_proj, layer.ffn.down_proj)
    return all(isinstance(p, DecodeLinear) and p.streaming for p in projections)
