"""LayerSkip training (arXiv 2404.16710): layer dropout and the early-exit loss, as pure functions.

Layer dropout: layer l of L (0-based) is skipped by each sample independently with probability
p(l, t) = S(t) · D(l) · p_max, D(l) = e^{l·ln2/(L−1)} − 1 (0 for the first layer, 1 for the
last), S(t) = e^{t·ln2/(T−1)} − 1 when pretraining from scratch, else 1.

Early-exit loss: every active layer's output goes through the shared final norm and LM head;
the loss is Σ_l ẽ(t, l) · CE_l with ẽ(t, l) = C(t, l)·e(l) / Σ_i C(t, i)·e(i), where
e(l) = e_scale · Σ_{i=0}^{l} i for l < L−1 and e(L−1) = L−1 + Σ_{i=0}^{L−2} i; the curriculum
C(t, l) is "rotational" (l mod R = t mod R) or "gradual" (layers switch on from the last one
backwards); the last layer is always on. With p_max = 0 and no early exit, training is plain.
"""

from __future__ import annotations

import math

import torch

from ctlab.train.config import LayerSkipConfig


def dropout_rates(config: LayerSkipConfig, num_layers: int, step: int, total_steps: int) -> torch.Tensor:
    """(num_layers,) skip probabilities at ``step`` (0-based) of ``total_steps``."""
    if config.p_max == 0 or num_layers < 2:
        return torch.zeros(num_layers)
    layers = torch.arange(num_layers, dtype=torch.float64)
    depth = torch.exp(layers * math.log(2) / (num_layers - 1)) - 1
    time = math.exp(step * math.log(2) / max(total_steps - 1, 1)) - 1 if config.scale_by_step else 1.0
    return (time * depth * config.p_max).float()


def sample_skips(rates: torch.Tensor, batch: int, generator: torch.Generator | None = None) -> torch.Tensor | None:
    """(num_layers, batch) bool: which samples skip which layers; None when nothing is dropped."""
    if not rates.any():
        return None
    return torch.rand(len(rates), batch, generator=generator) < rates[:, None]


def curriculum(config: LayerSkipConfig, num_layers: int, step: int, total_steps: int) -> list[bool]:
    """C(t, l): which layers' early exits count at ``step``; the last layer always does."""
    if config.early_exit == "none":
        active = [False] * num_layers
    elif config.early_exit == "rotational":
        active = [layer % config.rotation == step % config.rotation for layer in range(num_layers)]
    else:
        span = config.curriculum_steps or total_steps
        enabled = 1 + min(num_layers - 1, step * (num_layers - 1) // max(span, 1))
        active = [layer >= num_layers - enabled for layer in range(num_layers)]
    active[-1] = True
    return active


def exit_weights(config: LayerSkipConfig, active: list[bool]) -> list[float]:
    """ẽ(t, l) for each layer: normalised depth-growing scales on the active layers."""
    num_layers = len(active)
    scales = [config.e_scale * sum(range(layer + 1)) for layer in range(num_layers - 1)]
    scales.append(num_layers - 1 + sum(range(num_layers - 1)))
    weighted = [s if on else 0.0 for s, on in zip(scales, active, strict=True)]
    total = sum(weighted)
    return [w / total for w in weighted]
