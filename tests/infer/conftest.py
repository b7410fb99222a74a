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
