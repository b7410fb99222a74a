"""Fixtures of the evaluation tests: a tiny tokenizer, a packed held-out folder and a tiny model
checkpoint that carries the tokenizer, all built from real Chinese news."""

import json
from pathlib import Path

import pytest
import torch


@pytest.fixture(scope="session")
def eval_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("eval")


@pytest.fixture(scope="session")
def tokenizer(eval_root, inews) -> Path:
    from ctlab.tokenizer.train import save_tokenizer, train_tokenizer

    out = eval_root / "tokenizer"
    save_tokenizer(train_tokenizer([f"{t}\n{x}" for t, x in inews[:150]], 500, progress=False), str(out))
    return out


@pytest.fixture(scope="session")
def packed(eval_root, tokenizer, inews) -> str:
    from ctlab.tokens.packed import write_packing
    from ctlab.tokens.tokenize import parse_sources, tokenize

    source = eval_root / "heldout.jsonl"
    source.write_text("".join(json.dumps({"text": f"{t}\n{x}"}, ensure_ascii=False) + "\n" for t, x in inews[900:930]))
    tokenize(parse_sources([str(source)], None), str(tokenizer), str(eval_root / "tokens"), progress=False)
    write_packing(str(eval_root / "tokens"), str(eval_root / "packed"), 48)
    return str(eval_root / "packed")


@pytest.fixture(scope="session")
def checkpoint(eval_root, tokenizer) -> Path:
    """A 3-layer Llama-shaped model with random weights, saved with the tokenizer."""
    from ctlab.model.config import preset
    from ctlab.model.decoder import Decoder
    from ctlab.model.hf import save_pretrained

    torch.manual_seed(0)
    shape = dict(vocab_size=500, hidden_size=64, num_layers=3, num_heads=4, num_kv_heads=2, intermediate_size=96)
    out = eval_root / "model"
    save_pretrained(Decoder(preset("tiny", **shape)), out, tokenizer)
    return out
