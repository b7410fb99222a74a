"""LayerSkip's schedules as functions: per-layer and per-step dropout rates, the rotational and
gradual curricula, the early-exit weights, and the loss they make."""

import math

import pytest
import torch

from ctlab.model.config import ModelConfig
from ctlab.model.decoder import Decoder
from ctlab.train.config import LayerSkipConfig, PretrainConfig
from ctlab.train.layerskip import curriculum, dropout_rates, exit_weights, sample_skips
from ctlab.train.pretrain import model_loss, token_losses


def test_dropout_rates_follow_the_per_layer_and_per_step_schedules():
    config = LayerSkipConfig(p_max=0.2)
    layers, steps = 3, 11
    assert dropout_rates(config, layers, 0, steps).tolist() == [0.0, 0.0, 0.0]  # S(0) = 0
    last_step = dropout_rates(config, layers, steps - 1, steps)  # S(T-1) = 1
    assert last_step.tolist() == pytest.approx([0.0, 0.2 * (math.sqrt(2) - 1), 0.2])  # D(0)=0, D(1)=√2−1, D(L−1)=1
    middle = dropout_rates(config, layers, 5, steps)
    s = math.exp(5 * math.log(2) / 10) - 1
    assert middle.tolist() == pytest.approx([0.0, s * 0.2 * (math.sqrt(2) - 1), s * 0.2])
    for step in range(steps):  # the last layer is at p_max·S(t), and the first is never dropped
        rates = dropout_rates(config, 4, step, steps)
        assert rates[0] == 0 and rates[-1].item() == pytest.approx(0.2 * (math.exp(step * math.log(2) / 10) - 1))
        assert torch.all(rates[1:] >= rates[:-1])
    # continual pretraining: no per-step scaling
    flat = dropout_rates(LayerSkipConfig(p_max=0.2, scale_by_step=False), layers, 0, steps)
    assert flat.tolist() == pytest.approx([0.0, 0.2 * (math.sqrt(2) - 1), 0.2])
    assert dropout_rates(LayerSkipConfig(), 4, 7, 10).tolist() == [0.0] * 4


def test_sample_skips():
    assert sample_skips(torch.zeros(4), 8) is None
    generator = torch.Generator().manual_seed(0)
    skips = sample_skips(torch.tensor([0.0, 0.5, 0.9999]), 4000, generator)
    assert skips.shape == (3, 4000) and skips.dtype == torch.bool
    assert not skips[0].any() and skips[2].float().mean() > 0.99
    assert 0.45 < skips[1].float().mean() < 0.55


def test_rotational_curriculum():
    config = LayerSkipConfig(early_exit="rotational", rotation=2)
    assert curriculum(config, 4, 0, 10) == [True, False, True, True]
    assert curriculum(config, 4, 1, 10) == [False, True, False, True]
    assert curriculum(config, 4, 2, 10) == [True, False, True, True]
    three = LayerSkipConfig(early_exit="rotational", rotation=3)
    assert curriculum(three, 5, 0, 10) == [True, False, False, True, True]
    assert curriculum(three, 5, 1, 10) == [False, True, False, False, True]
    assert curriculum(three, 5, 2, 10) == [False, False, True, False, True]
    assert curriculum(LayerSkipConfig(), 4, 3, 10) == [False, False, False, True]


def test_gradual_curriculum_switches_layers_on_from_the_last():
    config = LayerSkipConfig(early_exit="gradual", curriculum_steps=9)
    # 4 layers: one more every 9 / 3 steps; every layer is on at step curriculum_steps
    expected = {
        0: [False, False, False, True],
        2: [False, False, False, True],
        3: [False, False, True, True],
        5: [False, False, True, True],
        6: [False, True, True, True],
        8: [False, True, True, True],
        9: [True, True, True, True],
        50: [True, True, True, True],
    }
    for step, active in expected.items():
        assert curriculum(config, 4, step, 100) == active, step
    # by default the curriculum spans the whole run
    default = LayerSkipConfig(early_exit="gradual")
    assert curriculum(default, 4, 0, 12) == [False, False, False, True]
    assert curriculum(default, 4, 4, 12) == [False, False, True, True]
    assert curriculum(default, 4, 8, 12) == [False, True, True, True]


def test_exit_weights():
    config = LayerSkipConfig(e_scale=1.0)
    # e(l) = e_scale·Σ_{i≤l} i for l < L−1, e(L−1) = L−1 + Σ_{i≤L−2} i: 0, 1, 3 and 3 + 3 = 6
    assert exit_weights(config, [True] * 4) == pytest.approx([0.0, 0.1, 0.3, 0.6])
    assert exit_weights(config, [False, True, False, True]) == pytest.approx([0.0, 1 / 7, 0.0, 6 / 7])
    assert exit_weights(LayerSkipConfig(e_scale=2.0), [True] * 4) == pytest.approx([0.0, 2 / 14, 6 / 14, 6 / 14])
    for e_scale in (0.0, 0.5, 1.0, 3.0):
        for active in ([True] * 6, [True, False, True, False, False, True], [False] * 5 + [True]):  # last: always on
            weights = exit_weights(LayerSkipConfig(e_scale=e_scale), active)
            assert sum(weights) == pytest.approx(1.0)
            assert all(w == 0 for w, on in zip(weights, active, strict=True) if not on)
    assert exit_weights(LayerSkipConfig(e_scale=0.0), [True] * 4) == [0.0, 0.0, 0.0, 1.0]


def _tiny_batch():
    torch.manual_seed(0)
    model = Decoder(
        ModelConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_layers=3, num_heads=2, num_kv_heads=2)
    )
    input_ids = torch.randint(0, 50, (2, 12))
    labels = torch.roll(input_ids, -1, dims=1)
    labels[:, -1] = -100
    positions = torch.arange(12).expand(2, 12)
    return model, {"input_ids": input_ids, "labels": labels, "position_ids": positions}


def test_early_exit_loss_is_the_weighted_sum_of_the_exits():
    model, batch = _tiny_batch()
    config = PretrainConfig(data="x", out="y", steps=10, layerskip={"early_exit": "rotational", "rotation": 2})
    loss, last, out = model_loss(model, batch, config, step=1)  # step 1: layers 1 and 2 (the last)
    exits = [token_losses(model.exit_logits(h), batch["labels"]) for h in out.hidden_states[1:]]
    assert torch.allclose(last, exits[-1])
    weights = exit_weights(config.layerskip, [False, True, True])
    assert weights == pytest.approx([0.0, 1 / 4, 3 / 4])  # e = 0, 1, 2 + 1 = 3
    assert torch.allclose(loss, weights[1] * exits[1] + weights[2] * exits[2])
    # e_scale = 0: the early-exit loss is the plain loss
    zero = PretrainConfig(data="x", out="y", steps=10, layerskip={"early_exit": "rotational", "e_scale": 0})
    plain = PretrainConfig(data="x", out="y", steps=10)
    assert torch.equal(model_loss(model, batch, zero, 1)[0], model_loss(model, batch, plain, 1)[0])
