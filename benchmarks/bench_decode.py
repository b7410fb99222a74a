"""Decode speed: ctlab's engine against transformers' ``generate`` on the same weights, and the
memory-bandwidth roofline of the same machine measured in the same run.

For each preset (random weights: speed does not depend on them), the ctlab model is exported
to an HF checkpoint and loaded by transformers (``LlamaForCausalLM``, SDPA attention), so both
compute the same function. One round = ctlab (its compiled decoding, then its uncompiled one)
then transformers, each generating ``--new`` tokens greedily after a ``--prompt``-token prompt
(end-of-text ignored), at batch 1 and at batch ``--batch`` (prompts of equal length;
transformers gets no padding). tokens/s counts new tokens over the whole call (prefill
included, as a user waits for it). The compiled programs are built before the rounds (a
process does it once; the time of that first call is reported), and a warm-up generation of
the rounds' length runs first. The ratio is per round; the
table gives medians.

Roofline: a decode step reads every weight once (of the embedding table one row) and the KV
cache of the tokens so far, so tokens/s ≤ bandwidth / (weight bytes read + mean KV bytes per
step). Bandwidth is measured between rounds by reading (summing) an array: of 1 GiB for
memory's bound, and of a step's bytes for the bound where those bytes stay in a cache (a 7M
model's weights fit many CPUs' last-level cache); the copy bandwidth of a 512 MiB array (read
+ write counted, what figures before 2026-12-07 used) is recorded too.

    python benchmarks/bench_decode.py [--presets tiny small] [--rounds 5] [--new 128] [--prompt 32] [--batch 16]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from ctlab.infer.engine import Engine
from ctlab.infer.quant import weight_bytes
from ctlab.infer.sampling import SamplingParams
from ctlab.model.config import preset
from ctlab.model.decoder import Decoder
from ctlab.model.hf import save_pretrained
from ctlab.report.tables import text_table


def copy_bandwidth(megabytes: int = 512, repeats: int = 5) -> float:
    """Bytes/s of copying a ``megabytes`` array (read + write), best of ``repeats``."""
    source = torch.empty(megabytes * 2**20 // 4, dtype=torch.float32).normal_()
    target = torch.empty_like(source)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        target.copy_(source)
        best = min(best, time.perf_counter() - start)
    return 2 * source.nbytes / best


def read_bandwidth(nbytes: int, repeats: int = 20) -> float:
    """Bytes/s of reading an array of ``nbytes`` (summing it, both cores), best of ``repeats``: with
    1 GiB, memory's; with a decode step's bytes, whatever cache level holds them when read again
    and again, as a decode loop reads its weights."""
    array = torch.empty(max(nbytes // 4, 1), dtype=torch.float32).normal_()
    array.sum()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        array.sum()
        best = min(best, time.perf_counter() - start)
    return array.nbytes / best


def ctlab_rate(model: Decoder, prompts: list[list[int]], new: int, compile: bool) -> float:
    engine = Engine(model, max_batch=len(prompts), context=len(prompts[0]) + new + 1, compile=compile)
    params = SamplingParams(max_new_tokens=new, ignore_eos=True)
    start = time.perf_counter()
    done = engine.generate(prompts, params)
    seconds = time.perf_counter() - start
    assert all(len(r.output) == new for r in done)
    return len(prompts) * new / seconds


def transformers_rate(model, prompts: list[list[int]], new: int) -> float:
    ids = torch.tensor(prompts)
    start = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=new,
            min_new_tokens=new,
            do_sample=False,
            pad_token_id=0,
        )
    seconds = time.perf_counter() - start
    assert out.shape[1] == ids.shape[1] + new
    return len(prompts) * new / seconds


def weight_bytes_per_step(model: Decoder) -> int:
    """Bytes of weights a decode step reads: every weight once, except the embedding table, of
    which it reads one row (unless the head is tied to it, and reads all of it)."""
    table = model.embed_tokens.weight
    if model.config.tie_embeddings:
        return weight_bytes(model)
    return weight_bytes(model) - table.nbytes + table[0].nbytes


def kv_bytes_per_step(model: Decoder, prompt: int, new: int, batch: int) -> float:
    """Mean bytes of keys and values read per decode step."""
    c = model.config
    per_position = 2 * c.num_layers * c.num_kv_heads * c.head_dim * 4
    return batch * per_position * (prompt + new / 2)


def measure(name: str, rounds: int, prompt: int, new: int, batch: int) -> dict:
    import transformers
    from transformers import AutoModelForCausalLM

    transformers.utils.logging.disable_progress_bar()

    torch.manual_seed(0)
    model = Decoder(preset(name)).eval()
    folder = tempfile.mkdtemp()
    save_pretrained(model, folder)
    reference = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="sdpa").eval()
    generator = torch.Generator().manual_seed(1)
    single = [torch.randint(3, model.config.vocab_size, (prompt,), generator=generator).tolist()]
    many = [torch.randint(3, model.config.vocab_size, (prompt,), generator=generator).tolist() for _ in range(batch)]
    compiled, uncompiled = copy.deepcopy(model), copy.deepcopy(model)  # each engine lays its model out in place
    start = time.perf_counter()
    ctlab_rate(compiled, single, 8, compile=True)  # the compiled programs are built here
    first_call = time.perf_counter() - start
    # warm everything up at the rounds' lengths (the BLAS prepares its kernels for each new size)
    ctlab_rate(compiled, single, new, compile=True)
    ctlab_rate(compiled, many, 8, compile=True)
    ctlab_rate(uncompiled, single, 8, compile=False)
    transformers_rate(reference, single, 8)
    per_step = int(weight_bytes_per_step(model) + kv_bytes_per_step(model, prompt, new, 1))
    rows = {
        "ctlab": [],
        "ctlab_uncompiled": [],
        "transformers": [],
        "ctlab_batch": [],
        "transformers_batch": [],
        "copy_bandwidth": [],
        "memory_read_bandwidth": [],
        "step_read_bandwidth": [],
    }
    for _ in range(rounds):
        rows["ctlab"].append(ctlab_rate(compiled, single, new, compile=True))
        rows["ctlab_uncompiled"].append(ctlab_rate(uncompiled, single, new, compile=False))
        rows["transformers"].append(transformers_rate(reference, single, new))
        rows["ctlab_batch"].append(ctlab_rate(compiled, many, new, compile=True))
        rows["transformers_batch"].append(transformers_rate(reference, many, new))
        rows["copy_bandwidth"].append(copy_bandwidth())
        rows["memory_read_bandwidth"].append(read_bandwidth(2**30))
        rows["step_read_bandwidth"].append(read_bandwidth(per_step))
    weights = weight_bytes(model)
    bound = statistics.median(rows["memory_read_bandwidth"]) / per_step
    step_bound = statistics.median(rows["step_read_bandwidth"]) / per_step
    ratios = [a / b for a, b in zip(rows["ctlab"], rows["transformers"], strict=True)]
    uncompiled_ratios = [a / b for a, b in zip(rows["ctlab_uncompiled"], rows["transformers"], strict=True)]
    batch_ratios = [a / b for a, b in zip(rows["ctlab_batch"], rows["transformers_batch"], strict=True)]
    return {
        "preset": name,
        "parameters": model.num_parameters(),
        "weight_bytes": weights,
        "weight_bytes_per_step": weight_bytes_per_step(model),
        "first_compiled_call_s": first_call,
        "rounds": rows,
        "ratio_rounds": ratios,
        "uncompiled_ratio_rounds": uncompiled_ratios,
        "batch_ratio_rounds": batch_ratios,
        "ctlab": statistics.median(rows["ctlab"]),
        "ctlab_uncompiled": statistics.median(rows["ctlab_uncompiled"]),
        "transformers": statistics.median(rows["transformers"]),
        "ratio": statistics.median(ratios),
        "uncompiled_ratio": statistics.median(uncompiled_ratios),
        "ctlab_batch": statistics.median(rows["ctlab_batch"]),
        "transformers_batch": statistics.median(rows["transformers_batch"]),
        "batch_ratio": statistics.median(batch_ratios),
        "copy_bandwidth_gb_s": statistics.median(rows["copy_bandwidth"]) / 1e9,
        "memory_read_bandwidth_gb_s": statistics.median(rows["memory_read_bandwidth"]) / 1e9,
        "step_read_bandwidth_gb_s": statistics.median(rows["step_read_bandwidth"]) / 1e9,
        "bytes_per_step": per_step,
        "roofline_tokens_s": bound,
        "roofline_fraction": statistics.median(rows["ctlab"]) / bound,
        "step_roofline_tokens_s": step_bound,
        "step_roofline_fraction": statistics.median(rows["ctlab"]) / step_bound,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["tiny", "small"])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--prompt", type=int, default=32)
    parser.add_argument("--new", type=int, default=128)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--out", default="runs/bench_decode")
    args = parser.parse_args()
    results = [measure(name, args.rounds, args.prompt, args.new, args.batch) for name in args.presets]
    rows = [
        (
            "preset",
            "ctlab tok/s",
            "uncompiled",
            "transformers tok/s",
            "× (median of rounds)",
            "uncompiled ×",
            "roofline tok/s (memory)",
            "ctlab / roofline",
            "roofline (step's bytes)",
            "ctlab / it",
            f"batch {args.batch}: ctlab",
            "transformers",
            "×",
        )
    ]
    for r in results:
        rows.append(
            (
                r["preset"],
                f"{r['ctlab']:.1f}",
                f"{r['ctlab_uncompiled']:.1f}",
                f"{r['transformers']:.1f}",
                f"{r['ratio']:.2f} ({', '.join(f'{x:.2f}' for x in r['ratio_rounds'])})",
                f"{r['uncompiled_ratio']:.2f}",
                f"{r['roofline_tokens_s']:.1f}",
                f"{r['roofline_fraction']:.0%}",
                f"{r['step_roofline_tokens_s']:.1f}",
                f"{r['step_roofline_fraction']:.0%}",
                f"{r['ctlab_batch']:.1f}",
                f"{r['transformers_batch']:.1f}",
                f"{r['batch_ratio']:.2f}",
            )
        )
    print(text_table(rows))
    for r in results:
        print(
            f"{r['preset']}: {r['weight_bytes'] / 2**20:.1f} MiB of weights "
            f"({r['weight_bytes_per_step'] / 2**20:.1f} MiB read per step), "
            f"bandwidth: copy {r['copy_bandwidth_gb_s']:.1f}, read 1 GiB {r['memory_read_bandwidth_gb_s']:.1f}, "
            f"read a step's bytes {r['step_read_bandwidth_gb_s']:.1f} GB/s, "
            f"first compiled call (8 tokens) {r['first_compiled_call_s']:.1f} s"
        )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    summary = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
        "threads": torch.get_num_threads(),
        "args": vars(args),
        "results": results,
    }
    (out / "results.json").write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
