"""``ctlab data tokenize | pack``: token shards from clean corpora, and packed training sequences.

Only argument parsing lives here; each handler imports its stage when it runs.
"""

from __future__ import annotations

import argparse

from ctlab.args import non_negative_int, positive_int


def _tokenize(args: argparse.Namespace) -> int:
    from ctlab.tokens.tokenize import mix_table, parse_sources, tokenize

    sources = parse_sources(args.sources, args.mix)
    manifest = tokenize(sources, args.tokenizer, args.out, args.workers, args.seed, not args.no_progress, args.text_key)
    print(mix_table(manifest))
    print(
        f"tokens: {args.out} ({manifest['selected_documents']:,} documents, "
        f"{manifest['selected_tokens']:,} tokens, {manifest['dtype']})"
    )
    return 0


def _pack(args: argparse.Namespace) -> int:
    from ctlab.tokens.packed import stats_table, write_packing

    print(stats_table(write_packing(args.tokens, args.out, args.seq_len, args.strategy)))
    print(f"packed: {args.out}")
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    tokenize = commands.add_parser(
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
    tokenize.add_argument("--workers", type=positive_int, default=1, help="processes, one input file each (default: 1)")
    tokenize.add_argument("--seed", type=non_negative_int, default=0, help="seed of the mix's sampling (default: 0)")
    tokenize.add_argument("--text-key", default="text", help="JSONL/Parquet field holding the text (default: text)")
    tokenize.add_argument("--no-progress", action="store_true", help="no progress bar")
    tokenize.set_defaults(handler=_tokenize)

    pack = commands.add_parser(
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
    pack.set_defaults(handler=_pack)
