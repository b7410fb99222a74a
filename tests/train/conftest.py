"""Fixtures of the pretraining tests: a tiny tokenizer, packed folders of real Chinese news (train,
held out) and English READMEs (a new domain for continual pretraining), and tiny model shapes."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

SEQ_LEN = 64


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread in-process, as the subprocess runs get (OMP_NUM_THREADS=1): the same
    arithmetic everywhere, and no oversubscription of a 2-core machine. Module scope: it is set
    before the module-scoped runs start."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _write_jsonl(path: Path, texts: list[str]) -> str:
    path.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts))
    return str(path)


@pytest.fixture(scope="session")
def train_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("train-data")


@pytest.fixture(scope="session")
def train_tokenizer(train_root, inews) -> Path:
    """A ctlab byte-level BPE (vocabulary 600) trained on 200 inews articles."""
    from ctlab.tokenizer.train import save_tokenizer, train_tokenizer

    out = train_root / "tokenizer"
    save_tokenizer(train_tokenizer([f"{t}\n{x}" for t, x in inews[:200]], 600, progress=False), str(out))
    return out


def _packed(root: Path, name: str, texts: list[str], tokenizer: Path) -> str:
    from ctlab.tokens.packed import write_packing
    from ctlab.tokens.tokenize import parse_sources, tokenize

    source = _write_jsonl(root / f"{name}.jsonl", texts)
    tokenize(parse_sources([f"{name}={source}"], None), str(tokenizer), str(root / f"{name}-tokens"), progress=False)
    write_packing(str(root / f"{name}-tokens"), str(root / f"{name}-packed"), SEQ_LEN, "bfd")
    return str(root / f"{name}-packed")


@pytest.fixture(scope="session")
def packed_train(train_root, train_tokenizer, inews) -> str:
    """300 inews articles (about half a million tokens), packed to 64 tokens (bfd)."""
    return _packed(train_root, "zh", [f"{t}\n{x}" for t, x in inews[:300]], train_tokenizer)


@pytest.fixture(scope="session")
def packed_heldout(train_root, train_tokenizer, inews) -> str:
    """40 other inews articles, for held-out evaluation."""
    return _packed(train_root, "zh-heldout", [f"{t}\n{x}" for t, x in inews[1000:1040]], train_tokenizer)


@pytest.fixture(scope="session")
def packed_english(train_root, train_tokenizer) -> str:
    """English READMEs of installed packages: a new domain for continual pretraining."""
    from ctlab.data.demo import english_documents

    return _packed(train_root, "en", [d for d in english_documents() if len(d) < 4000][:12], train_tokenizer)


@pytest.fixture(scope="session")
def unigram_entropy(packed_train) -> float:
    """Entropy (nats) of the unigram distribution of the predicted tokens of the packed training data."""
    from ctlab.tokens.packed import IGNORE_INDEX, PackedDataset

    dataset = PackedDataset(packed_train)
    labels = np.concatenate([dataset[i]["labels"] for i in range(len(dataset))])
    counts = np.bincount(labels[labels != IGNORE_INDEX])
    p = counts[counts > 0] / counts.sum()
    entropy = float(-(p * np.log(p)).sum())
    assert 0 < entropy < math.log(600)
    return entropy


@pytest.fixture(scope="session")
def packed_other_tokenizer(train_root, inews) -> str:
    """Inews articles packed with another tokenizer (vocabulary 400): data a 600-token model must refuse."""
    from ctlab.tokenizer.train import save_tokenizer, train_tokenizer

    texts = [f"{t}\n{x}" for t, x in inews[400:460]]
    tokenizer = train_root / "other-tokenizer"
    save_tokenizer(train_tokenizer(texts, 400, progress=False), str(tokenizer))
    return _packed(train_root, "other", texts, tokenizer)
