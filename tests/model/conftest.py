"""Quiet transformers for the model tests: no loading progress bars, no load reports."""

import pytest
import torch
import transformers


@pytest.fixture(autouse=True, scope="session")
def _quiet_transformers():
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
