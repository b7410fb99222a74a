"""The server under load: aggregate tokens/s and request latency (p50, p99) with 1, 4 and 16
concurrent clients, each sending chat requests one after another through the ``openai``
client to ``ctlab serve`` on 127.0.0.1.

Model: the trained ``tiny`` of ``trained_model.py`` (so replies are text). Each request: one
user message (a held-out news headline and a question about it), ``max_tokens`` ``--max-tokens``,
temperature 0. ``--max-batch 16``: the server decodes up to 16 requests together (continuous
batching), with serve's default compiled decoding (its kernels built in a warm-up). tokens/s =
completion tokens of all requests / wall time of the level; latency: request sent → reply
received.

    python benchmarks/bench_serve.py [--levels 1 4 16] [--requests 8] [--max-tokens 64]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

from trained_model import trained_layerskip_model

from ctlab.data.demo import heldout_chinese
from ctlab.report.tables import text_table


def start_server(model: Path, max_batch: int) -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ctlab.cli",
            "serve",
            str(model),
            "--port",
            "0",
            "--max-batch",
            str(max_batch),
            "--model-name",
            "model",
        ],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    line = process.stdout.readline()
    found = re.search(r"http://127\.0\.0\.1:(\d+)", line)
    if not found:
        process.kill()
        raise SystemExit(f"the server did not start: {line!r}")
    return process, f"http://127.0.0.1:{found.group(1)}/v1"


def level(url: str, clients: int, requests: int, max_tokens: int, questions: list[str]) -> dict:
    from openai import OpenAI

    api = OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=600)

    def client(index: int) -> list[tuple[float, int]]:
        done = []
        for i in range(requests):
            question = questions[(index * requests + i) % len(questions)]
            start = time.perf_counter()
            reply = api.chat.completions.create(
                model="model", messages=[{"role": "user", "content": question}], max_tokens=max_tokens, temperature=0
            )
            done.append((time.perf_counter() - start, reply.usage.completion_tokens))
        return done

    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        replies = [r for rs in pool.map(client, range(clients)) for r in rs]
    wall = time.perf_counter() - start
    latencies = sorted(seconds for seconds, _ in replies)
    tokens = sum(n for _, n in replies)
    return {
        "clients": clients,
        "requests": len(replies),
        "completion_tokens": tokens,
        "seconds": wall,
        "tokens_per_s": tokens / wall,
        "p50": statistics.median(latencies),
        "p99": latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--requests", type=int, default=8, help="requests per client")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--max-batch", type=int, default=16)
    parser.add_argument("--out", default="runs/bench_serve")
    args = parser.parse_args()
    run, _ = trained_layerskip_model()
    questions = [f"{article.splitlines()[0]}\n这条新闻说了什么？" for article in heldout_chinese()[:64]]
    process, url = start_server(run, args.max_batch)
    try:
        level(url, 4, 1, 8, questions)  # warm up: the compiled kernels for one row and for a few
        results = [level(url, n, args.requests, args.max_tokens, questions) for n in args.levels]
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=30)
    one = results[0]["tokens_per_s"]
    rows = [("clients", "requests", "tokens", "tokens/s", "× 1 client", "p50 s", "p99 s")]
    for r in results:
        rows.append(
            (
                str(r["clients"]),
                str(r["requests"]),
                str(r["completion_tokens"]),
                f"{r['tokens_per_s']:.1f}",
                f"{r['tokens_per_s'] / one:.2f}",
                f"{r['p50']:.2f}",
                f"{r['p99']:.2f}",
            )
        )
    print(text_table(rows))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    summary = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
        "model": str(run),
        "args": vars(args),
        "results": results,
    }
    (out / "results.json").write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
