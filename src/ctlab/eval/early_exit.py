"""``ctlab eval early-exit``: perplexity when exiting after each layer, through the shared head.

A LayerSkip-trained model should degrade gracefully when cut short: this is the per-layer
perplexity that early-exit inference and self-speculative decoding rely on. Works on any
checkpoint (a plain run shows how little its early layers predict).
"""

from __future__ import annotations

from pathlib import Path

from ctlab.eval.score import layer_perplexity, packed_batches
from ctlab.model.hf import config_from_hf, load_model
from ctlab.report.plots import new_figure, save_png
from ctlab.report.tables import text_table
from ctlab.runs import claim, latest_checkpoint, read_json, write_json
from ctlab.tokens.packed import PackedDataset, tokenizer_sha256

BATCH_SIZE = 8


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
    """Per-layer perplexity of each run's latest checkpoint (or each checkpoint folder) on the
    first ``batches`` batches of ``data``; writes out/early_exit.{json,png}."""
    dataset = PackedDataset(data)
    names = [Path(r).name if sum(Path(o).name == Path(r).name for o in runs) == 1 else str(r) for r in runs]
    checkpoints = [latest_checkpoint(run) for run in runs]
    for checkpoint in checkpoints:  # every input is checked before any work
        config = config_from_hf(read_json(checkpoint / "config.json", "a model checkpoint"))
        dataset.check_tokenizer(str(checkpoint), tokenizer_sha256(checkpoint), config.vocab_size)
    folder = claim(out, "early-exit report", {}).folder
    results = {}
    for name, checkpoint in zip(names, checkpoints, strict=True):
        model = load_model(checkpoint).eval()
        results[name] = layer_perplexity(model, packed_batches(dataset, BATCH_SIZE, batches))
    write_json(folder / "early_exit.json", results)
    plot(results, folder / "early_exit.png")
    return results
