"""The decode layout, uncompiled (transposed weights) and compiled (a step of a few tokens of one
row through the dense layers as one compiled program, its float products through the BLAS on
transposed weights or streamed): each computes the model's own function and keeps its state
dict, the compiled one through the program on a cache (one token, a verification's few) and
through the model's code otherwise; the streaming kernel equals a matrix product of the stored
weight for every storage dtype; a compiled engine decodes what an uncompiled one does."""

import copy

import pytest
import torch
from infer_models import VOCAB, tiny_model

from ctlab.infer import kernels, layout
from ctlab.infer.engine import Engine
from ctlab.infer.kernels import DecodeLinear
from ctlab.infer.layout import FusedDecoder, TransposedLinear, decode_layout
from ctlab.infer.policies import SnapKV, StreamingCache
from ctlab.infer.quant import quantize, quantize_rows
from ctlab.infer.sampling import SamplingParams
from ctlab.infer.speculative import LayerSkip, PromptLookup
from ctlab.model.cache import KVCache
from ctlab.model.decoder import Decoder

FORMS = {"uncompiled": (False, None), "compiled-blas": (True, "transposed"), "compiled-streamed": (True, "streamed")}


@pytest.mark.parametrize("form", FORMS)
def test_same_function_same_state_dict(form):
    compiled, products = FORMS[form]
    model = tiny_model(num_kv_heads=2, qkv_bias=True)
    laid = decode_layout(copy.deepcopy(model), compiled, products)
    linear = DecodeLinear if products == "streamed" else TransposedLinear
    assert isinstance(laid.layers[0].attention.qkv_proj, linear) and isinstance(laid.lm_head, linear)
    assert type(laid) is (FusedDecoder if compiled else Decoder)
    with torch.no_grad():
        for length in (1, 3, 12):  # one row, a few, a prefill
            x = torch.randint(0, VOCAB, (1, length))
            torch.testing.assert_close(laid(x).logits, model(x).logits, atol=1e-5, rtol=0)
    ours, theirs = laid.state_dict(), model.state_dict()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    other = decode_layout(tiny_model(num_kv_heads=2, qkv_bias=True), compiled, products)
    other.load_state_dict(theirs)  # in place: a compiled program reads the loaded values
    x = torch.randint(0, VOCAB, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(other(x).logits, model(x).logits, atol=1e-5, rtol=0)
    for got, expected in zip(cached_logits(other, [1, 3]), cached_logits(model, [1, 3]), strict=True):
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("form", FORMS)
def test_a_tied_head_stays_tied(form):
    model = decode_layout(tiny_model(tie_embeddings=True), *FORMS[form])
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


class Steps(list):
    """The number of layers of each step that ran as one compiled program; ``tokens``: how many
    tokens each step took."""

    def __init__(self):
        super().__init__()
        self.tokens: list[int] = []

    def pairs(self) -> list[tuple[int, int]]:
        """(layers, tokens) of each step."""
        return list(zip(self, self.tokens, strict=True))


@pytest.fixture
def fused_steps(monkeypatch) -> Steps:
    steps = Steps()
    append = KVCache.append_rows  # called after each compiled program with its layers

    def counted(cache, layers, slots, keys, values, positions):
        steps.append(len(layers))
        steps.tokens.append(positions.shape[1])
        return append(cache, layers, slots, keys, values, positions)

    monkeypatch.setattr(KVCache, "append_rows", counted)
    return steps


@pytest.mark.parametrize("products", ["transposed", "streamed"])
@pytest.mark.parametrize(
    "shape",
    [
        dict(num_kv_heads=2, qkv_bias=True),
        dict(ffn="moe", decoder_sparse_step=2, num_kv_heads=2),
        dict(quantized=True),
        dict(tie_embeddings=True, num_kv_heads=1),
    ],
    ids=["dense", "dense-and-moe", "int8", "tied-head"],
)
def test_programs_equal_the_models_own_steps(shape, products, fused_steps):
    quantized = shape.pop("quantized", False)
    model = tiny_model(**shape)
    if quantized:
        model = quantize(model, "int8")  # its Linear layers stream at one row whatever the float form
    laid = decode_layout(copy.deepcopy(model), compiled=True, products=products)
    assert laid.fused == ([True, False] if shape.get("ffn") else [True, True])  # the MoE layer takes its own code
    # one token at a time, and a verification's few (attending causally to each other); the
    # 10-token prefill into the empty cache takes the model's code
    steps = [1, 1, 3, 1, 5]
    for ours, theirs in zip(cached_logits(laid, steps), cached_logits(model, steps), strict=True):
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
    assert fused_steps == [laid.fused.count(True)] * len(steps) and fused_steps.tokens == steps


@pytest.mark.parametrize("products", ["transposed", "streamed"])
@pytest.mark.parametrize(
    ("capacity", "batch", "row", "dtype"),
    [(64, 1, 0, "fp32"), (768, 1, 0, "fp32"), (768, 4, 0, "fp32"), (64, 4, 2, "fp32"), (64, 1, 0, "bf16")],
)
def test_programs_on_a_row_of_the_engines_cache_equal_the_models_own_steps(
    capacity, batch, row, dtype, products, fused_steps
):
    model = tiny_model(num_kv_heads=2, num_layers=4)
    if dtype == "bf16":
        model = model.to(torch.bfloat16)
    laid = decode_layout(copy.deepcopy(model), compiled=True, products=products)
    steps = [1, 1, 1]
    where = capacity, batch, row
    compiled, own = cached_logits(laid, steps, *where), cached_logits(model, steps, *where)
    for ours, theirs in zip(compiled, own, strict=True):  # bf16 keeps 8 significant bits
        torch.testing.assert_close(ours, theirs, atol=1e-5 if dtype == "fp32" else 0.05, rtol=0)
    assert fused_steps == [4, 4, 4]  # every layer and the head in one program a step


class Counted:
    """A compiled program that records how many layers each call took."""

    def __init__(self, program: kernels.Kernel):
        self.program, self.layers = program, []

    @property
    def available(self) -> bool:
        return self.program.available

    def __call__(self, *args):
        self.layers.append(len(args[2]))
        return self.program(*args)


def test_layer_ranges_and_exits_as_programs_equal_the_models_own(monkeypatch, fused_steps):
    """LayerSkip's calls: drafts through layers [0, E) and the shared exit, the last draft's
    entries below E, a verification of several tokens through [E, L) and the exit on the same
    cache; and an exit on its own."""
    model = tiny_model(num_kv_heads=2, num_layers=3)
    laid = decode_layout(copy.deepcopy(model), compiled=True, products="transposed")
    program = Counted(layout.PROGRAM)
    monkeypatch.setattr(layout, "PROGRAM", program)
    outputs = []
    for decoder in (laid, model):
        torch.manual_seed(2)
        cache = KVCache.for_model(decoder, 1, 64)
        found = []
        with torch.inference_mode():
            decoder(torch.randint(0, VOCAB, (1, 8)), cache=cache)
            tokens = decoder.embed_tokens(torch.randint(0, VOCAB, (1, 3)))
            exits = []
            for i in range(2):
                hidden, logits = decoder.exit_after(tokens[:, i : i + 1], cache, stop=1)
                exits.append(hidden)
                found += [hidden, logits]
            exits.append(decoder.run_layers(tokens[:, 2:], cache=cache, stop=1).hidden)
            found += decoder.exit_after(torch.cat(exits, dim=1), cache, start=1)
            found.append(decoder.exit_logits(exits[0]))
        outputs.append(found)
    for ours, theirs in zip(*outputs, strict=True):
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
    assert fused_steps == [1, 1, 1, 2] and fused_steps.tokens == [1, 1, 1, 3]
    # the prefill's last logits and the exit on its own: programs of no layer
    assert program.layers == [0, 1, 1, 1, 2, 0]


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


ENGINE_OPTIONS = {
    "plain": dict,
    "layerskip": lambda: dict(speculator=LayerSkip(1, num_speculations=3)),
    "lookup": lambda: dict(speculator=PromptLookup(4)),
    "snapkv": lambda: dict(kv_policy=SnapKV(capacity=12, window=4, kernel=3)),
    "streaming": lambda: dict(kv_policy=StreamingCache(sinks=2, recent=8)),
}


@pytest.mark.parametrize("options", ENGINE_OPTIONS)
def test_a_compiled_engine_decodes_what_an_uncompiled_one_does(options, fused_steps):
    """Plain steps, LayerSkip's drafts and verifications, prompt lookup's verifications, and
    steps on caches a policy evicted from (entries at their true positions, fewer than the
    tokens seen) run as compiled programs and decode what the model's own code does."""
    model = tiny_model(num_kv_heads=2, num_layers=3, qkv_bias=True)
    prompts = [list(range(5, 25)), [40, 41, 42, 40, 41, 42, 40]]
    params = SamplingParams(max_new_tokens=12, ignore_eos=True)

    def outputs(compile: bool) -> list[list[int]]:
        engine = Engine(copy.deepcopy(model), compile=compile, **ENGINE_OPTIONS[options]())  # one row at a time
        return [r.output for r in engine.generate(prompts, params)]

    assert outputs(True) == outputs(False)
    if options in ("plain", "snapkv", "streaming"):  # every layer of 11 steps a prompt
        assert sum(fused_steps) == 2 * 11 * 3
    elif options == "layerskip":  # drafts below the exit (1 layer), verifications of 4 tokens above it
        assert (1, 1) in fused_steps.pairs() and (2, 4) in fused_steps.pairs()
    else:  # verifications of the last token and 4 looked-up ones through all 3 layers
        assert (3, 5) in fused_steps.pairs()


@pytest.mark.parametrize("products", ["transposed", "streamed"])
def test_a_laid_out_model_cast_to_bf16_runs_its_programs_on_the_cast_weights(products, fused_steps):
    model = tiny_model(num_kv_heads=2)
    laid = decode_layout(copy.deepcopy(model), compiled=True, products=products).to(torch.bfloat16)
    own = cached_logits(model.to(torch.bfloat16), [1, 3])
    for ours, theirs in zip(cached_logits(laid, [1, 3]), own, strict=True):
        torch.testing.assert_close(ours, theirs, atol=0.05, rtol=0)
    assert fused_steps == [2, 2]


def test_a_model_laid_out_again_takes_the_form_asked_for():
    model = decode_layout(tiny_model(), compiled=False)
    assert isinstance(model.lm_head, TransposedLinear)
    decode_layout(model, compiled=True, products="streamed")
    assert isinstance(model.lm_head, DecodeLinear) and type(model) is FusedDecoder
    x = torch.randint(0, VOCAB, (1, 6))
    with torch.no_grad():
        compiled = model(x).logits
        decode_layout(model, compiled=True, products="transposed")
        assert isinstance(model.lm_head, TransposedLinear) and type(model) is FusedDecoder
        decode_layout(model, compiled=False)
        assert type(model) is Decoder and isinstance(model.lm_head, TransposedLinear)
        assert not hasattr(model, "operands")
        torch.testing.assert_close(model(x).logits, compiled, atol=1e-5, rtol=0)


def failing(monkeypatch, module, name: str) -> kernels.Kernel:
    """``module.name``, a :class:`~ctlab.infer.kernels.Kernel`, replaced by one whose compiler
    fails as on a machine without a C++ compiler."""

    def fails(*args):
        raise torch._dynamo.exc.BackendCompilerFailed(fails, RuntimeError("no C++ compiler"), None)

    original = getattr(module, name)
    kernel = kernels.Kernel(original.function, original.dynamic)
    kernel.compiled = fails
    monkeypatch.setattr(module, name, kernel)
    return kernel


def test_where_the_compiler_cannot_build_a_kernel_the_layer_takes_its_own_code(monkeypatch):
    kernel = failing(monkeypatch, kernels, "STREAMED")
    linear = DecodeLinear(torch.randn(3, 8))
    linear.streaming = True
    x = torch.randn(1, 8)  # one row: the kernel's case
    with pytest.warns(UserWarning, match="without compiled kernels"):
        torch.testing.assert_close(linear(x), x @ linear.weight.T)
    assert not kernel.available
    torch.testing.assert_close(linear(x), x @ linear.weight.T)  # the GEMM from then on, no second warning


def test_where_the_compiler_cannot_build_the_program_the_model_takes_its_own_code(monkeypatch, fused_steps):
    program = failing(monkeypatch, layout, "PROGRAM")
    model = tiny_model()
    laid = decode_layout(copy.deepcopy(model), compiled=True, products="transposed")
    with pytest.warns(UserWarning, match="without compiled kernels"):
        compiled = cached_logits(laid, [1, 1])
    for ours, theirs in zip(compiled, cached_logits(model, [1, 1]), strict=True):
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
    assert not program.available and not fused_steps


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


def test_where_the_compiler_cannot_build_a_kernel_the_products_take_the_blas(monkeypatch):
    failing(monkeypatch, kernels, "STREAMED")
    monkeypatch.setattr(kernels, "_FASTER", {})
    with pytest.warns(UserWarning, match="without compiled kernels"):
        assert kernels.faster_product(24, 16) == "transposed"
