"""The decode layout, uncompiled (transposed weights) and compiled (streamed Linear layers, a
decode step through dense layers as one compiled program): each computes the model's own
function and keeps its state dict, the compiled one at decode widths through the compiled
step (on a cache) and at prefill widths through the model's code; the streaming kernel equals
a matrix product of the stored weight for every storage dtype; a compiled engine decodes what
an uncompiled one does."""

import copy

import pytest
import torch
from infer_models import VOCAB, tiny_model

from ctlab.infer import kernels, layout
from ctlab.infer.engine import Engine
from ctlab.infer.kernels import DecodeLinear
from ctlab.infer.layout import FusedDecoder, TransposedLinear, decode_layout
from ctlab.infer.quant import quantize, quantize_rows
from ctlab.infer.sampling import SamplingParams
from ctlab.infer.speculative import LayerSkip
from ctlab.model.cache import KVCache
from ctlab.model.decoder import Decoder


@pytest.mark.parametrize("compiled", [False, True], ids=["transposed", "compiled"])
def test_same_function_same_state_dict(compiled):
    model = tiny_model(num_kv_heads=2, qkv_bias=True)
    laid = decode_layout(copy.deepcopy(model), compiled)
    linear = DecodeLinear if compiled else TransposedLinear
    assert isinstance(laid.layers[0].attention.qkv_proj, linear) and isinstance(laid.lm_head, linear)
    assert type(laid) is (FusedDecoder if compiled else Decoder)
    with torch.no_grad():
        for length in (1, 3, 12):  # one row, a few (the kernel), a prefill (a GEMM)
            x = torch.randint(0, VOCAB, (1, length))
            torch.testing.assert_close(laid(x).logits, model(x).logits, atol=1e-5, rtol=0)
    ours, theirs = laid.state_dict(), model.state_dict()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    other = decode_layout(tiny_model(num_kv_heads=2, qkv_bias=True), compiled)
    other.load_state_dict(theirs)
    x = torch.randint(0, VOCAB, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(other(x).logits, model(x).logits, atol=1e-5, rtol=0)


@pytest.mark.parametrize("compiled", [False, True], ids=["transposed", "compiled"])
def test_a_tied_head_stays_tied(compiled):
    model = decode_layout(tiny_model(tie_embeddings=True), compiled)
    assert model.lm_head.weight is model.embed_tokens.weight


def cached_logits(model, steps: list[int], capacity: int = 64, batch: int = 1, row: int = 0) -> list[torch.Tensor]:
    """Logits of one row fed ``steps`` tokens at a time (a 10-token prefill first) on row
    ``row`` of a cache of ``batch`` rows, as the engine holds it (made outside inference mode,
    a view)."""
    torch.manual_seed(1)
    cache = KVCache.for_model(model, batch, capacity).rows(row, row + 1)
    out = []
    with torch.inference_mode():
        for length in [10, *steps]:
            out.append(model(torch.randint(0, VOCAB, (1, length)), cache=cache).logits)
    return out


@pytest.fixture
def fused_steps(monkeypatch) -> list[int]:
    """The number of layers of each decode step that ran as one compiled step."""
    calls = []
    append = KVCache.append_single  # called after each compiled step with its layers

    def counted(cache, layers, *args):
        calls.append(len(layers))
        return append(cache, layers, *args)

    monkeypatch.setattr(KVCache, "append_single", counted)
    return calls


@pytest.mark.parametrize(
    "shape",
    [dict(num_kv_heads=2, qkv_bias=True), dict(ffn="moe", decoder_sparse_step=2, num_kv_heads=2), dict(quantized=True)],
    ids=["dense", "dense-and-moe", "int8"],
)
def test_fused_decode_steps_equal_the_models_own(shape, fused_steps):
    quantized = shape.pop("quantized", False)
    model = tiny_model(**shape)
    if quantized:
        model = quantize(model, "int8")  # its Linear layers already stream; its layers are plain
    laid = decode_layout(copy.deepcopy(model), compiled=True)
    assert laid.fused == ([True, False] if shape.get("ffn") else [True, True])  # the MoE layer takes its own code
    steps = [1, 1, 3, 1]  # one token at a time (the compiled step), and a speculation's few (not)
    for ours, theirs in zip(cached_logits(laid, steps), cached_logits(model, steps), strict=True):
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
    assert fused_steps == [laid.fused.count(True)] * 3


@pytest.mark.parametrize(
    ("capacity", "batch", "row", "dtype"),
    [(64, 1, 0, "fp32"), (768, 1, 0, "fp32"), (768, 4, 0, "fp32"), (64, 4, 2, "fp32"), (64, 1, 0, "bf16")],
)
def test_compiled_steps_on_a_row_of_the_engines_cache_equal_the_models_own(capacity, batch, row, dtype, fused_steps):
    model = tiny_model(num_kv_heads=2, num_layers=4)
    if dtype == "bf16":
        model = model.to(torch.bfloat16)
    laid = decode_layout(copy.deepcopy(model), compiled=True)
    steps = [1, 1, 1]
    where = capacity, batch, row
    compiled, own = cached_logits(laid, steps, *where), cached_logits(model, steps, *where)
    for ours, theirs in zip(compiled, own, strict=True):  # bf16 keeps 8 significant bits
        torch.testing.assert_close(ours, theirs, atol=1e-5 if dtype == "fp32" else 0.05, rtol=0)
    assert sum(fused_steps) == 3 * 4 and max(fused_steps) <= layout.STEP_LAYERS


@pytest.mark.parametrize("storage", ["bf16", "int8", "fp8"])
@pytest.mark.parametrize("rows", [1, 5, 20])
def test_the_kernel_equals_a_matrix_product_of_the_stored_weight(storage, rows):
    torch.manual_seed(0)
    weight, bias = torch.randn(72, 40), torch.randn(72)
    if storage == "bf16":
        linear, stored = DecodeLinear(weight.bfloat16(), bias=bias), weight.bfloat16().double()
    else:
        values, scales = quantize_rows(weight, storage)
        linear, stored = DecodeLinear(values, scales.view(-1), bias), values.double() * scales.double()
    linear.streaming = True
    x = torch.randn(rows, 40)
    expected = (x.double() @ stored.T + bias.double()).float()
    torch.testing.assert_close(linear(x), expected, atol=1e-4, rtol=1e-5)
    assert linear(x[None]).shape == (1, rows, 72)


@pytest.mark.parametrize("speculator", [None, "layerskip"])
def test_a_compiled_engine_decodes_what_an_uncompiled_one_does(speculator, fused_steps):
    model = tiny_model(num_kv_heads=2, num_layers=3, qkv_bias=True)
    prompts = [list(range(5, 25)), list(range(40, 47))]
    params = SamplingParams(max_new_tokens=12, ignore_eos=True)

    def outputs(compile: bool) -> list[list[int]]:
        options = dict(speculator=LayerSkip(1, num_speculations=3)) if speculator else {}
        engine = Engine(copy.deepcopy(model), compile=compile, **options)  # one row: the compiled step's case
        return [r.output for r in engine.generate(prompts, params)]

    assert outputs(True) == outputs(False)
    # the compiled engine decoded through its step: every layer of 11 steps a prompt, or
    # LayerSkip's drafts (layer 0)
    assert 1 in fused_steps if speculator else sum(fused_steps) == 2 * 11 * 3


def test_a_model_laid_out_again_takes_the_form_asked_for():
    model = decode_layout(tiny_model(), compiled=False)
    assert isinstance(model.lm_head, TransposedLinear)
    decode_layout(model, compiled=True)
    assert isinstance(model.lm_head, DecodeLinear) and type(model) is FusedDecoder
    x = torch.randint(0, VOCAB, (1, 6))
    with torch.no_grad():
        compiled = model(x).logits
        decode_layout(model, compiled=False)
        assert type(model) is Decoder and isinstance(model.lm_head, TransposedLinear)
        torch.testing.assert_close(model(x).logits, compiled, atol=1e-5, rtol=0)


def test_where_the_compiler_cannot_build_a_kernel_the_layer_takes_its_own_code(monkeypatch):
    def fails(*args):
        raise torch._dynamo.exc.BackendCompilerFailed(fails, RuntimeError("no C++ compiler"), None)

    kernel = kernels.Kernel(kernels.streamed)
    kernel.compiled = fails
    monkeypatch.setattr(kernels, "STREAMED", kernel)
    linear = DecodeLinear(torch.randn(3, 8))
    linear.streaming = True
    x = torch.randn(1, 8)  # one row: the kernel's case
    with pytest.warns(UserWarning, match="without compiled kernels"):
        torch.testing.assert_close(linear(x), x @ linear.weight.T)
    assert not kernel.available
    torch.testing.assert_close(linear(x), x @ linear.weight.T)  # the GEMM from then on, no second warning


def test_where_the_compiler_cannot_build_the_step_the_model_takes_its_own_code(monkeypatch, fused_steps):
    def fails(*args):
        raise torch._dynamo.exc.BackendCompilerFailed(fails, RuntimeError("no C++ compiler"), None)

    step = kernels.Kernel(layout.decode_step)
    step.compiled = fails
    monkeypatch.setattr(layout, "STEP", step)
    model = tiny_model()
    laid = decode_layout(copy.deepcopy(model), compiled=True)
    with pytest.warns(UserWarning, match="without compiled kernels"):
        compiled = cached_logits(laid, [1, 1])
    for ours, theirs in zip(compiled, cached_logits(model, [1, 1]), strict=True):
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
    assert not step.available and not fused_steps


@pytest.mark.parametrize("kind", ["int8", "fp8"])
def test_quantised_products_in_fp16_do_not_overflow(kind):
    torch.manual_seed(0)
    values, scales = quantize_rows(torch.randn(64, 4096) * 0.02, kind)
    linear = DecodeLinear(values, scales.view(-1))
    x = torch.randn(3, 4096).half() * 8  # unscaled values times these would pass fp16's 65504
    out = linear(x)
    assert torch.isfinite(out).all()
    expected = x.double() @ (values.double() * scales.double()).T
    torch.testing.assert_close(out.double(), expected, rtol=1e-2, atol=0.5)
