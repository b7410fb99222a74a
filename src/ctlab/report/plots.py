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


def loss_curve(
    records: list[dict], path: str | Path, title: str = "Training loss", unit: str = "cross-entropy (nats/token)"
) -> None:
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
    axes.set_ylabel(unit)
    axes.set_title(title)
    axes.legend()
    save_png(figure, path)


PREFERENCE_PANELS = (
    ("loss", ("loss",)),
    ("reward accuracy", ("rewards/accuracies",)),
    ("rewards (β·log π/π_ref)", ("rewards/chosen", "rewards/rejected", "rewards/margins")),
    ("sequential KL to the reference", ("kl/chosen", "kl/rejected")),
)


def preference_curves(records: list[dict], path: str | Path, title: str) -> None:
    """A preference run's loss, reward accuracy, rewards and sequential KL against steps: lines
    for the training steps, points for the held-out pairs."""
    figure = new_figure(10.0, 6.5)
    figure.suptitle(title)
    train = [r for r in records if "loss" in r]
    heldout = [(r["step"], r["eval"]["heldout"]) for r in records if "heldout" in r.get("eval", {})]
    for index, (label, keys) in enumerate(PREFERENCE_PANELS, 1):
        axes = figure.add_subplot(2, 2, index)
        for key in keys:
            points = [(r["step"], r[key]) for r in train if key in r]
            if points:
                line = axes.plot(*zip(*points, strict=True), label=key.split("/")[-1])[0]
                color = {"color": line.get_color()}
            else:
                color = {}
            held = [(step, values[key]) for step, values in heldout if key in values]
            if held:
                axes.plot(*zip(*held, strict=True), "o", **color, label=f"{key.split('/')[-1]} (held out)")
        axes.set_title(label, fontsize=10)
        axes.set_xlabel("step")
        if axes.get_legend_handles_labels()[0]:
            axes.legend(fontsize=7)
    save_png(figure, path)
