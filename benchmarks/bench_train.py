"""Training throughput: ctlab's decoder against transformers' with the same shape, batch, dtype
and optimiser, and the machine's fp32 matmul rate as the yardstick.

For each pair (dense: ctlab ``tiny`` vs ``LlamaForCausalLM``; MoE: ``tiny-moe`` vs
``Qwen2MoeForCausalLM``, weights copied so both compute the same function), one training step =
forward, token-level cross-entropy, backward, AdamW step, on 8 × 256 random tokens in fp32 (or
both under bf16 autocast with ``--dtype bf16``, as ``ctlab train pretrain --dtype bf16`` runs).
Reports tokens/s (median over steps), the per-round ratio ctlab / transformers, and the model
FLOPs per second (6 · active parameters · tokens, plus attention) as a share of the measured
matmul rate in that dtype.

    python benchmarks/bench_train.py [--rounds 3] [--steps 8] [--compile] [--dtype fp32|bf16]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
import warnings

import torch

from ctlab.model.config import preset
from ctlab.model.decoder import Decoder
from ctlab.model.hf import save_pretrained
from ctlab.train.pretrain import token_losses

BATCH, LENGTH = 8, 256


def matmul_rate(dtype: torch.dtype, size: int = 1024, repeats: int = 20) -> float:
    """GFLOP/s of a square matmul in ``dtype`` (median)."""
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return 2 * size**3 / statistics.median(times) / 1e9


def step_rate(step, steps: int) -> float:
    for _ in range(2):
        step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return BATCH * LENGTH / statistics.median(times)


def model_flops_per_token(model: Decoder) -> float:
    c = model.config
    # QK^T and AV per token (full T × T products, as SDPA computes them), forward + backward = 3×
    attention = 2 * 2 * c.num_layers * LENGTH * c.num_heads * c.head_dim
    return 6 * (model.num_parameters(active=True) - model.embed_tokens.weight.numel()) + 3 * attention


def pair(name: str, compile_model: bool, steps: int, dtype: str) -> tuple:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = Decoder(preset(name))
    folder = tempfile.mkdtemp()
    save_pretrained(model, folder)
    reference = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="sdpa")
    ids = torch.randint(0, model.config.vocab_size, (BATCH, LENGTH))
    labels = ids.roll(-1, dims=1)
    position_ids = torch.arange(LENGTH).expand(BATCH, LENGTH)
    optimizers = [torch.optim.AdamW(m.parameters(), lr=1e-4) for m in (model, reference)]
    forward = torch.compile(model) if compile_model else model
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16")

    def ctlab_step() -> None:
        with autocast:
            out = forward(ids, position_ids)
            loss = token_losses(out.logits, labels) / labels.numel()
        loss.backward()
        optimizers[0].step()
        optimizers[0].zero_grad(set_to_none=True)

    def reference_step() -> None:
        with autocast:
            logits = reference(input_ids=ids, position_ids=position_ids).logits
            loss = token_losses(logits, labels) / labels.numel()
        loss.backward()
        optimizers[1].step()
        optimizers[1].zero_grad(set_to_none=True)

    return model, (lambda: step_rate(ctlab_step, steps)), (lambda: step_rate(reference_step, steps))


def main() -> None:
    warnings.filterwarnings("ignore")
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--compile", action="store_true", help="time ctlab under torch.compile")
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32", help="fp32, or bf16 autocast")
    args = parser.parse_args()
    rate = matmul_rate(torch.float32 if args.dtype == "fp32" else torch.bfloat16)
    print(f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{args.dtype} matmul (1024²): {rate:.1f} GFLOP/s")
    for name, reference_name in (("tiny", "LlamaForCausalLM"), ("tiny-moe", "Qwen2MoeForCausalLM")):
        model, ctlab_rate, reference_rate = pair(name, args.compile, args.steps, args.dtype)
        flops = model_flops_per_token(model)
        rounds = []
        for _ in range(args.rounds):
            ours, theirs = ctlab_rate(), reference_rate()
            rounds.append((ours, theirs))
            print(
                f"  {name}: ctlab {ours:,.0f} tokens/s, {reference_name} {theirs:,.0f} tokens/s, {ours / theirs:.2f}x"
            )
        ours = statistics.median(r[0] for r in rounds)
        theirs = statistics.median(r[1] for r in rounds)
        ratios = ", ".join(f"{a / b:.2f}" for a, b in rounds)
        print(
            f"{name} ({model.num_parameters() / 1e6:.1f}M parameters, {model.num_parameters(active=True) / 1e6:.1f}M "
            f"active): ctlab {ours:,.0f} tokens/s ({ours * flops / 1e9 / rate:.0%} of the matmul rate), "
            f"{reference_name} {theirs:,.0f} tokens/s; ratio per round {ratios}"
        )


if __name__ == "__main__":
    main()
