"""Training checkpoints: complete or absent, resumable exactly, loadable by transformers.

``RUN/checkpoints/step-00000100/`` holds the model in Hugging Face format (config.json,
model.safetensors, tokenizer files), ``optimizer.pt`` (the optimiser state keyed by parameter
name, loaded with ``weights_only``) and ``trainer_state.json`` (step, data positions, tokens
seen, how many processes trained it and how). It is written under a temporary name and renamed
when complete, so a run killed during a save resumes from the previous checkpoint. Old
checkpoints are pruned except every ``keep_every``-th step. Training draws no random numbers
outside the loader's seeded shuffling and the layer-dropout generators seeded per step, so there
is no RNG state to keep.

Under torch.distributed rank 0 gathers the whole states (FSDP's shards too) and writes them; on
resume it reads them and sends them to the other ranks (sharded again under FSDP), so a
checkpoint does not depend on how the run was parallelised.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)

from ctlab.errors import UserError
from ctlab.model.decoder import Decoder
from ctlab.model.hf import read_weights, save_pretrained
from ctlab.runs import checkpoint_dir, checkpoints, read_json, write_json


def _whole_states() -> StateDictOptions:
    """Unsharded states (on rank 0, in CPU memory) under torch.distributed; the plain ones otherwise."""
    if dist.is_initialized():
        return StateDictOptions(full_state_dict=True, cpu_offload=True)
    return StateDictOptions()


def save_checkpoint(
    run: str | Path,
    step: int,
    model: Decoder,
    optimizer: torch.optim.Optimizer,
    trainer_state: dict,
    tokenizer_dir: str | None,
    keep_every: int = 0,
) -> Path | None:
    """Write the checkpoint of ``step`` atomically, then prune older ones. Under torch.distributed
    every rank calls it (the states are gathered) and rank 0 writes; the others get None."""
    options = _whole_states()
    model_state = get_model_state_dict(model, options=options)
    optimizer_state = get_optimizer_state_dict(model, optimizer, options=options)
    if dist.is_initialized() and dist.get_rank() != 0:
        return None
    final = checkpoint_dir(run, step)
    staging = final.with_name(f".tmp-{final.name}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    save_pretrained(model, staging, tokenizer_dir, model_state)
    torch.save(optimizer_state, staging / "optimizer.pt")
    write_json(staging / "trainer_state.json", {"step": step, **trainer_state})
    shutil.rmtree(final, ignore_errors=True)
    staging.rename(final)
    for old_step, folder in checkpoints(run):
        if old_step < step and not (keep_every and old_step % keep_every == 0):
            shutil.rmtree(folder, ignore_errors=True)
    return final


def load_weights(folder: Path, model: Decoder) -> None:
    """The checkpoint's weights into an unwrapped ``model`` (before DDP or FSDP takes it)."""
    model.load_state_dict(read_weights(folder, model.config))


def load_training_state(folder: Path | None, model: Decoder, optimizer: torch.optim.Optimizer) -> dict:
    """Restore the optimiser state from ``folder``; returns trainer_state.json. Under
    torch.distributed every rank calls it, rank 0 with the folder and the others with None: they
    receive rank 0's states (their shards of them under FSDP)."""
    distributed = dist.is_initialized()
    optimizer_state = {}
    if folder is not None:
        try:
            optimizer_state = torch.load(folder / "optimizer.pt", weights_only=True)
        except (OSError, RuntimeError, EOFError) as err:
            raise UserError(f"{folder / 'optimizer.pt'} is damaged or missing ({err})") from None
    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True) if distributed else StateDictOptions()
    set_optimizer_state_dict(model, optimizer, optimizer_state, options=options)
    trainer_state = [None]
    if folder is not None:
        trainer_state[0] = read_json(folder / "trainer_state.json", "a training checkpoint")
        if not isinstance(trainer_state[0], dict) or not {"step", "tokens_seen", "data"} <= trainer_state[0].keys():
            raise UserError(f"{folder / 'trainer_state.json'} is damaged (not the state this version writes)")
    if distributed:
        dist.broadcast_object_list(trainer_state, src=0)
    return trainer_state[0]
