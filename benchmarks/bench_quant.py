"""Weight-only int8 and fp8 against fp32 (and bf16): decode speed and weight memory on random
``tiny`` and ``small`` models, and the perplexity change on held-out text of a trained model.
The peer: torchao's int8 weight-only Linear layers (``Int8WeightOnlyConfig``, the same values
as ctlab's; its embeddings stay fp32) decoded by the same engine.

Speed: the engine (compiled decoding, its kernels built before timing) decodes ``--new``
tokens greedily after a 32-token prompt at batch 1, each variant of the same weights in turn
per round; the ratio to fp32 is per round, the table gives
medians. Memory: the bytes of the stored weights (quantised values and scales). Perplexity:
the trained ``tiny`` of ``trained_model.py`` (LayerSkip, 600 steps on inews) on its held-out
packed folder, through ``ctlab.eval.score.perplexity`` for each variant.

    python benchmarks/bench_quant.py [--presets tiny small] [--rounds 3] [--new 64]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch
from torch import nn
from trained_model import trained_layerskip_model

from ctlab.eval.score import packed_batches, perplexity
from ctlab.infer.engine import Engine
from ctlab.infer.quant import quantize, weight_bytes
from ctlab.infer.sampling import SamplingParams
from ctlab.model.config import preset
from ctlab.model.decoder import Decoder
from ctlab.model.hf import load_model
from ctlab.report.tables import text_table
from ctlab.tokens.packed import PackedDataset

VARIANTS = ("fp32", "bf16", "int8", "fp8")
PEER = "torchao int8"


def variant(model: Decoder, name: str) -> Decoder:
    copied = copy.deepcopy(model)
    if name == PEER:
        from torchao.quantization import Int8WeightOnlyConfig, quantize_

        quantize_(copied, Int8WeightOnlyConfig(), filter_fn=lambda m, n: isinstance(m, nn.Linear) and "router" not in n)
        return copied
    if name == "bf16":
        return copied.to(torch.bfloat16)
    return copied if name == "fp32" else quantize(copied, name)


def decode_rate(model: Decoder, new: int) -> float:
    engine = Engine(model, context=32 + new + 1, compile=True)
    prompt = list(range(5, 37))
    engine.generate([prompt], SamplingParams(max_new_tokens=4, ignore_eos=True))  # warm up: builds the kernels
    start = time.perf_counter()
    engine.generate([prompt], SamplingParams(max_new_tokens=new, ignore_eos=True))
    return new / (time.perf_counter() - start)


def speed(name: str, rounds: int, new: int) -> dict:
    torch.manual_seed(0)
    base = Decoder(preset(name)).eval()
    timed = (*VARIANTS, PEER)
    models = {v: variant(base, v) for v in timed}
    rates = {v: [] for v in timed}
    for _ in range(rounds):
        for v in timed:
            rates[v].append(decode_rate(models[v], new))
    ratios = {v: [r / f for r, f in zip(rates[v], rates["fp32"], strict=True)] for v in timed}
    return {
        "preset": name,
        "tokens_per_s": {v: statistics.median(rates[v]) for v in timed},
        "ratio": {v: statistics.median(ratios[v]) for v in timed},
        "ratio_rounds": ratios,
        "weight_bytes": {v: weight_bytes(models[v]) for v in VARIANTS},
    }


def perplexities() -> dict:
    run, heldout = trained_layerskip_model()
    base = load_model(run)
    data = PackedDataset(heldout)
    out = {}
    for v in VARIANTS:
        model = variant(base, v)
        out[v] = perplexity(model, packed_batches(data, 8, 16))["ppl"]
    return {"run": str(run), "ppl": out}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["tiny", "small"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--new", type=int, default=64)
    parser.add_argument("--out", default="runs/bench_quant")
    args = parser.parse_args()
    speeds = [speed(name, args.rounds, args.new) for name in args.presets]
    quality = perplexities()
    rows = [("preset", "weights", "MiB", "× less memory", "tokens/s", "× fp32 (median of rounds)")]
    for s in speeds:
        for v in (*VARIANTS, PEER):
            stored = s["weight_bytes"].get(v)  # torchao's tensors hold their bytes inside: not counted
            rows.append(
                (
                    s["preset"],
                    v,
                    "–" if stored is None else f"{stored / 2**20:.1f}",
                    "–" if stored is None else f"{s['weight_bytes']['fp32'] / stored:.2f}",
                    f"{s['tokens_per_s'][v]:.1f}",
                    f"{s['ratio'][v]:.2f} ({', '.join(f'{x:.2f}' for x in s['ratio_rounds'][v])})",
                )
            )
    print(text_table(rows))
    fp32 = quality["ppl"]["fp32"]
    print(
        text_table(
            [("weights", "held-out ppl", "change")]
            + [(v, f"{p:.3f}", f"{(p - fp32) / fp32:+.2%}") for v, p in quality["ppl"].items()]
        )
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    summary = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
        "args": vars(args),
        "speed": speeds,
        "perplexity": quality,
    }
    (out / "results.json").write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
