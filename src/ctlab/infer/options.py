"""The engine options of ``ctlab generate``, ``chat`` and ``serve``: one declaration, one builder.

Each command adds :func:`add_engine_arguments` (and :func:`add_sampling_arguments` where the
command line chooses the sampling) and turns the parsed arguments into an engine with
:func:`build_engine`, so every command offers the same KV policies, speculation, quantisation
and devices, with the same one-line errors.
"""

from __future__ import annotations

import argparse
import sys

from ctlab.args import non_negative_int, positive_float, positive_int
from ctlab.errors import UserError

KV_POLICIES = ("full", "snapkv", "corm", "streaming")
STRATEGIES = ("none", "draft", "layerskip", "triforce", "lookup")
QUANTIZATIONS = ("none", "int8", "fp8")
DTYPES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}


def add_engine_arguments(parser: argparse.ArgumentParser, compile: bool = False) -> None:
    """The engine's options; ``compile``: this command's default for compiled decoding (on
    for long-lived or long work, where a compilation at the start pays)."""
    parser.add_argument("model", metavar="MODEL", help="a run folder, a checkpoint folder or an HF checkpoint")
    engine = parser.add_argument_group("engine")
    engine.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=compile,
        help=f"compiled decoding on CPU: faster batch-1 steps after a compilation at the start "
        f"(about 4-8 s; 20-30 s the first time on a machine) (default: {'on' if compile else 'off'})",
    )
    engine.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: cuda when present)")
    engine.add_argument("--dtype", choices=DTYPES, help="weights and cache (default: float32 on CPU, bfloat16 on GPU)")
    engine.add_argument("--context", type=positive_int, help="longest prompt + reply (default: the model's context)")
    engine.add_argument("--prefill-chunk", type=positive_int, default=512, help="prompt tokens per forward (512)")
    engine.add_argument("--quantize", choices=QUANTIZATIONS, default="none", help="weight-only int8 or fp8 (e4m3)")
    kv = parser.add_argument_group("KV cache")
    kv.add_argument("--kv-policy", choices=KV_POLICIES, default="full", help="which cache entries to keep (full)")
    kv.add_argument("--kv-capacity", type=positive_int, help="snapkv: entries kept per head (default 2048)")
    kv.add_argument("--kv-window", type=positive_int, help="snapkv: observation window (32); corm: queries (32)")
    kv.add_argument("--kv-kernel", type=positive_int, default=5, help="snapkv: pooling kernel (5)")
    kv.add_argument("--kv-pooling", choices=("avg", "max"), default="avg", help="snapkv: pooling (avg)")
    kv.add_argument("--kv-sinks", type=non_negative_int, default=4, help="streaming: first positions kept (4)")
    kv.add_argument("--kv-recent", type=positive_int, help="streaming: recent positions kept (1020); corm (32)")
    speculation = parser.add_argument_group("speculative decoding")
    speculation.add_argument("--speculate", choices=STRATEGIES, default="none", help="drafting strategy (none)")
    speculation.add_argument("--draft", metavar="MODEL", help="draft, triforce: a smaller model, the same tokenizer")
    speculation.add_argument("--exit-layer", type=positive_int, help="layerskip: the layers that draft")
    speculation.add_argument(
        "--num-speculations", type=positive_int, help="drafts per round (draft 4, layerskip 6, triforce 6, lookup 10)"
    )
    speculation.add_argument(
        "--retrieval-budget", type=positive_int, default=4096, help="triforce: entries of the retrieval cache (4096)"
    )


def add_sampling_arguments(parser: argparse.ArgumentParser, max_new_tokens: int = 256) -> None:
    sampling = parser.add_argument_group("sampling")
    sampling.add_argument("--max-new-tokens", type=positive_int, default=max_new_tokens, help=f"({max_new_tokens})")
    sampling.add_argument("--temperature", type=float, default=0.0, help="0: greedy (default)")
    sampling.add_argument("--top-k", type=non_negative_int, default=0, help="0: off")
    sampling.add_argument("--top-p", type=positive_float, default=1.0)
    sampling.add_argument("--min-p", type=float, default=0.0)
    sampling.add_argument("--repetition-penalty", type=positive_float, default=1.0)
    sampling.add_argument("--seed", type=int)
    sampling.add_argument("--stop", action="append", default=[], metavar="TEXT", help="stop string (repeatable)")


def sampling_params(args: argparse.Namespace, stop_token_ids: list[int]):
    from ctlab.infer.sampling import SamplingParams

    return SamplingParams.of(
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        min_p=args.min_p,
        repetition_penalty=args.repetition_penalty,
        seed=args.seed,
        stop_token_ids=stop_token_ids,
    )


def resolve_device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r} (cpu, cuda, cuda:N or auto)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available")
    return device


def build_engine(args: argparse.Namespace, max_batch: int = 1, max_waiting: int | None = None):
    """The engine and the model's :class:`~ctlab.infer.text.TextModel` that ``args`` describe."""
    import torch

    from ctlab.infer.engine import Engine
    from ctlab.infer.text import TextModel
    from ctlab.model.hf import load_model

    device = resolve_device(args.device)
    dtype = getattr(torch, args.dtype or ("float32" if device.type == "cpu" else "bfloat16"))
    model = load_model(args.model, device, dtype)
    text = TextModel(args.model)
    if args.quantize != "none":
        from ctlab.infer.quant import quantize

        quantize(model, args.quantize)
    context = args.context or model.config.max_position_embeddings
    if args.compile and device.type == "cpu":
        print(
            "ctlab: decoding compiles at the start (about 4-8 s; 20-30 s the first time on a machine; "
            "--no-compile skips it)",
            file=sys.stderr,
        )
    engine = Engine(
        model,
        max_batch=max_batch,
        context=context,
        kv_policy=kv_policy(args, min(context, model.config.max_position_embeddings)),
        speculator=speculator(args, text, device, dtype),
        prefill_chunk=args.prefill_chunk,
        max_waiting=max_waiting,
        compile=args.compile,
    )
    return engine, text


def given(**settings) -> dict:
    """The settings a user gave (not None): the classes' own defaults stand for the others."""
    return {name: value for name, value in settings.items() if value is not None}


def kv_policy(args: argparse.Namespace, context: int):
    from ctlab.infer.policies import CORM, FullCache, SnapKV, StreamingCache

    if args.kv_policy == "snapkv":  # the default budget, cut to a shorter context
        capacity = args.kv_capacity or min(SnapKV.default_capacity, context)
        return SnapKV(capacity, kernel=args.kv_kernel, pooling=args.kv_pooling, **given(window=args.kv_window))
    if args.kv_policy == "corm":
        return CORM(**given(window=args.kv_window, recent=args.kv_recent))
    if args.kv_policy == "streaming":
        recent = args.kv_recent or max(min(StreamingCache.default_recent, context - args.kv_sinks), 1)
        return StreamingCache(args.kv_sinks, recent)
    return FullCache()


def speculator(args: argparse.Namespace, text, device, dtype):
    from ctlab.infer.speculative import DraftModel, LayerSkip, PromptLookup
    from ctlab.model.hf import load_model
    from ctlab.runs import latest_checkpoint
    from ctlab.tokens.packed import tokenizer_sha256

    if args.speculate not in ("draft", "triforce") and args.draft:
        raise UserError("--draft is for --speculate draft or triforce")
    if args.speculate != "layerskip" and args.exit_layer:
        raise UserError("--exit-layer is for --speculate layerskip")
    count = given(num_speculations=args.num_speculations)
    if args.speculate in ("draft", "triforce"):
        if not args.draft:
            raise UserError(f"--speculate {args.speculate} needs --draft MODEL")
        ours, theirs = tokenizer_sha256(text.folder), tokenizer_sha256(latest_checkpoint(args.draft))
        if ours and theirs and ours != theirs:
            raise UserError(f"the draft {args.draft} has another tokenizer than {args.model}")
        draft = load_model(args.draft, device, dtype)
        if args.speculate == "triforce":
            from ctlab.infer.triforce import TriForce

            return TriForce(draft, budget=args.retrieval_budget, **count)
        return DraftModel(draft, **count)
    if args.speculate == "layerskip":
        if not args.exit_layer:
            raise UserError("--speculate layerskip needs --exit-layer E (the layers that draft)")
        return LayerSkip(args.exit_layer, **count)
    if args.speculate == "lookup":
        return PromptLookup(**count)
    return None
