"""Training checkpoints: complete or absent, resumable exactly, loadable by transformers.

``RUN/checkpoints/step-00000100/`` holds the model in Hugging Face format (config.json,
model.safetensors, tokenizer files), ``optimizer.pt`` (loaded with ``weights_only``),
``rng.pt`` and ``trainer_state.json`` (step, data positions, tokens seen). It is written under a
temporary name and renamed when complete, so a run killed during a save resumes from the
previous checkpoint. Old checkpoints are pruned except every ``keep_every``-th step.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import torch

from ctlab.atomic import write_json
from ctlab.model.decoder import Decoder
from ctlab.model.hf import save_pretrained

_STEP_DIR = re.compile(r"^step-(\d{8})$")


def checkpoint_dir(run: str | Path, step: int) -> Path:
    return Path(run) / "checkpoints" / f"step-{step:08d}"


def completed_checkpoints(run: str | Path) -> list[tuple[int, Path]]:
    """(step, folder) of every complete checkpoint of ``run``, oldest first."""
    folder = Path(run) / "checkpoints"
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _STEP_DIR.match(p.name))]
    return sorted(found)


def save_checkpoint(
    run: str | Path,
    step: int,
    model: Decoder,
    optimizer: torch.optim.Optimizer,
    trainer_state: dict,
    tokenizer_dir: str | None,
    keep_every: int = 0,
) -> Path:
    """Write the checkpoint of ``step`` atomically, then prune older ones."""
    final = checkpoint_dir(run, step)
    staging = final.with_name(f".tmp-{final.name}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    save_pretrained(model, staging, tokenizer_dir)
    torch.save(optimizer.state_dict(), staging / "optimizer.pt")
    torch.save({"torch": torch.get_rng_state()}, staging / "rng.pt")  # layer dropout draws from it
    write_json(staging / "trainer_state.json", {"step": step, **trainer_state})
    shutil.rmtree(final, ignore_errors=True)
    staging.rename(final)
    for old_step, folder in completed_checkpoints(run):
        if old_step < step and not (keep_every and old_step % keep_every == 0):
            shutil.rmtree(folder, ignore_errors=True)
    return final


def load_checkpoint(folder: Path, model: Decoder, optimizer: torch.optim.Optimizer) -> dict:
    """Restore model weights, optimiser state and RNG from ``folder``; returns trainer_state.json."""
    from safetensors.torch import load_file

    from ctlab.model.hf import from_hf_state

    state = load_file(folder / "model.safetensors")
    model.load_state_dict(from_hf_state(state, model.config))
    optimizer.load_state_dict(torch.load(folder / "optimizer.pt", weights_only=True))
    torch.set_rng_state(torch.load(folder / "rng.pt", weights_only=True)["torch"])
    return json.loads((folder / "trainer_state.json").read_text())
