"""``ctlab eval early-exit``: perplexity when exiting after each layer, through the shared head.

A LayerSkip-trained model should degrade gracefully when cut short: this is the per-layer
perplexity that early-exit inference and self-speculative decoding rely on. Works on any
checkpoint (a plain run shows how little its early layers predict).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from ctlab.model.decoder import Decoder
from ctlab.model.hf import load_pretrained
from ctlab.report.plots import new_figure, save_png
from ctlab.report.tables import text_table
from ctlab.tokens.loader import collate
from ctlab.tokens.packed import IGNORE_INDEX, PackedDataset
from ctlab.train.checkpoint import completed_checkpoints


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder, or a run folder's latest checkpoint."""
    path = Path(path)
    if (path / "config.json").is_file() and (path / "model.safetensors").is_file():
        return path
    checkpoints = completed_checkpoints(path)
    if not checkpoints:
        raise FileNotFoundError(f"{path} is neither a checkpoint nor a run folder with checkpoints")
    return checkpoints[-1][1]


@torch.no_grad()
def per_layer_loss(model: Decoder, data: str, batches: int = 8, batch_size: int = 8) -> list[dict]:
    """Mean cross-entropy and perplexity after each layer (1..L) on the first batches of ``data``."""
    model.eval()
    dataset = PackedDataset(data)
    totals = [0.0] * model.config.num_layers
    count = 0
    for start in range(0, min(len(dataset), batches * batch_size), batch_size):
        batch = collate([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
        out = model(batch["input_ids"], batch["position_ids"], output_hidden_states=True)
        labels = batch["labels"].flatten()
        for layer, hidden in enumerate(out.hidden_states[1:]):
            logits = model.exit_logits(hidden).flatten(0, 1).float()
            totals[layer] += torch.nn.functional.cross_entropy(
                logits, labels, ignore_index=IGNORE_INDEX, reduction="sum"
            ).item()
        count += int((labels != IGNORE_INDEX).sum())
    return [
        {"layer": layer + 1, "loss": total / max(count, 1), "ppl": math.exp(min(total / max(count, 1), 50))}
        for layer, total in enumerate(totals)
    ]


def table(results: dict[str, list[dict]]) -> str:
    names = list(results)
    rows = [("layer", *(f"{n} ppl" for n in names))]
    for i in range(max(len(r) for r in results.values())):
        rows.append((str(i + 1), *(f"{results[n][i]['ppl']:.2f}" if i < len(results[n]) else "-" for n in names)))
    return text_table(rows)


def plot(results: dict[str, list[dict]], path: str | Path) -> None:
    figure = new_figure()
    axes = figure.add_subplot()
    for name, rows in results.items():
        axes.plot([r["layer"] for r in rows], [r["ppl"] for r in rows], marker="o", label=name)
    axes.set_yscale("log")
    axes.set_xlabel("exit after layer")
    axes.set_ylabel("perplexity (log scale)")
    axes.set_title("Early-exit perplexity per layer")
    axes.legend()
    save_png(figure, path)


def early_exit_report(runs: list[str], data: str, out: str, batches: int = 8) -> dict[str, list[dict]]:
    """Per-layer perplexity of each run's latest checkpoint on ``data``; writes out/early_exit.{json,png}."""
    from ctlab.atomic import write_json

    results = {}
    for run in runs:
        checkpoint = resolve_checkpoint(run)
        name = Path(run).name if sum(Path(r).name == Path(run).name for r in runs) == 1 else str(run)
        results[name] = per_layer_loss(load_pretrained(checkpoint), data, batches)
    Path(out).mkdir(parents=True, exist_ok=True)
    write_json(Path(out) / "early_exit.json", results)
    plot(results, Path(out) / "early_exit.png")
    return results
