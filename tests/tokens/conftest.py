"""Fixtures of the token-store tests: a tiny ctlab tokenizer and small real corpora (Chinese news,
English READMEs, Python source)."""

import pytest


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory, inews):
    """A ctlab byte-level BPE (vocabulary 600) trained on 200 inews articles, saved in HF format."""
    from ctlab.tokenizer.train import save_tokenizer, train_tokenizer

    texts = [f"{title}\n{text}" for title, text in inews[:200]]
    out = tmp_path_factory.mktemp("tokenizer") / "tiny"
    save_tokenizer(train_tokenizer(texts, 600, progress=False), str(out))
    return out


@pytest.fixture(scope="session")
def zh_docs(inews) -> list[str]:
    """120 short inews articles (title and text), none of those the tokenizer was trained on."""
    return [f"{title}\n{text}" for title, text in inews[1000:] if len(title) + len(text) < 1500][:120]


@pytest.fixture(scope="session")
def en_docs() -> list[str]:
    from ctlab.data.demo import english_documents

    return [d for d in english_documents() if len(d) < 4000][:20]


@pytest.fixture(scope="session")
def code_docs() -> list[str]:
    from ctlab.data.demo import code_documents

    return [d for d in code_documents() if len(d) < 4000][:30]
