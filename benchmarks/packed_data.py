"""Benchmark inputs built once and reused: a tokenizer trained on given texts, and texts turned
into a packed folder by the same steps as ``ctlab data tokenize`` and ``ctlab data pack``."""

from __future__ import annotations

import json
from pathlib import Path

from ctlab.tokenizer.train import save_tokenizer, train_tokenizer
from ctlab.tokens.packed import write_packing
from ctlab.tokens.tokenize import parse_sources, tokenize


def tokenizer_folder(folder: Path, texts: list[str], vocab_size: int = 8000) -> Path:
    """A ctlab tokenizer trained on ``texts`` in ``folder`` (kept if already there)."""
    if not (folder / "tokenizer.json").is_file():
        save_tokenizer(train_tokenizer(texts, vocab_size, progress=False), str(folder))
    return folder


def packed_folder(out: Path, name: str, texts: list[str], tokenizer: Path, seq_len: int = 256) -> str:
    """``out/packed-NAME``: ``texts`` tokenised (one document each) and packed with best-fit."""
    source = out / f"{name}.jsonl"
    source.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts))
    tokens = out / f"tokens-{name}"
    if not (tokens / "tokens.json").is_file():
        tokenize(parse_sources([str(source)], None), str(tokenizer), str(tokens), progress=False)
    packed = out / f"packed-{name}"
    write_packing(str(tokens), str(packed), seq_len, "bfd")
    return str(packed)
