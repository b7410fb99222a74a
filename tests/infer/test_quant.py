"""Weight-only int8 and fp8: the per-row values ctlab makes equal torchao's on the same matrix,
and so do the products of a quantised Linear, quantised models stay close to fp32 (dense, MoE, tied), weights
take about a quarter of the memory, and the engine decodes with them."""

import copy

import pytest
import torch
from infer_models import VOCAB, tiny_model
from torch import nn

from ctlab.errors import UserError
from ctlab.infer.engine import Engine
from ctlab.infer.kernels import DecodeLinear
from ctlab.infer.quant import (
    QuantizedEmbedding,
    QuantizedExperts,
    quantize,
    quantize_rows,
    quantized_linear,
    weight_bytes,
)
from ctlab.infer.sampling import SamplingParams


@pytest.mark.parametrize("kind", ["int8", "fp8"])
def test_row_quantisation_equals_torchao(kind):
    from torchao.quantization import Float8WeightOnlyConfig, Int8WeightOnlyConfig, quantize_

    linear = nn.Linear(96, 40, bias=False)
    weight = linear.weight.data.clone()
    quantize_(linear, Int8WeightOnlyConfig() if kind == "int8" else Float8WeightOnlyConfig())
    values, scales = quantize_rows(weight[None], kind)
    assert torch.equal(values[0].view(torch.int8), linear.weight.qdata.view(torch.int8))
    torch.testing.assert_close(scales[0].reshape(-1), linear.weight.scale.reshape(-1), atol=0, rtol=0)


@pytest.mark.parametrize("kind", ["int8", "fp8"])
@pytest.mark.parametrize("rows", [1, 3, 16])
def test_quantised_linear_computes_what_torchao_computes(kind, rows):
    from torchao.quantization import Float8WeightOnlyConfig, Int8WeightOnlyConfig, quantize_

    torch.manual_seed(0)
    reference = nn.Linear(96, 40, bias=True)
    ours = quantized_linear(reference, kind)
    quantize_(reference, Int8WeightOnlyConfig() if kind == "int8" else Float8WeightOnlyConfig())
    x = torch.randn(1, rows, 96)
    with torch.no_grad():
        for streaming in (False, True):  # a GEMM, or the compiled kernel at one row
            ours.streaming = streaming
            torch.testing.assert_close(ours(x), reference(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["int8", "fp8"])
@pytest.mark.parametrize(
    "shape", [dict(), dict(ffn="moe", shared_expert_intermediate_size=32), dict(tie_embeddings=True)]
)
def test_quantised_models_stay_close(kind, shape):
    model = tiny_model(num_kv_heads=2, **shape)
    x = torch.randint(0, VOCAB, (2, 12))
    with torch.no_grad():
        reference = torch.log_softmax(model(x).logits, -1)
        quantised = quantize(copy.deepcopy(model), kind)
        out = torch.log_softmax(quantised(x).logits, -1)
    kl = (reference.exp() * (reference - out)).sum(-1).mean()
    assert kl < (0.01 if kind == "int8" else 0.05)
    assert isinstance(quantised.embed_tokens, QuantizedEmbedding)
    assert isinstance(quantised.layers[0].attention.qkv_proj, DecodeLinear)
    assert isinstance(quantised.lm_head, DecodeLinear)
    if shape.get("ffn") == "moe":
        assert all(isinstance(layer.ffn.experts, QuantizedExperts) for layer in quantised.layers)
    assert weight_bytes(model) / weight_bytes(quantised) > 3.5


def test_quantised_experts_compute_with_the_dequantised_weights():
    model = tiny_model(ffn="moe")
    experts = model.layers[0].ffn.experts
    quantised = QuantizedExperts(experts, "int8")
    exact = copy.deepcopy(experts)
    with torch.no_grad():
        gate_up, down = quantised.expert_weights(torch.float32)
        exact.gate_up_proj.copy_(torch.stack([gate_up[e] for e in range(4)]))
        exact.down_proj.copy_(torch.stack([down[e] for e in range(4)]))
        x = torch.randn(10, 64)
        indices = torch.randint(0, 4, (10, 2))
        weights = torch.rand(10, 2)
        torch.testing.assert_close(quantised(x, indices, weights), exact(x, indices, weights), atol=1e-6, rtol=0)


@pytest.mark.parametrize("compile", [False, True], ids=["gemm", "compiled"])
def test_the_engine_decodes_quantised_weights(compile):
    model = tiny_model(num_kv_heads=2)
    prompt = list(range(5, 25))
    params = SamplingParams(max_new_tokens=8, ignore_eos=True)
    plain = Engine(copy.deepcopy(model)).generate([prompt], params)[0].output
    quantised = Engine(quantize(model, "int8"), compile=compile).generate([prompt], params)[0].output
    assert len(quantised) == 8
    assert sum(a == b for a, b in zip(plain, quantised, strict=True)) >= 4  # rounding may flip near-ties


def test_unknown_kind():
    with pytest.raises(UserError, match="int8 or fp8"):
        quantize(tiny_model(), "int4")
