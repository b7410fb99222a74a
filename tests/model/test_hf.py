"""ctlab ↔ transformers: exported checkpoints give transformers' logits, HF models import exactly,
save/load round trips, and the load-balancing loss equals the Switch formula."""

import json
import warnings

import pytest
import torch
import transformers
from safetensors.torch import save_file
from tiny_models import VOCAB
from tiny_models import tiny as shared_tiny
from transformers import (
    AutoModelForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen2MoeConfig,
    Qwen2MoeForCausalLM,
)

from ctlab.errors import UserError
from ctlab.model.decoder import Decoder
from ctlab.model.hf import MHMOE_NOTE, config_from_hf, hf_config, load_model, save_pretrained
from ctlab.model.moe import load_balancing_loss

ATOL = 1e-5


def tiny(**overrides):
    """Multi-head attention unless a test asks for grouped-query."""
    return shared_tiny(**{"num_kv_heads": 4, **overrides})


def perturb(model: torch.nn.Module) -> torch.nn.Module:
    """Random nonzero biases and non-unit norm weights, so that every weight mapping matters."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(std=0.5)
            elif "norm" in name:
                p.copy_(1 + 0.2 * torch.randn_like(p))
    return model.eval()


def hf_from(folder):
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


def ids(batch=2, length=13):
    return torch.randint(0, VOCAB, (batch, length))


EXPORTS = {
    "llama": (dict(), LlamaForCausalLM),
    "qwen2-bias": (dict(qkv_bias=True), Qwen2ForCausalLM),
    "llama-gqa-tied": (dict(num_kv_heads=2, tie_embeddings=True), LlamaForCausalLM),
    "qwen2-gqa-tied": (dict(qkv_bias=True, num_kv_heads=1, tie_embeddings=True), Qwen2ForCausalLM),
    "llama-head-dim": (dict(head_dim=32), LlamaForCausalLM),
    "moe": (dict(ffn="moe"), Qwen2MoeForCausalLM),
    "moe-shared-bias": (
        dict(ffn="moe", shared_expert_intermediate_size=48, qkv_bias=True, num_kv_heads=2),
        Qwen2MoeForCausalLM,
    ),
    "moe-no-renorm": (dict(ffn="moe", norm_topk_prob=False, shared_expert_intermediate_size=40), Qwen2MoeForCausalLM),
    "moe-step2-mlp-only": (
        dict(ffn="moe", num_layers=4, decoder_sparse_step=2, mlp_only_layers=[3], experts_per_token=1),
        Qwen2MoeForCausalLM,
    ),
    "moe-tied": (dict(ffn="moe", tie_embeddings=True, norm_topk_prob=False), Qwen2MoeForCausalLM),
}


@pytest.mark.parametrize("name", list(EXPORTS))
def test_export_matches_transformers(name, tmp_path):
    overrides, cls = EXPORTS[name]
    model = perturb(Decoder(tiny(**overrides)))
    save_pretrained(model, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["architectures"] == [cls.__name__]
    hf = hf_from(tmp_path)
    assert type(hf) is cls
    x = ids()
    with torch.no_grad():
        ours, theirs = model(x).logits, hf(x).logits
    torch.testing.assert_close(ours, theirs, atol=ATOL, rtol=0)
    # the dense layers of a MoE model really are dense in transformers too
    for i, layer in enumerate(hf.model.layers):
        assert hasattr(layer.mlp, "gate") == model.config.is_sparse(i)


def test_export_moe_with_custom_head_dim(tmp_path):
    model = perturb(Decoder(tiny(ffn="moe", head_dim=32)))
    save_pretrained(model, tmp_path)
    hf = hf_from(tmp_path)  # RuntimeError: size mismatch of q/k/v/o_proj
    x = ids()
    with torch.no_grad():
        torch.testing.assert_close(model(x).logits, hf(x).logits, atol=ATOL, rtol=0)


@pytest.mark.parametrize("name", ["qwen2-bias", "moe-shared-bias", "moe-step2-mlp-only"])
def test_packed_row_matches_transformers_per_document(name, tmp_path):
    overrides, _ = EXPORTS[name]
    model = perturb(Decoder(tiny(**overrides)))
    save_pretrained(model, tmp_path)
    hf = hf_from(tmp_path)
    lengths = [5, 7, 4]
    row = ids(1, sum(lengths))
    position_ids = torch.cat([torch.arange(n) for n in lengths])[None]
    with torch.no_grad():
        packed = model(row, position_ids=position_ids).logits[0]
        start = 0
        for n in lengths:
            alone = hf(row[:, start : start + n]).logits[0]
            torch.testing.assert_close(packed[start : start + n], alone, atol=ATOL, rtol=0)
            start += n


# ---------------------------------------------------------------- import from transformers


SMALL_HF = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=128,
)
MOE_HF = dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32)

IMPORTS = {
    "llama": lambda: LlamaForCausalLM(LlamaConfig(**SMALL_HF, num_key_value_heads=2, rope_theta=5000.0)),
    "llama-tied": lambda: LlamaForCausalLM(LlamaConfig(**SMALL_HF, tie_word_embeddings=True, rms_norm_eps=1e-5)),
    "qwen2": lambda: Qwen2ForCausalLM(Qwen2Config(**SMALL_HF, num_key_value_heads=1)),
    "qwen2-moe": lambda: Qwen2MoeForCausalLM(
        Qwen2MoeConfig(**SMALL_HF, **MOE_HF, num_key_value_heads=2, shared_expert_intermediate_size=48)
    ),
    "qwen2-moe-sparse-step": lambda: Qwen2MoeForCausalLM(
        Qwen2MoeConfig(
            **{**SMALL_HF, "num_hidden_layers": 4},
            **MOE_HF,
            decoder_sparse_step=2,
            num_key_value_heads=4,  # Qwen2MoeConfig's default is 16
            mlp_only_layers=[1],
            norm_topk_prob=True,
            shared_expert_intermediate_size=40,
        )
    ),
}


@pytest.mark.parametrize("name", list(IMPORTS))
def test_import_transformers_checkpoint(name, tmp_path):
    hf = perturb(IMPORTS[name]())
    hf.save_pretrained(tmp_path)
    model = load_model(tmp_path).eval()
    x = ids()
    with torch.no_grad():
        torch.testing.assert_close(model(x).logits, hf(x).logits, atol=ATOL, rtol=0)
    assert model.config.num_layers == hf.config.num_hidden_layers
    assert model.config.tie_embeddings == hf.config.tie_word_embeddings
    if model.config.tie_embeddings:
        assert model.lm_head.weight is model.embed_tokens.weight


@pytest.mark.parametrize("name", ["qwen2-moe", "qwen2-moe-sparse-step"])
def test_import_stacked_expert_layout(name, tmp_path):
    """transformers 5 keeps experts stacked in memory (experts.gate_up_proj): a safetensors file of
    that state dict imports too."""
    hf = perturb(IMPORTS[name]())
    state = {k: v.detach().contiguous() for k, v in hf.state_dict().items()}
    assert any(k.endswith("mlp.experts.gate_up_proj") for k in state)
    save_file(state, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(hf.config.to_json_string())
    model = load_model(tmp_path).eval()
    x = ids()
    with torch.no_grad():
        torch.testing.assert_close(model(x).logits, hf(x).logits, atol=ATOL, rtol=0)


def _llama_folder(tmp_path):
    hf = LlamaForCausalLM(LlamaConfig(**SMALL_HF))
    hf.save_pretrained(tmp_path)
    return json.loads((tmp_path / "config.json").read_text())


@pytest.mark.parametrize(
    "change",
    [
        {"model_type": "gpt2"},
        {"model_type": "mistral"},
        {"rope_parameters": {"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0}},
        {"rope_scaling": {"rope_type": "dynamic", "factor": 2.0}},
        {"attention_bias": True},
    ],
)
def test_import_rejects_unsupported(change, tmp_path):
    data = _llama_folder(tmp_path)
    data.update(change)
    (tmp_path / "config.json").write_text(json.dumps(data))
    with pytest.raises(UserError, match="cannot import|rotary|biases"):
        load_model(tmp_path)
    with pytest.raises(UserError, match="cannot import|rotary|biases"):
        config_from_hf(data)


def test_missing_files(tmp_path):
    with pytest.raises(UserError, match="neither a model checkpoint nor a run folder"):
        load_model(tmp_path)
    _llama_folder(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(UserError, match="neither a model checkpoint"):
        load_model(tmp_path)


# ---------------------------------------------------------------- round trip


ROUND_TRIPS = {
    "llama": dict(),
    "qwen2-tied": dict(qkv_bias=True, tie_embeddings=True, num_kv_heads=2),
    "moe": dict(ffn="moe"),
    "moe-shared": dict(ffn="moe", shared_expert_intermediate_size=48, decoder_sparse_step=2, mlp_only_layers=[0]),
    "mhmoe": dict(ffn="mhmoe"),
    "mhmoe-tied": dict(ffn="mhmoe", tie_embeddings=True, qkv_bias=True),
}


@pytest.mark.parametrize("name", list(ROUND_TRIPS))
def test_round_trip(name, tmp_path):
    config = tiny(**ROUND_TRIPS[name], rope_theta=5000.0, rms_norm_eps=1e-6, router_aux_loss_coef=0.01)
    model = perturb(Decoder(config))
    save_pretrained(model, tmp_path)
    loaded = load_model(tmp_path).eval()
    assert loaded.config == model.config
    ours, theirs = model.state_dict(), loaded.state_dict()
    assert ours.keys() == theirs.keys()
    for key in ours:
        assert torch.equal(ours[key], theirs[key]), key
    if config.tie_embeddings:
        assert loaded.lm_head.weight is loaded.embed_tokens.weight
    x = ids()
    with torch.no_grad():
        assert torch.equal(model(x).logits, loaded(x).logits)


def test_mhmoe_checkpoint_is_ctlab_only(tmp_path):
    model = perturb(Decoder(tiny(ffn="mhmoe")))
    save_pretrained(model, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["architectures"] == ["CtlabMultiHeadMoE"]
    assert config["note"] == MHMOE_NOTE
    assert config == json.loads(json.dumps(hf_config(model.config)))
    with warnings.catch_warnings(), pytest.raises(Exception):  # noqa: B017 - any failure is right
        warnings.simplefilter("ignore")
        AutoModelForCausalLM.from_pretrained(tmp_path)
    loaded, state = load_model(tmp_path), model.state_dict()
    assert loaded.config == model.config and loaded.state_dict().keys() == state.keys()
    assert all(torch.equal(value, state[key]) for key, value in loaded.state_dict().items())


def test_tokenizer_is_copied(tmp_path):
    from ctlab.tokenizer.train import save_tokenizer, train_tokenizer

    texts = ["中文语言模型的预训练数据。", "The quick brown fox jumps over the lazy dog.", "数据清洗 123 和去重。"] * 5
    tokenizer = train_tokenizer(texts, vocab_size=300, min_frequency=1, progress=False)
    tok_dir = tmp_path / "tok"
    save_tokenizer(tokenizer, str(tok_dir), training={"texts": len(texts)})
    assert (tok_dir / "training.json").is_file()
    out = tmp_path / "ckpt"
    model = Decoder(tiny(vocab_size=tokenizer.get_vocab_size()))
    save_pretrained(model, out, tokenizer_dir=tok_dir)
    copied = {p.name for p in out.iterdir()}
    expected = {p.name for p in tok_dir.iterdir()} - {"training.json"}
    assert expected <= copied and "training.json" not in copied
    for name in expected:
        assert (out / name).read_bytes() == (tok_dir / name).read_bytes()
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    assert hf_tok.encode(texts[0]) == tokenizer.encode(texts[0]).ids
    assert hf_tok.decode(hf_tok.encode(texts[1]), skip_special_tokens=True) == texts[1]
    x = ids()
    with torch.no_grad():
        torch.testing.assert_close(load_model(out)(x).logits, model(x).logits, atol=0, rtol=0)
        torch.testing.assert_close(hf_from(out)(x).logits, model(x).logits, atol=ATOL, rtol=0)


# ---------------------------------------------------------------- load-balancing loss


def _switch_loss(probabilities: list[torch.Tensor], k: int) -> torch.Tensor:
    """E · Σ_e f_e · P_e with f_e = top-k assignments to e / tokens, pooled over layers."""
    probs = torch.cat(probabilities)  # (layers · N, E)
    num_experts = probs.shape[1]
    top = probs.topk(k, dim=-1).indices
    f = torch.bincount(top.reshape(-1), minlength=num_experts).float() / probs.shape[0]
    return num_experts * torch.sum(f * probs.mean(0))


MOE_AUX = {
    "renorm": dict(ffn="moe"),
    "shared-no-renorm": dict(ffn="moe", norm_topk_prob=False, shared_expert_intermediate_size=48),
    "step2-k1": dict(ffn="moe", num_layers=4, decoder_sparse_step=2, experts_per_token=1),
    "k3": dict(ffn="moe", num_experts=6, experts_per_token=3, mlp_only_layers=[0]),
}


@pytest.mark.parametrize("name", list(MOE_AUX))
def test_aux_loss_is_switch_formula_on_transformers_probabilities(name, tmp_path):
    model = perturb(Decoder(tiny(**MOE_AUX[name])))
    with torch.no_grad():  # sharper routers: an unbalanced routing, a loss well away from k
        for layer in model.layers:
            if hasattr(layer.ffn, "router"):
                layer.ffn.router.weight.mul_(30)
    save_pretrained(model, tmp_path)
    hf = hf_from(tmp_path)
    x = ids(3, 17)
    with torch.no_grad():
        ours = model(x)
        theirs = hf(x, output_router_logits=True)
    torch.testing.assert_close(ours.logits, theirs.logits, atol=ATOL, rtol=0)
    probabilities = list(theirs.router_logits)
    assert len(probabilities) == len(ours.router) == sum(map(model.config.is_sparse, range(model.config.num_layers)))
    for p, stats in zip(probabilities, ours.router, strict=True):
        # transformers 5.2 returns the router's softmax probabilities under the name router_logits
        torch.testing.assert_close(p.sum(-1), torch.ones(p.shape[0]))
        torch.testing.assert_close(stats.probability_sum, p.sum(0), atol=1e-5, rtol=0)
        assert stats.routed == x.numel()
    expected = _switch_loss(probabilities, model.config.experts_per_token)
    torch.testing.assert_close(ours.aux_loss, expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(load_balancing_loss(ours.router, model.config.num_experts), expected, atol=1e-6, rtol=0)
    assert abs(expected.item() - model.config.experts_per_token) > 1e-3  # not the balanced value


def test_transformers_aux_loss_applies_softmax_twice(tmp_path):
    """transformers' aux_loss soft-maxes router probabilities a second time (router_logits are
    already probabilities in 5.2), so it differs from the Switch loss ctlab reports."""
    model = perturb(Decoder(tiny(ffn="moe")))
    with torch.no_grad():
        for layer in model.layers:
            layer.ffn.router.weight.mul_(30)
    save_pretrained(model, tmp_path)
    hf = hf_from(tmp_path)
    x = ids(2, 16)
    with torch.no_grad():
        ours = model(x)
        theirs = hf(x, output_router_logits=True)
    k = model.config.experts_per_token
    probabilities = list(theirs.router_logits)
    twice = _switch_loss([torch.softmax(p, dim=-1) for p in probabilities], k)
    torch.testing.assert_close(theirs.aux_loss, twice, atol=1e-6, rtol=0)
    assert abs(theirs.aux_loss.item() - ours.aux_loss.item()) > 1e-3
    torch.testing.assert_close(ours.aux_loss, _switch_loss(probabilities, k), atol=1e-6, rtol=0)


def test_a_moe_export_loads_in_transformers_without_warnings(tmp_path, caplog):
    """A model without a shared expert exports a zero one of width 1, not an empty one: transformers
    would take empty tensors for tied weights and warn about each."""
    model = Decoder(tiny(ffn="moe")).eval()
    save_pretrained(model, tmp_path)
    transformers.utils.logging.set_verbosity_warning()
    transformers.utils.logging.enable_propagation()
    try:
        with warnings.catch_warnings(record=True) as caught, caplog.at_level("WARNING"):
            warnings.simplefilter("always")
            loaded = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    finally:
        transformers.utils.logging.disable_propagation()
        transformers.utils.logging.set_verbosity_error()
    assert [r.getMessage() for r in caplog.records] == []
    assert not [w for w in caught if "zero-element" in str(w.message) or "tie" in str(w.message)]
    ids = torch.randint(0, VOCAB, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits, rtol=1e-5, atol=ATOL)


def test_load_model_gives_the_dtype_asked_for_whatever_the_file_holds(tmp_path):
    hf = LlamaForCausalLM(LlamaConfig(**SMALL_HF)).to(torch.bfloat16)
    hf.save_pretrained(tmp_path)
    assert {p.dtype for p in load_model(tmp_path).parameters()} == {torch.float32}
    halves = load_model(tmp_path, dtype=torch.bfloat16)
    assert {p.dtype for p in halves.parameters()} == {torch.bfloat16}
    state = hf.state_dict()
    assert torch.equal(halves.embed_tokens.weight, state["model.embed_tokens.weight"])
    assert not any(p.is_meta for p in halves.parameters())


def test_special_token_ids_transformers_allows_are_imported(tmp_path):
    data = _llama_folder(tmp_path)
    data.update(pad_token_id=-1, bos_token_id=None, eos_token_id=[2, 5])
    (tmp_path / "config.json").write_text(json.dumps(data))
    config = load_model(tmp_path).config
    assert (config.pad_token_id, config.bos_token_id, config.eos_token_id) == (None, None, 2)
