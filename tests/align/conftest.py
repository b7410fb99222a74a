"""Fixtures of the alignment tests: preference pairs and conversations built from real Chinese news."""

import pytest
import torch
import transformers


@pytest.fixture(autouse=True, scope="session")
def _quiet_transformers():
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()


@pytest.fixture(scope="session")
def pair_records(inews):
    """Prompts asking for a headline's opening, chosen: the article's start, rejected: a later slice."""
    records = []
    for title, text in inews[:12]:
        records.append(
            {
                "prompt": [{"role": "user", "content": f"续写：{title[:12]}"}],
                "chosen": [{"role": "assistant", "content": text[:18]}],
                "rejected": [{"role": "assistant", "content": text[30 : 30 + 9 + len(title) % 7]}],
            }
        )
    return records


@pytest.fixture
def perturbed(tmp_path, text_model):
    """A folder with the text model's weights moved a little (a policy that differs from its reference)."""
    from ctlab.model.hf import load_model, save_pretrained

    torch.manual_seed(1)
    model = load_model(text_model)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.02 * torch.randn_like(parameter))
    save_pretrained(model, tmp_path / "policy", text_model)
    return tmp_path / "policy"
