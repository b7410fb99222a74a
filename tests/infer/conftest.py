"""Tiny random models of the inference tests, as ctlab models and as HF checkpoints on disk."""

import pytest
import torch
import transformers
from infer_models import SHAPES, tiny_model

from ctlab.model.hf import save_pretrained


@pytest.fixture(autouse=True, scope="session")
def _quiet_transformers():
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def checkpoint(tmp_path):
    """A function: shape name → (ctlab model, HF checkpoint folder of the same weights)."""

    def make(shape: str, **overrides):
        model = tiny_model(**SHAPES[shape], **overrides)
        folder = tmp_path / shape
        save_pretrained(model, folder)
        return model, folder

    return make


@pytest.fixture(scope="session")
def text_model(tmp_path_factory, inews):
    """A model folder with a real tokenizer (BPE on Chinese news) and a tiny random model."""
    from ctlab.model.config import preset
    from ctlab.model.decoder import Decoder
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
