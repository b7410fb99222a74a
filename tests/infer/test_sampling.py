"""The next-token distribution equals transformers' logits processors applied in the same order
(repetition penalty, temperature, top-k, top-p, min-p), and draws follow it."""

import pytest
import torch
from transformers.generation.logits_process import (
    MinPLogitsWarper,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from ctlab.config import ConfigError
from ctlab.infer.sampling import SamplingParams, choose, next_token_distribution

SETTINGS = [
    dict(temperature=1.0),
    dict(temperature=0.7, top_k=5),
    dict(temperature=1.3, top_p=0.8),
    dict(temperature=0.9, min_p=0.1),
    dict(temperature=1.0, repetition_penalty=1.3, top_k=20, top_p=0.9),
]


def transformers_distribution(logits, params, context):
    scores = logits[None].clone()
    ids = context[None]
    processors = []
    if params.repetition_penalty != 1.0:
        processors.append(RepetitionPenaltyLogitsProcessor(params.repetition_penalty))
    processors.append(TemperatureLogitsWarper(params.temperature))
    if params.top_k:
        processors.append(TopKLogitsWarper(params.top_k))
    if params.top_p < 1:
        processors.append(TopPLogitsWarper(params.top_p))
    if params.min_p:
        processors.append(MinPLogitsWarper(params.min_p))
    for processor in processors:
        scores = processor(ids, scores)
    return torch.softmax(scores, dim=-1)[0]


@pytest.mark.parametrize("settings", SETTINGS, ids=lambda s: "-".join(f"{k}={v}" for k, v in s.items()))
def test_distribution_equals_transformers_processors(settings):
    logits = torch.randn(50) * 3
    context = torch.tensor([3, 7, 7, 12, 40])
    params = SamplingParams(**settings)
    ours = next_token_distribution(logits, params, context)
    theirs = transformers_distribution(logits, params, context)
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=1e-5)
    assert ((ours > 0) == (theirs > 0)).all()


def test_draws_follow_the_distribution():
    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0])
    params = SamplingParams(temperature=1.0, top_k=4)
    generator = torch.Generator().manual_seed(0)
    draws = torch.tensor([choose(logits, params, torch.tensor([]), generator) for _ in range(4000)])
    observed = torch.bincount(draws, minlength=5).float() / 4000
    expected = next_token_distribution(logits, params, torch.tensor([], dtype=torch.long))
    assert observed[4] == 0
    assert (observed - expected).abs().max() < 0.03  # 4000 draws: ~4 standard errors


def test_greedy_takes_the_penalised_argmax():
    logits = torch.tensor([1.0, 3.0, 2.9])
    assert choose(logits, SamplingParams(), torch.tensor([]), None) == 1
    assert choose(logits, SamplingParams(repetition_penalty=1.2), torch.tensor([1]), None) == 2


@pytest.mark.parametrize(
    "bad, message",
    [
        (dict(temperature=-1), "temperature"),
        (dict(top_p=0), "top_p"),
        (dict(max_new_tokens=0), "max_new_tokens"),
        (dict(top_k=2.5), "top_k"),
    ],
)
def test_bad_parameters_name_the_field(bad, message):
    with pytest.raises(ConfigError, match=message):
        SamplingParams.of(**bad)
