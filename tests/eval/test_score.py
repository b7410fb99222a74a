"""The scoring primitive: token log-probabilities equal transformers' on the same checkpoint and
texts, perplexity over a packed folder is the mean of those log-probabilities, and the
per-layer table ends at the full model's perplexity."""

import math

import pytest
import torch
from transformers import AutoModelForCausalLM

from ctlab.errors import UserError
from ctlab.eval.score import layer_perplexity, packed_batches, perplexity, text_batches, token_logprobs
from ctlab.model.hf import load_model
from ctlab.tokens.packed import IGNORE_INDEX, PackedDataset

TEXTS = ["新华社北京电 国务院总理今天会见了外国客人。", "今天天气很好。", "股市今日小幅上涨，成交量放大。" * 3]


def test_token_logprobs_equal_transformers(checkpoint):
    ours = load_model(checkpoint).eval()
    theirs = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).eval()
    (batch,) = text_batches(checkpoint, TEXTS, batch_size=3)  # rows of different lengths, padded
    logprobs = token_logprobs(ours, batch)
    assert logprobs.shape == batch["input_ids"].shape
    for i in range(len(TEXTS)):
        length = int((batch["labels"][i] != IGNORE_INDEX).sum()) + 1  # [BOS] text [EOS]
        ids = batch["input_ids"][i : i + 1, :length]
        with torch.no_grad():
            loss = theirs(input_ids=ids, labels=ids).loss.item()  # mean over the length - 1 predictions
        assert -logprobs[i].sum().item() / (length - 1) == pytest.approx(loss, rel=1e-5)
        assert (logprobs[i, length - 1 :] == 0).all()  # padding scores nothing


def test_perplexity_is_the_mean_of_the_token_logprobs(checkpoint, packed):
    model = load_model(checkpoint).eval()
    batches = list(packed_batches(packed, batch_size=4, batches=3))
    assert [len(b["input_ids"]) for b in batches] == [4, 4, 4]
    summed = sum(-token_logprobs(model, b).sum().item() for b in batches)
    tokens = sum(int((b["labels"] != IGNORE_INDEX).sum()) for b in batches)
    result = perplexity(model, batches)
    assert result["tokens"] == tokens
    assert result["loss"] == pytest.approx(summed / tokens, rel=1e-5)
    assert result["ppl"] == pytest.approx(math.exp(result["loss"]))
    layers = layer_perplexity(model, batches)
    assert [row["layer"] for row in layers] == [1, 2, 3]
    assert layers[-1]["loss"] == pytest.approx(result["loss"], rel=1e-6)  # the last exit is the model
    assert len({round(row["loss"], 6) for row in layers}) == 3


def test_packed_batches_take_the_first_sequences_in_order(packed):
    dataset = PackedDataset(packed)
    batches = list(packed_batches(dataset, batch_size=3, batches=10**6))
    assert sum(len(b["input_ids"]) for b in batches) == len(dataset)
    assert torch.equal(batches[1]["input_ids"][0], torch.from_numpy(dataset[3]["input_ids"]))
    with pytest.raises(UserError, match="at least 1"):
        packed_batches(dataset, batch_size=3, batches=0)
