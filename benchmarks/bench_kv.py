"""KV-cache compression at long prompts: the KV bytes SnapKV and CORM keep against the full
cache, and decode speed after a long prompt, for ctlab and for kvpress's ``SnapKVPress`` on
the same HF checkpoint.

Model: ``small`` (12 layers, 4 KV heads of 64, context 4096) with random weights — the bytes
kept and the speed do not depend on them (SnapKV keeps ``--capacity`` entries per head
whatever the scores; CORM's share does depend on the attention it sees, and random weights
attend more uniformly than trained ones). Prompt: ``--prompt`` random tokens; then ``--new``
greedy tokens. Decode tokens/s counts the new tokens after the first over the time after the
prefill. kvpress runs transformers' ``generate`` inside ``SnapKVPress(compression_ratio)``
with the ratio that keeps the same ``--capacity`` entries, its window 32 and kernel 5 like
ctlab's; the peer's full-cache row is transformers' ``generate`` without a press.

With ``--trained``, the same policies run instead on the long-context trained ``tiny`` of
``trained_model.py`` (context 4096) after a ``--prompt``-token held-out news prompt, where what
CORM keeps reflects real attention.

ctlab decodes with its compiled programs (``--no-compile``: the uncompiled engine), built in a
warm-up before the rounds; CORM watches every step's attention, so its steps take the model's
own code either way.

    python benchmarks/bench_kv.py [--prompt 4000] [--new 64] [--capacity 896] [--rounds 3] [--trained] [--no-compile]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from ctlab.infer.engine import Engine
from ctlab.infer.policies import CORM, FullCache, SnapKV
from ctlab.infer.sampling import SamplingParams
from ctlab.model.config import preset
from ctlab.model.decoder import Decoder
from ctlab.model.hf import save_pretrained
from ctlab.report.tables import text_table


def ctlab_run(model: Decoder, prompt: list[int], new: int, policy, compile: bool) -> dict:
    engine = Engine(model, context=len(prompt) + new + 1, kv_policy=policy, compile=compile)
    request = engine.generate([prompt], SamplingParams(max_new_tokens=new, ignore_eos=True))[0]
    summary = request.summary()
    return {"tokens_per_s": summary["tokens_per_second"], "kv_bytes": request.kv_bytes, "full": request.full_kv_bytes}


def transformers_run(model, prompt: list[int], new: int, press=None) -> dict:
    """Decode tokens/s after the prefill (a streamer marks the first new token) and KV bytes."""
    from transformers import DynamicCache

    ids = torch.tensor([prompt])
    cache = DynamicCache()
    times = []

    class Clock:
        def put(self, value):
            times.append(time.perf_counter())

        def end(self):
            pass

    def generate():
        with torch.inference_mode():
            model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=new,
                min_new_tokens=new,
                do_sample=False,
                pad_token_id=0,
                past_key_values=cache,
                streamer=Clock(),
            )

    if press is None:
        generate()
    else:
        with press(model):
            generate()
    decode = times[-1] - times[1]  # times[0]: the prompt handed to the streamer; [1]: the first new token
    kv = sum(layer.keys.nbytes + layer.values.nbytes for layer in cache.layers)
    return {"tokens_per_s": (new - 1) / decode, "kv_bytes": kv}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompt", type=int, default=4000)
    parser.add_argument("--new", type=int, default=64)
    parser.add_argument("--capacity", type=int, default=896)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default="runs/bench_kv")
    parser.add_argument("--trained", action="store_true", help="the long-context trained tiny model instead")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True, help="compiled decoding")
    args = parser.parse_args()
    if args.trained:
        return trained(args)
    import transformers
    from kvpress import SnapKVPress
    from transformers import AutoModelForCausalLM

    transformers.utils.logging.disable_progress_bar()
    torch.manual_seed(0)
    model = Decoder(preset("small")).eval()
    folder = tempfile.mkdtemp()
    save_pretrained(model, folder)
    peer = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="sdpa").eval()
    prompt = torch.randint(3, model.config.vocab_size, (args.prompt,), generator=torch.Generator().manual_seed(1))
    prompt = prompt.tolist()
    ratio = 1 - args.capacity / args.prompt
    ctlab_run(model, prompt[:64], 4, FullCache(), args.compile)  # warm up: the programs are built here
    runs = {
        "ctlab full": lambda: ctlab_run(model, prompt, args.new, FullCache(), args.compile),
        "ctlab snapkv": lambda: ctlab_run(model, prompt, args.new, SnapKV(args.capacity, 32, 5), args.compile),
        "ctlab corm": lambda: ctlab_run(model, prompt, args.new, CORM(window=32, recent=32), args.compile),
        "transformers full": lambda: transformers_run(peer, prompt, args.new),
        "kvpress snapkv": lambda: transformers_run(
            peer, prompt, args.new, SnapKVPress(compression_ratio=ratio, window_size=32, kernel_size=5)
        ),
    }
    results = {name: [] for name in runs}
    for _ in range(args.rounds):
        for name, run in runs.items():
            results[name].append(run())
            print(name, results[name][-1], flush=True)
    full_bytes = results["ctlab full"][0]["kv_bytes"]
    rows = [("run", "KV MiB at the end", "× smaller than full", "decode tokens/s (median)", "rounds")]
    summary = {}
    for name, rounds in results.items():
        rate = statistics.median(r["tokens_per_s"] for r in rounds)
        kv = rounds[-1]["kv_bytes"]
        summary[name] = {"tokens_per_s": rate, "kv_bytes": kv, "rounds": rounds}
        rows.append(
            (
                name,
                f"{kv / 2**20:.1f}",
                f"{full_bytes / kv:.2f}",
                f"{rate:.1f}",
                ", ".join(f"{r['tokens_per_s']:.1f}" for r in rounds),
            )
        )
    print(text_table(rows))
    snap_vs_kvpress = [
        a["tokens_per_s"] / b["tokens_per_s"]
        for a, b in zip(results["ctlab snapkv"], results["kvpress snapkv"], strict=True)
    ]
    print(f"ctlab snapkv / kvpress snapkv per round: {', '.join(f'{x:.2f}' for x in snap_vs_kvpress)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    record = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
        "args": vars(args),
        "results": summary,
        "snapkv_vs_kvpress": snap_vs_kvpress,
    }
    (out / "results.json").write_text(json.dumps(record, indent=1))


def trained(args: argparse.Namespace) -> None:
    from trained_model import long_context_model

    from ctlab.data.demo import heldout_chinese
    from ctlab.infer.text import TextModel
    from ctlab.model.hf import load_model

    run = long_context_model()
    model = load_model(run)
    prompt = TextModel(run).encode("\n".join(heldout_chinese()[:120]))[: args.prompt]
    policies = {
        "full": FullCache,
        f"snapkv capacity {args.capacity}": lambda: SnapKV(args.capacity, 32, 5),
        "corm w=32 r=32": lambda: CORM(window=32, recent=32),
    }
    ctlab_run(model, prompt[:64], 4, FullCache(), args.compile)  # warm up: the programs are built here
    results = {
        name: [ctlab_run(model, prompt, args.new, make(), args.compile) for _ in range(args.rounds)]
        for name, make in policies.items()
    }
    full = results["full"][0]["kv_bytes"]
    rows = [("policy", "KV MiB at the end", "× smaller than full", "decode tokens/s (median)")]
    for name, rounds in results.items():
        rate = statistics.median(r["tokens_per_s"] for r in rounds)
        rows.append(
            (name, f"{rounds[0]['kv_bytes'] / 2**20:.2f}", f"{full / rounds[0]['kv_bytes']:.2f}", f"{rate:.1f}")
        )
    print(text_table(rows))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    record = {"date": time.strftime("%Y-%m-%d"), "model": str(run), "prompt_tokens": len(prompt), "results": results}
    (out / "trained.json").write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
