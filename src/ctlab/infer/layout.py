"""The model laid out for decoding, in one of two forms.

A decode step multiplies a few rows (one per sequence) by every weight matrix, so it is bound by
how fast the matrices stream from memory, and, on a small model, by launching some thirty small
operations per layer (norms, the rotary turn, SwiGLU's gate, residual adds, the cache writes),
each costing microseconds.

- Uncompiled (the default): each float Linear becomes a :class:`TransposedLinear`, ``x @ Wᵀ``
  with Wᵀ stored contiguously (in, out) through the BLAS, which streams the matrix in the order
  the kernel consumes it (``F.linear`` on the (out, in) layout reached less than half the rate
  on a 2-core EPYC). Quantised layers multiply by a GEMM on their converted weight.
- Compiled (``compile=True``, on CPU): the model becomes a :class:`FusedDecoder`. A batch-1
  step of up to :data:`PROGRAM_ROWS` tokens (a decode step, a speculative verification)
  through each run of dense layers is one compiled program (:func:`decode_program`: the norms,
  projections, rotary turn, attention over the cache and the new entries, SwiGLU and residuals
  of every layer of the run, and the final norm with the head when the step makes logits);
  the new keys and values are written into the cache after it. Its matrix products take the
  form :func:`~ctlab.infer.kernels.faster_product` measured on this machine: float Linear
  layers become :class:`TransposedLinear` (the BLAS) or streamed
  :class:`~ctlab.infer.kernels.DecodeLinear` layers; quantised ones stream at one row.
  Prefills, batches of several rows, MoE layers (whose routing picks rows by data) and steps
  a KV policy watches take the model's own code (``benchmarks/bench_decode.py`` has the
  figures).

Both keep the state dict's names and values. On CUDA only the uncompiled form is used: the
compiled programs were written and measured for CPU only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ctlab.infer.kernels import DecodeLinear, Kernel, faster_product, gemm, streamed
from ctlab.model.cache import KVCache
from ctlab.model.decoder import Decoder, DecoderLayer, DecoderOutput, LayersOutput
from ctlab.model.layers import SwiGLU, rms_norm, split_heads

# the most tokens a compiled program takes in one call (a speculation's drafts and the token
# before them); each count compiles a program of its own
PROGRAM_ROWS = 16


def product(x: torch.Tensor, operands: tuple) -> torch.Tensor:
    """x (1, T, in) times one Linear's ``operands`` (its ``operands()``: a kind and weight,
    scale, bias) → (1, T, out): through the BLAS on a transposed weight, streamed at one row,
    else a GEMM on the converted weight."""
    kind, weight, scale, bias = operands
    if kind == "transposed":
        out = x @ weight
        return out if bias is None else out + bias
    if kind == "streamed" and x.shape[-2] == 1:
        return streamed(x, weight, scale, bias)
    return gemm(x, weight, scale, bias)


def decode_program(x, rotary, layers, caches, shape: tuple[int, int, int], exit):
    """T tokens x (1, T, d) of one row through ``layers`` → their output (1, T, d), their logits
    (1, T, V) when ``exit`` is given (else None), and each layer's new keys and values
    (1, H_kv, T, D), for the caller to write into the cache.

    ``rotary``: the tokens' cos, sin (1, T, D); ``layers``: per layer the input norm's weight and
    eps, the operands of the q, k, v projection, of the output projection, the FFN norm's weight
    and eps, the operands of SwiGLU's gate-and-up and down projections; ``caches``: per layer
    the keys and values (1, H_kv, S, D) the tokens attend to besides each other (every one is
    earlier); ``shape``: heads, KV heads, head width; ``exit``: the final norm's weight and eps
    and the head's operands. The program only reads the cache: when it wrote into it, torch
    2.13's on-disk cache of compiled programs served a program built for one cache view to
    another, whose writes then landed in slot 0."""
    heads, kv_heads, head_dim = shape
    new_keys, new_values = [], []
    for layer, (keys, values) in zip(layers, caches, strict=True):
        norm, eps, qkv, output, ffn_norm, ffn_eps, gate_up, down = layer
        q, k, v = split_heads(product(rms_norm(x, norm, eps), qkv), rotary, heads, kv_heads, head_dim)
        x = x + product(_attend_with_new(q, keys, values, k, v), output)
        gate, up = product(rms_norm(x, ffn_norm, ffn_eps), gate_up).chunk(2, dim=-1)  # SwiGLU, on plain tensors
        x = x + product(F.silu(gate) * up, down)
        new_keys.append(k)
        new_values.append(v)
    logits = None
    if exit is not None:
        norm, eps, head = exit
        logits = product(rms_norm(x, norm, eps), head)
    return x, logits, new_keys, new_values


def _attend_with_new(q, keys, values, key, value):
    """T tokens' queries q (1, H, T, D) attending to the cached keys, values (1, H_kv, S, D)
    and, causally, to their own keys, values (1, H_kv, T, D) → the heads' outputs (1, T, H·D):
    the softmax over S + T entries without copying the S into one tensor with the new ones, in
    fp32."""
    _, heads, length, head_dim = q.shape
    kv_heads = keys.shape[1]
    group = heads // kv_heads
    grouped = q.float().reshape(1, kv_heads, group * length, head_dim) * head_dim**-0.5  # rows (g, t)
    old = grouped @ keys.float().transpose(-1, -2)  # (1, H_kv, G·T, S)
    new = grouped @ key.float().transpose(-1, -2)  # (1, H_kv, G·T, T)
    if length > 1:
        causal = torch.ones(length, length, dtype=torch.bool, device=q.device).tril().repeat(group, 1)
        new = new.masked_fill(~causal, float("-inf"))
    top = torch.maximum(old.amax(-1, keepdim=True), new.amax(-1, keepdim=True))
    old, new = (old - top).exp(), (new - top).exp()
    out = (old @ values.float() + new @ value.float()) / (old.sum(-1, keepdim=True) + new.sum(-1, keepdim=True))
    out = out.view(1, kv_heads, group, length, head_dim).permute(0, 3, 1, 2, 4)
    return out.reshape(1, length, heads * head_dim).to(q.dtype)


PROGRAM = Kernel(decode_program, dynamic=False)


class FusedDecoder(Decoder):
    """A :class:`Decoder` whose batch-1 steps of up to :data:`PROGRAM_ROWS` tokens through dense
    layers run as :data:`PROGRAM` calls: a whole forward (every layer dense) as one, with its
    logits; :meth:`run_layers` one per run of dense layers; :meth:`exit_after` (LayerSkip's
    drafts and verifications) and :meth:`exit_logits` as one each. :func:`decode_layout` gives
    a model this class in place (the same modules and parameters); ``fused`` says which of its
    layers the program may take."""

    operands: list[tuple | None]
    fused: list[bool]
    exit_operands: tuple | None

    def forward(
        self, input_ids, position_ids=None, cache=None, skip=None, output_hidden_states=False, logits_index=None
    ):
        plain = position_ids is None and skip is None and not output_hidden_states and logits_index is None
        if plain and self._exits(input_ids.shape, cache, 0, len(self.layers)):
            x = self.embed_tokens(input_ids)
            out = self._program(x, self.input_positions(x, None, cache, 0), cache, range(len(self.layers)), True)
            if out is not None:
                return DecoderOutput(out[1], None, out[1].new_zeros(()), [])
        return super().forward(input_ids, position_ids, cache, skip, output_hidden_states, logits_index)

    def run_layers(self, x, position_ids=None, cache=None, start=0, stop=None, skip=None, output_hidden_states=False):
        stop = len(self.layers) if stop is None else stop
        if not self._programs(x.shape, cache) or skip is not None or output_hidden_states or position_ids is not None:
            return super().run_layers(x, position_ids, cache, start, stop, skip, output_hidden_states)
        position_ids = self.input_positions(x, None, cache, start)  # the context is checked once, here
        router = []
        for begin, end, fused in self._runs(start, stop):  # consecutive layers the program takes, or not
            out = self._program(x, position_ids, cache, range(begin, end), False) if fused else None
            if out is None:
                run = super().run_layers(x, position_ids, cache, begin, end)
                out, router = (run.hidden, None), router + run.router
            x = out[0]
        return LayersOutput(x, None, router)

    def exit_after(self, x, cache=None, start=0, stop=None):
        stop = len(self.layers) if stop is None else stop
        if self._exits(x.shape, cache, start, stop):
            out = self._program(x, self.input_positions(x, None, cache, start), cache, range(start, stop), True)
            if out is not None:
                return out
        return super().exit_after(x, cache, start, stop)

    def _exits(self, shape: torch.Size, cache: KVCache | None, start: int, stop: int) -> bool:
        """Whether layers [start, stop) and the exit may be one :data:`PROGRAM` call."""
        return self._programs(shape, cache) and all(self.fused[start:stop]) and self.exit_operands is not None

    def exit_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        if hidden.shape[0] == 1 and hidden.shape[1] <= PROGRAM_ROWS and self.exit_operands is not None:
            out = PROGRAM(hidden, None, [], [], self._shape(), self.exit_operands)
            if out is not None:
                return out[1]
        return super().exit_logits(hidden)

    def _programs(self, shape: torch.Size, cache: KVCache | None) -> bool:
        """Whether a call on tokens of ``shape`` (B, T[, d]) may run as :data:`PROGRAM` calls: up to
        :data:`PROGRAM_ROWS` tokens of one row on a CPU cache no observer watches."""
        return (
            cache is not None
            and shape[0] == 1
            and shape[1] <= PROGRAM_ROWS
            and cache.observer is None
            and cache.keys[0].device.type == "cpu"  # written and measured for CPU only
            and PROGRAM.available
        )

    def _runs(self, start: int, stop: int) -> list[tuple[int, int, bool]]:
        """Layers [start, stop) as runs [begin, end) of consecutive layers that :data:`PROGRAM`
        may take (fused) or not."""
        runs = []
        for i in range(start, stop):
            if runs and runs[-1][2] == self.fused[i]:
                runs[-1] = (runs[-1][0], i + 1, self.fused[i])
            else:
                runs.append((i, i + 1, self.fused[i]))
        return runs

    def _program(self, x, position_ids, cache: KVCache, layers: range, logits: bool) -> tuple | None:
        """x (1, T, d) at ``position_ids`` (1, T) through ``layers`` as one :data:`PROGRAM` call →
        their output (1, T, d) and, when ``logits``, their logits (1, T, V) (else None); None
        where the cache's entries are not one row with equally many per KV head (at least two)
        and room for T more, or the program cannot be built."""
        slots = cache.single_slots(layers, x.shape[1])
        if slots is None or min(slots) < 2:  # the compiler specialises sizes 0 and 1: a program of their own
            return None
        caches = []
        for i, slot in zip(layers, slots, strict=True):
            keys, values = cache.keys[i].narrow(2, 0, slot), cache.values[i].narrow(2, 0, slot)
            torch._dynamo.maybe_mark_dynamic(keys, 2)  # one program for every cache length
            torch._dynamo.maybe_mark_dynamic(values, 2)
            caches.append((keys, values))
        operands = self.operands[layers.start : layers.stop]
        rotary = self.rotary(position_ids, x.dtype)
        out = PROGRAM(x, rotary, operands, caches, self._shape(), self.exit_operands if logits else None)
        if out is None:
            return None
        hidden, logits, keys, values = out
        cache.append_rows(layers, slots, keys, values, position_ids)
        return hidden, logits

    def _apply(self, fn, *args, **kwargs):
        super()._apply(fn, *args, **kwargs)
        self.lay_out()
        return self

    def _shape(self) -> tuple[int, int, int]:
        return self.config.num_heads, self.config.num_kv_heads, self.config.head_dim

    def lay_out(self) -> None:
        """Take the layers' and the head's operands (:func:`decode_program`'s plain tensors, which
        share the parameters' storage: one compiled program then serves every model of a shape),
        and which layers the program may take. :func:`decode_layout` calls it, and so does every
        ``.to()``, ``.half()`` or ``.float()`` (they give the parameters new storage); a module
        or a parameter replaced later (``quantize``, ``load_state_dict(assign=True)``) is not
        seen until the model is laid out again (values loaded in place are)."""
        self.operands = [_layer_operands(layer) for layer in self.layers]
        self.fused = [operands is not None for operands in self.operands]
        head = operands_of(self.lm_head)
        self.exit_operands = None if head is None else (self.norm.weight.detach(), self.norm.eps, head)


def _layer_operands(layer: nn.Module) -> tuple | None:
    """A dense ``layer``'s weights as :func:`decode_program` takes them; None for a layer the
    program cannot take (routed, or a projection it cannot multiply)."""
    if type(layer) is not DecoderLayer or type(layer.ffn) is not SwiGLU:
        return None
    attention = layer.attention
    projections = [operands_of(p) for p in (attention.qkv_proj, attention.o_proj, layer.ffn.gate_up_proj)]
    projections.append(operands_of(layer.ffn.down_proj))
    if any(p is None for p in projections):
        return None
    qkv, output, gate_up, down = projections
    norms = layer.input_norm, layer.ffn_norm
    return norms[0].weight.detach(), norms[0].eps, qkv, output, norms[1].weight.detach(), norms[1].eps, gate_up, down


def operands_of(linear: nn.Module) -> tuple | None:
    """A projection as :func:`product` takes it; None for a layer of another kind (torchao's)."""
    if isinstance(linear, TransposedLinear | DecodeLinear):
        return linear.operands()
    if type(linear) is nn.Linear and type(linear.weight) is nn.Parameter:  # a head tied to the embeddings
        return "linear", linear.weight.detach(), None, None if linear.bias is None else linear.bias.detach()
    return None


class TransposedLinear(nn.Module):
    """A Linear whose weight (out, in) is held as (in, out), multiplied through the BLAS:
    x (..., in) → (..., out)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        self.weight_t = nn.Parameter(weight.detach().t().contiguous(), requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(bias.detach(), requires_grad=False)
        self.out_features, self.in_features = weight.shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x @ self.weight_t
        return out if self.bias is None else out + self.bias

    def operands(self) -> tuple[str, torch.Tensor, None, torch.Tensor | None]:
        """``"transposed"`` and the weight (in, out), no scale, the bias, as :func:`product` takes them."""
        return "transposed", self.weight_t.detach(), None, None if self.bias is None else self.bias.detach()

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


def decode_layout(model: Decoder, compiled: bool = False, products: str | None = None) -> Decoder:
    """Lay ``model`` out for decoding in place, in the module docstring's compiled or uncompiled
    form (``compiled`` is honoured on CPU), the compiled one's float products ``"transposed"``
    or ``"streamed"`` (default: the faster on this machine for the head's shape); a model laid
    out before takes the form asked for now. A tied head stays tied; quantised weights (ctlab's
    and torchao's) and layers of other classes stay as they are. Returns the model."""
    compiled = compiled and model.norm.weight.device.type == "cpu"
    if compiled and products is None and any(_float_linear(m) for m in model.modules()):
        head = model.lm_head
        products = faster_product(head.out_features, head.in_features, model.norm.weight.dtype)
    transposed = not compiled or products == "transposed"
    tied = model.lm_head if model.config.tie_embeddings else None
    for module in list(model.modules()):
        for name, child in module.named_children():
            if not _float_linear(child):
                continue
            kind = DecodeLinear if not transposed else nn.Linear if child is tied else TransposedLinear
            if type(child) is kind:
                continue
            if type(child) is TransposedLinear:
                weight = nn.Parameter(child.weight_t.detach().t().contiguous(), requires_grad=False)
            else:
                weight = child.weight  # the same parameter: a tied head stays tied
            if kind is DecodeLinear:
                laid = DecodeLinear(weight, bias=child.bias)
            elif kind is TransposedLinear:
                laid = TransposedLinear(weight, child.bias)
            else:
                laid = nn.Linear(weight.shape[1], weight.shape[0], bias=child.bias is not None, device="meta")
                laid.weight, laid.bias = weight, child.bias
            setattr(module, name, laid)
    for module in model.modules():
        if isinstance(module, DecodeLinear):
            module.streaming = compiled
    if type(model) in (Decoder, FusedDecoder):
        model.__class__ = FusedDecoder if compiled else Decoder
        if compiled:
            model.lay_out()
        else:
            for name in ("operands", "fused", "exit_operands"):
                vars(model).pop(name, None)
    return model


def _float_linear(module: nn.Module) -> bool:
    """Whether ``module`` is a Linear layer with a float weight in one of the layouts."""
    if type(module) is TransposedLinear:
        return True
    if type(module) is nn.Linear:
        return type(module.weight) is nn.Parameter  # not torchao's quantised tensor
    return type(module) is DecodeLinear and module.scale is None
