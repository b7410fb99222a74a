"""PNG charts of runs, drawn on matplotlib's Agg canvas (no GUI, no global pyplot state)."""

from __future__ import annotations

from pathlib import Path

from ctlab.runs import atomic_write


def new_figure(width: float = 7.0, height: float = 4.2):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def save_png(figure, path: str | Path) -> None:
    atomic_write(path, lambda f: figure.savefig(f, format="png", dpi=120))


def loss_curve(records: list[dict], path: str | Path, title: str = "Training loss") -> None:
    """Training loss against tokens seen, with each held-out set's loss, from a run's metrics records."""
    figure = new_figure()
    axes = figure.add_subplot()
    train = [(r["tokens"], r["loss"]) for r in records if "loss" in r]
    if train:
        axes.plot(*zip(*train, strict=True), label="train")
    evals = [r for r in records if "eval" in r]
    for name in sorted({n for r in evals for n in r["eval"]}):
        points = [(r.get("tokens", 0), r["eval"][name]["loss"]) for r in evals if name in r["eval"]]
        axes.plot(*zip(*points, strict=True), marker="o", label=f"held-out {name}")
    axes.set_xlabel("tokens")
    axes.set_ylabel("cross-entropy (nats/token)")
    axes.set_title(title)
    axes.legend()
    save_png(figure, path)
