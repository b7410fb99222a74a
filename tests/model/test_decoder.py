"""The decoder on its own: packed documents, layer skipping, hand-made MoE routing,
config validation and parameter counts."""

import copy
import math

import pytest
import torch
from tiny_models import KINDS, VOCAB, ids, model_of, tiny

from ctlab.config import ConfigError
from ctlab.errors import UserError
from ctlab.model.cache import KVCache
from ctlab.model.config import ModelConfig, preset
from ctlab.model.decoder import Decoder
from ctlab.model.moe import MultiHeadMoE, SparseMoE, load_balancing_loss

ATOL = 1e-5


# ---------------------------------------------------------------- packed documents


@pytest.mark.parametrize("kind", list(KINDS))
def test_packed_equals_separate(kind):
    model = model_of(kind)
    layouts = [[4, 6, 5], [7, 1, 7]]  # two rows, different document boundaries
    rows = ids(2, 15)
    position_ids = torch.stack([torch.cat([torch.arange(n) for n in lengths]) for lengths in layouts])
    with torch.no_grad():
        packed = model(rows, position_ids=position_ids).logits
        for b, lengths in enumerate(layouts):
            start = 0
            for n in lengths:
                alone = model(rows[b : b + 1, start : start + n]).logits[0]
                torch.testing.assert_close(packed[b, start : start + n], alone, atol=ATOL, rtol=0)
                start += n


def test_plain_position_ids_equal_default():
    model = model_of("dense")
    x = ids()
    with torch.no_grad():
        torch.testing.assert_close(
            model(x).logits, model(x, position_ids=torch.arange(13).expand(2, 13)).logits, atol=0, rtol=0
        )


# ---------------------------------------------------------------- skip and hidden states


@pytest.mark.parametrize("kind", list(KINDS))
def test_skip_all_false_equals_no_skip(kind):
    model = model_of(kind, num_layers=3)
    x = ids(3, 9)
    with torch.no_grad():
        plain = model(x)
        skipped = model(x, skip=torch.zeros(3, 3, dtype=torch.bool))
    torch.testing.assert_close(skipped.logits, plain.logits, atol=0, rtol=0)
    torch.testing.assert_close(skipped.aux_loss, plain.aux_loss, atol=0, rtol=0)


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("layer", [0, 1, 2])
def test_skip_layer_equals_model_without_it(kind, layer):
    model = model_of(kind, num_layers=3)
    reduced = copy.deepcopy(model)
    del reduced.layers[layer]
    x = ids(3, 9)
    skip = torch.zeros(3, 3, dtype=torch.bool)
    skip[layer, 1] = True  # sample 1 bypasses the layer
    with torch.no_grad():
        out = model(x, skip=skip).logits
        full = model(x).logits
        without = reduced(x[1:2]).logits
    torch.testing.assert_close(out[1:2], without, atol=ATOL, rtol=0)
    torch.testing.assert_close(out[[0, 2]], full[[0, 2]], atol=ATOL, rtol=0)
    assert not torch.allclose(out[1], full[1], atol=1e-3)


def test_skip_matches_manual_layer_loop():
    from ctlab.model.layers import rotary_tables

    model = model_of("moe", num_layers=3, decoder_sparse_step=2)  # layers: dense, MoE, dense
    x = ids(2, 7)
    skip = torch.tensor([[True, False], [False, False], [True, True]])
    rotary = rotary_tables(torch.arange(7)[None], model.config.head_dim, model.config.rope_theta, torch.float32)
    with torch.no_grad():
        out = model(x, skip=skip, output_hidden_states=True)
        for b in range(2):
            h = model.embed_tokens(x[b : b + 1])
            expected = [h]
            for i, layer in enumerate(model.layers):
                if not skip[i, b]:
                    h = h + layer.attention(layer.input_norm(h), rotary, None, None)
                    ffn = layer.ffn(layer.ffn_norm(h))
                    h = h + (ffn[0] if isinstance(ffn, tuple) else ffn)
                expected.append(h)
            for got, want in zip(out.hidden_states, expected, strict=True):
                torch.testing.assert_close(got[b : b + 1], want, atol=ATOL, rtol=0)
        torch.testing.assert_close(model.exit_logits(out.hidden_states[-1]), out.logits, atol=0, rtol=0)


@pytest.mark.parametrize("kind", list(KINDS))
def test_hidden_states(kind):
    model = model_of(kind, num_layers=3)
    x = ids(2, 8)
    with torch.no_grad():
        out = model(x, output_hidden_states=True)
        assert model(x).hidden_states is None
        assert len(out.hidden_states) == model.config.num_layers + 1
        torch.testing.assert_close(out.hidden_states[0], model.embed_tokens(x), atol=0, rtol=0)
        torch.testing.assert_close(model.exit_logits(out.hidden_states[-1]), out.logits, atol=0, rtol=0)
        assert all(h.shape == (2, 8, model.config.hidden_size) for h in out.hidden_states)


# ---------------------------------------------------------------- MoE routing by hand


def test_dense_model_has_no_router():
    out = model_of("dense")(ids())
    assert out.router == [] and out.aux_loss.item() == 0.0


@pytest.mark.parametrize("kind", ["moe", "mhmoe"])
def test_zero_router_is_uniform(kind):
    model = model_of(kind, num_layers=3, decoder_sparse_step=1, num_experts=4, experts_per_token=2)
    with torch.no_grad():
        for layer in model.layers:
            layer.ffn.router.weight.zero_()
        out = model(ids(2, 10))
    per_token = model.config.mh_heads if kind == "mhmoe" else 1
    routed = 2 * 10 * per_token
    assert len(out.router) == 3
    for stats in out.router:
        assert stats.routed == routed
        torch.testing.assert_close(stats.probability_sum, torch.full((4,), routed / 4))
        assert stats.assignments.sum().item() == 2 * routed
    # uniform P_e = 1/E: the loss is Σ_e f_e = k whatever the tie-breaking
    torch.testing.assert_close(out.aux_loss, torch.tensor(2.0))
    if kind == "moe":
        assert all(stats.activation.item() == pytest.approx(0.5) for stats in out.router)


def _softmax(row):
    z = [math.exp(v) for v in row]
    return [v / sum(z) for v in z]


@pytest.mark.parametrize("renormalise", [True, False])
def test_sparse_moe_hand_made_routing(renormalise):
    config = tiny(ffn="moe", hidden_size=8, num_heads=2, num_kv_heads=2, num_experts=4, experts_per_token=2)
    config = config.replace(norm_topk_prob=renormalise)
    moe = SparseMoE(config)
    logits = [[3.0, 2.0, 1.0, 0.0], [0.0, 3.0, 2.0, 1.0], [0.0, 0.0, 5.0, 4.0]]
    top2 = [[0, 1], [1, 2], [2, 3]]
    with torch.no_grad():
        moe.router.weight.copy_(torch.cat([torch.eye(4), torch.zeros(4, 4)], dim=1))  # logit e = x[e]
    x = torch.cat([torch.tensor(logits), torch.zeros(3, 4)], dim=1)[None]  # (1, 3, 8)
    with torch.no_grad():
        out, stats = moe(x)
    probs = [_softmax(row) for row in logits]
    assert stats.routed == 3
    assert stats.assignments.tolist() == [1.0, 2.0, 2.0, 1.0]
    torch.testing.assert_close(stats.probability_sum, torch.tensor(probs).sum(0))
    assert stats.activation.item() == pytest.approx(2 / 4)
    f = [1 / 3, 2 / 3, 2 / 3, 1 / 3]
    p_mean = [sum(p[e] for p in probs) / 3 for e in range(4)]
    expected = 4 * sum(fe * pe for fe, pe in zip(f, p_mean, strict=True))
    assert load_balancing_loss([stats], 4).item() == pytest.approx(expected, rel=1e-6)
    # two layers pool their counts and probabilities
    assert load_balancing_loss([stats, stats], 4).item() == pytest.approx(expected, rel=1e-6)
    # the output: the chosen experts' SwiGLU outputs, weighted by (renormalised) probabilities
    gate_up, down = moe.experts.gate_up_proj, moe.experts.down_proj
    with torch.no_grad():
        for t in range(3):
            weights = [probs[t][e] for e in top2[t]]
            if renormalise:
                weights = [w / sum(weights) for w in weights]
            want = torch.zeros(8)
            for e, w in zip(top2[t], weights, strict=True):
                gate, up = (gate_up[e] @ x[0, t]).chunk(2)
                want += w * (down[e] @ (torch.nn.functional.silu(gate) * up))
            torch.testing.assert_close(out[0, t], want, atol=1e-6, rtol=0)


def test_unbalanced_pooling_over_layers():
    """Pooling: f and P are averaged over all layers' tokens, not a mean of per-layer losses."""
    from ctlab.model.moe import RouterStats

    a = RouterStats(torch.tensor([2.0, 0.0]), torch.tensor([1.8, 0.2]), 2, torch.tensor(0.5))
    b = RouterStats(torch.tensor([0.0, 2.0]), torch.tensor([0.6, 1.4]), 2, torch.tensor(0.5))
    f = [2 / 4, 2 / 4]
    p = [2.4 / 4, 1.6 / 4]
    expected = 2 * (f[0] * p[0] + f[1] * p[1])
    assert load_balancing_loss([a, b], 2).item() == pytest.approx(expected)
    assert load_balancing_loss([a], 2).item() == pytest.approx(2 * (1.0 * 0.9))


def _hand_mhmoe(k):
    config = tiny(ffn="mhmoe", hidden_size=8, num_heads=2, num_kv_heads=2, num_experts=4, experts_per_token=k)
    moe = MultiHeadMoE(config.replace(mh_heads=2))
    with torch.no_grad():
        moe.multi_head_proj.weight.copy_(torch.eye(8))
        moe.router.weight.copy_(torch.eye(4) * 10)  # sub-token (4 dims) → logit e = 10·x[e]
    return moe


def test_mhmoe_activation_k1():
    moe = _hand_mhmoe(1)
    e = torch.eye(4)
    # token A: both sub-tokens → expert 0 (1 of 4 experts); token B: → 0 and 2 (2 of 4)
    x = torch.stack([torch.cat([e[0], e[0]]), torch.cat([e[0], e[2]])])[None]
    with torch.no_grad():
        out, stats = moe(x)
    assert out.shape == x.shape
    assert stats.routed == 4
    assert stats.assignments.tolist() == [3.0, 0.0, 1.0, 0.0]
    assert stats.activation.item() == pytest.approx((1 / 4 + 2 / 4) / 2)
    probs = [_softmax([10.0 * v for v in e[j].tolist()]) for j in (0, 0, 0, 2)]  # the 4 sub-tokens
    torch.testing.assert_close(stats.probability_sum, torch.tensor(probs).sum(0))


def test_mhmoe_activation_k2():
    moe = _hand_mhmoe(2)
    # sub-token tops: {0, 1} and {1, 2} → 3 distinct experts; {3, 2} and {3, 2} → 2
    rows = [[0.3, 0.2, 0.0, -0.5], [-0.5, 0.3, 0.2, 0.0], [-0.5, 0.0, 0.2, 0.3], [-0.5, 0.0, 0.2, 0.3]]
    x = torch.tensor([rows[0] + rows[1], rows[2] + rows[3]])[None]
    with torch.no_grad():
        _, stats = moe(x)
    assert stats.assignments.tolist() == [1.0, 2.0, 3.0, 2.0]
    assert stats.activation.item() == pytest.approx((3 / 4 + 2 / 4) / 2)


def test_mhmoe_output_is_merge_of_routed_sub_tokens():
    moe = _hand_mhmoe(1)
    x = torch.randn(1, 3, 8)
    with torch.no_grad():
        out, _ = moe(x)
        subs = moe.multi_head_proj(x).reshape(-1, 4)
        merged = []
        for s in subs:
            p = torch.softmax(moe.router(s), -1)
            e = int(p.argmax())
            gate, up = (moe.experts.gate_up_proj[e] @ s).chunk(2)
            merged.append(moe.experts.down_proj[e] @ (torch.nn.functional.silu(gate) * up))  # k=1, renormalised: 1
        want = moe.merge_proj(torch.stack(merged).reshape(1, 3, 8))
    torch.testing.assert_close(out, want, atol=1e-6, rtol=0)


# ---------------------------------------------------------------- config


@pytest.mark.parametrize(
    "fields",
    [
        dict(ffn="dense2"),
        dict(num_heads=4, num_kv_heads=3),
        dict(hidden_size=60, num_heads=4, num_kv_heads=4),  # head_dim 15
        dict(head_dim=7),
        dict(ffn="moe", num_experts=4, experts_per_token=5),
        dict(ffn="mhmoe", experts_per_token=0),
        dict(ffn="mhmoe", hidden_size=64, num_heads=4, num_kv_heads=4, mh_heads=3),
    ],
)
def test_config_validation(fields):
    with pytest.raises(ValueError):
        ModelConfig(**fields)
    with pytest.raises(ConfigError):  # as a user's settings: one line
        ModelConfig.from_dict(fields)


def test_config_validation_is_per_kind():
    # expert settings are checked for routed models only, MH-MoE's sub-token split for MH-MoE only
    assert ModelConfig(ffn="dense", experts_per_token=99, mh_heads=3).experts_per_token == 99
    with pytest.raises(ValueError, match="experts_per_token must be at most num_experts"):
        ModelConfig(ffn="moe", experts_per_token=99)
    assert ModelConfig(ffn="moe", hidden_size=64, num_heads=4, num_kv_heads=4, mh_heads=3).mh_heads == 3
    with pytest.raises(ValueError, match="hidden_size must be a multiple of mh_heads"):
        ModelConfig(ffn="mhmoe", hidden_size=64, num_heads=4, num_kv_heads=4, mh_heads=3)


def test_config_dict_round_trip_and_unknown_fields():
    config = tiny(ffn="moe", mlp_only_layers=[1])
    assert ModelConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ConfigError, match="model config: unknown field 'bogus'"):
        ModelConfig.from_dict({**config.to_dict(), "bogus": 1})
    with pytest.raises(ConfigError, match="unknown model preset 'no-such-preset'"):
        preset("no-such-preset")


def test_is_sparse():
    config = ModelConfig(ffn="moe", num_layers=8, decoder_sparse_step=2, mlp_only_layers=[3, 4])
    assert [config.is_sparse(i) for i in range(8)] == [False, True, False, False, False, True, False, True]
    config = ModelConfig(ffn="mhmoe", num_layers=3, mlp_only_layers=[0])
    assert [config.is_sparse(i) for i in range(3)] == [False, True, True]
    assert not any(ModelConfig(num_layers=4, ffn="dense").is_sparse(i) for i in range(4))
    model = Decoder(tiny(ffn="moe", num_layers=4, decoder_sparse_step=2, mlp_only_layers=[3]))
    assert [type(layer.ffn).__name__ for layer in model.layers] == ["SwiGLU", "SparseMoE", "SwiGLU", "SwiGLU"]


def test_default_head_dim():
    assert ModelConfig(hidden_size=64, num_heads=4).head_dim == 16
    assert ModelConfig(hidden_size=64, num_heads=4, head_dim=32).head_dim == 32


def test_preset_override_recomputes_head_dim():
    assert preset("tiny", hidden_size=64, num_heads=4).head_dim == 16


def _dense_count(c: ModelConfig) -> int:
    q, kv = c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim
    attention = c.hidden_size * (q + 2 * kv) + q * c.hidden_size + (q + 2 * kv if c.qkv_bias else 0)
    mlp = 3 * c.hidden_size * c.intermediate_size
    per_layer = attention + mlp + 2 * c.hidden_size
    embeddings = c.vocab_size * c.hidden_size * (1 if c.tie_embeddings else 2)
    return embeddings + c.num_layers * per_layer + c.hidden_size


def test_ct_2b_parameter_count():
    config = preset("ct-2b")
    expected = _dense_count(config)
    assert 1.9e9 < expected < 2.2e9
    with torch.device("meta"):
        model = Decoder(config)
    assert model.num_parameters() == expected
    assert model.num_parameters(active=True) == expected


@pytest.mark.parametrize("overrides", [dict(), dict(qkv_bias=True, tie_embeddings=True, num_kv_heads=2)])
def test_dense_parameter_count(overrides):
    config = tiny(**overrides)
    assert Decoder(config).num_parameters() == _dense_count(config)


def test_tiny_moe_active_parameters():
    config = preset("tiny-moe")
    model = Decoder(config)
    d, i, e, k = config.hidden_size, config.expert_intermediate_size, config.num_experts, config.experts_per_token
    dense = _dense_count(config) - config.num_layers * 3 * d * config.intermediate_size
    per_layer_moe = e * 3 * d * i + e * d  # experts + router
    assert model.num_parameters() == dense + config.num_layers * per_layer_moe
    active = dense + config.num_layers * (k * 3 * d * i + e * d)
    assert model.num_parameters(active=True) == active
    experts = sum(p.numel() for layer in model.layers for p in layer.ffn.experts.parameters())
    assert model.num_parameters() - model.num_parameters(active=True) == experts * (e - k) // e


def test_tiny_mhmoe_active_parameters():
    config = preset("tiny-mhmoe")
    model = Decoder(config)
    d, i, e, k, h = (
        config.hidden_size,
        config.expert_intermediate_size,
        config.num_experts,
        config.experts_per_token,
        config.mh_heads,
    )
    sub = d // h
    dense = _dense_count(config) - config.num_layers * 3 * d * config.intermediate_size
    per_layer = 2 * d * d + sub * e + e * 3 * sub * i
    assert model.num_parameters() == dense + config.num_layers * per_layer
    # each of a token's h sub-tokens uses k experts: h·k of the E experts' weights per token (at most all)
    active = dense + config.num_layers * (2 * d * d + sub * e + min(h * k, e) * 3 * sub * i)
    assert model.num_parameters(active=True) == active


def test_an_input_longer_than_the_context_is_refused():
    model = Decoder(tiny(max_position_embeddings=16)).eval()
    with torch.no_grad():
        assert model(torch.zeros(1, 16, dtype=torch.long)).logits.shape == (1, 16, VOCAB)
        with pytest.raises(UserError, match="an input of 17 positions is longer than the model's context of 16"):
            model(torch.zeros(1, 17, dtype=torch.long))
        cache = KVCache.for_model(model, 1, 20)
        model(torch.zeros(1, 15, dtype=torch.long), cache=cache)
        model(torch.zeros(1, 1, dtype=torch.long), cache=cache)
        with pytest.raises(UserError, match="17 positions"):
            model(torch.zeros(1, 1, dtype=torch.long), cache=cache)
