"""Speculative decoding against plain greedy decoding on a trained model: speed, acceptance,
tokens per target forward, and whether the output is identical; transformers' prompt lookup
and ``assistant_early_exit`` as the peers.

Models: the ``tiny`` LayerSkip run of ``trained_model.py`` (4 layers, 600 steps on inews; its
early exits are trained), and for the long prompt that model trained on at 4,096 positions
(``trained_model.py``'s long-context run). The ``draft`` and TriForce draft is the model cut to
its first layer (the shared head on top: what LayerSkip trained layer 1 to feed). Prompts, all
Chinese news from the held-out split (never trained on):

- ``news``: the first 200 tokens of each of 4 articles, continued for ``--new`` tokens;
- ``summary``: an article followed by "\\n摘要：" (a summarisation-style prompt whose answer may
  copy the article: prompt lookup's case);
- ``long``: held-out articles joined to ``--long`` tokens (TriForce's case, on the long-context
  model), retrieval budget ``--budget``.

Greedy, end-of-text ignored, batch 1, the engine's compiled decoding (``--no-compile``: the
uncompiled one; the programs are built in a warm-up of the rounds' length); each strategy runs after
plain decoding in every round; the ratio is per round, medians over ``--rounds``. Two rates:
over the whole call (new tokens / seconds, the prefill included) and decoding alone (tokens
after the first / seconds after it, what TriForce's paper reports; the prefill of a 3,900-token
prompt outweighs 96 new tokens). A strategy's prefill-time work (the draft's prefill, the
retrieval cache) counts in the whole call only.

    python benchmarks/bench_speculative.py [--rounds 3] [--new 96] [--long 3900] [--budget 256] [--no-compile]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch
from trained_model import long_context_model, trained_layerskip_model

from ctlab.data.demo import heldout_chinese
from ctlab.infer.engine import Engine
from ctlab.infer.sampling import SamplingParams
from ctlab.infer.speculative import DraftModel, LayerSkip, PromptLookup
from ctlab.infer.text import TextModel
from ctlab.infer.triforce import TriForce
from ctlab.model.decoder import Decoder
from ctlab.model.hf import load_model
from ctlab.report.tables import text_table
from ctlab.runs import latest_checkpoint


def truncated(model: Decoder, layers: int) -> Decoder:
    """The model's first ``layers`` layers with its embeddings, final norm and head."""
    draft = Decoder(model.config.replace(num_layers=layers)).eval()
    state = {
        k: v for k, v in model.state_dict().items() if not k.startswith("layers.") or int(k.split(".")[1]) < layers
    }
    draft.load_state_dict(state)
    return draft


def decode(model: Decoder, prompt: list[int], new: int, speculator=None, compile: bool = True) -> dict:
    context = min(len(prompt) + new + 16, model.config.max_position_embeddings)
    engine = Engine(model, context=context, speculator=speculator, compile=compile)
    start = time.perf_counter()
    request = engine.generate([prompt], SamplingParams(max_new_tokens=new, ignore_eos=True))[0]
    seconds = time.perf_counter() - start
    return {
        "output": request.output,
        "tokens_per_s": len(request.output) / seconds,
        "decode_tokens_per_s": request.summary()["tokens_per_second"],
        "acceptance": request.acceptance_rate,
        "tokens_per_forward": request.tokens_per_forward,
    }


def transformers_decode(folder: Path, prompt: list[int], new: int, **options) -> dict:
    import transformers
    from transformers import AutoModelForCausalLM

    transformers.utils.logging.disable_progress_bar()
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    # end-of-text ignored, as for ctlab: min_new_tokens, which assisted generation refuses (there
    # the end token is unset instead; prompt lookup needs it set)
    if "assistant_early_exit" in options:
        model.generation_config.eos_token_id = None
    else:
        options = {**options, "min_new_tokens": new}
    ids = torch.tensor([prompt])
    start = time.perf_counter()
    try:
        with torch.inference_mode():
            out = model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=new,
                do_sample=False,
                pad_token_id=0,
                **options,
            )
    except Exception as err:  # a peer that fails is reported, not hidden
        return {"error": f"{type(err).__name__}: {str(err).splitlines()[0][:120]}"}
    seconds = time.perf_counter() - start
    output = out[0, len(prompt) :].tolist()
    # prompt lookup may return a token more than asked (97 for 96): the rate counts the asked ones
    return {"output": output[:new], "extra_tokens": len(output) - new, "tokens_per_s": min(len(output), new) / seconds}


def spread(ratios: list[float]) -> str:
    """The median ratio and each round's."""
    return f"{statistics.median(ratios):.2f} ({', '.join(f'{x:.2f}' for x in ratios)})"


def prompts(text: TextModel, long: int) -> dict[str, list[list[int]]]:
    articles = heldout_chinese()
    news = [text.encode(a)[:200] for a in articles[:4]]
    summary = [text.encode(articles[4][:600] + "\n摘要：")]
    joined = text.encode("\n".join(articles[5:60]))[:long]
    return {"news": news, "summary": summary, "long": [joined]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--new", type=int, default=96)
    parser.add_argument("--long", type=int, default=3900)
    parser.add_argument("--budget", type=int, default=256)
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True, help="compiled decoding")
    parser.add_argument("--out", default="runs/bench_speculative")
    args = parser.parse_args()
    run, _ = trained_layerskip_model()
    folder = latest_checkpoint(run)
    long_folder = latest_checkpoint(long_context_model())
    model, long_model = load_model(folder), load_model(long_folder)
    text = TextModel(folder)  # both models have its tokenizer
    strategies = {
        "news": {
            "layerskip E=1 k=4": lambda: LayerSkip(1, 4),
            "layerskip E=2 k=4": lambda: LayerSkip(2, 4),
            "draft (layer 1) k=4": lambda: DraftModel(truncated(model, 1), 4),
            "lookup k=10": lambda: PromptLookup(10),
        },
        "summary": {"lookup k=10": lambda: PromptLookup(10), "layerskip E=1 k=4": lambda: LayerSkip(1, 4)},
        "long": {
            f"triforce budget {args.budget}": lambda: TriForce(
                truncated(long_model, 1), budget=args.budget, num_speculations=6
            ),
            "draft (layer 1) k=4": lambda: DraftModel(truncated(long_model, 1), 4),
        },
    }
    peers = {
        "news": {"transformers assistant_early_exit=1": dict(assistant_early_exit=1)},
        "summary": {"transformers prompt lookup (10)": dict(prompt_lookup_num_tokens=10)},
        "long": {},
    }
    targets = {"news": (model, folder), "summary": (model, folder), "long": (long_model, long_folder)}
    rows = [
        (
            "prompts",
            "strategy",
            "tokens/s",
            "× plain (median)",
            "decoding: tokens/s",
            "× plain",
            "acceptance",
            "tokens/forward",
            "identical",
        )
    ]
    record = {}
    for kind, batch in prompts(text, args.long).items():
        target, target_folder = targets[kind]
        plain_rates, plain_decode_rates, results = [], [], {name: [] for name in [*strategies[kind], *peers[kind]]}
        # warm up at the rounds' length: each token count a step or verification meets (the
        # speculations shrink near a request's end) compiles a program of its own here
        for make in [lambda: None, *strategies[kind].values()]:
            decode(target, batch[0], args.new, make(), args.compile)
        for _ in range(args.rounds):
            plain = [decode(target, p, args.new, compile=args.compile) for p in batch]
            plain_rates.append(statistics.mean(r["tokens_per_s"] for r in plain))
            plain_decode_rates.append(statistics.mean(r["decode_tokens_per_s"] for r in plain))
            for name, make in strategies[kind].items():
                runs = [decode(target, p, args.new, make(), args.compile) for p in batch]
                results[name].append(
                    {
                        "tokens_per_s": statistics.mean(r["tokens_per_s"] for r in runs),
                        "decode_tokens_per_s": statistics.mean(r["decode_tokens_per_s"] for r in runs),
                        "acceptance": statistics.mean(r["acceptance"] or 0 for r in runs),
                        "tokens_per_forward": statistics.mean(r["tokens_per_forward"] for r in runs),
                        "identical": all(r["output"] == p["output"] for r, p in zip(runs, plain, strict=True)),
                    }
                )
            for name, options in peers[kind].items():
                runs = [transformers_decode(target_folder, p, args.new, **options) for p in batch]
                if any("error" in r for r in runs):
                    results[name].append({"error": next(r["error"] for r in runs if "error" in r)})
                    continue
                results[name].append(
                    {
                        "tokens_per_s": statistics.mean(r["tokens_per_s"] for r in runs),
                        "extra_tokens": max(r["extra_tokens"] for r in runs),
                        "identical": all(r["output"] == p["output"] for r, p in zip(runs, plain, strict=True)),
                    }
                )
        plain_decoding = f"{statistics.median(plain_decode_rates):.1f}"
        rows.append(
            (
                kind,
                "plain greedy",
                f"{statistics.median(plain_rates):.1f}",
                "1.00",
                plain_decoding,
                "1.00",
                "-",
                "1.0",
                "-",
            )
        )
        record[kind] = {
            "plain_tokens_per_s": plain_rates,
            "plain_decode_tokens_per_s": plain_decode_rates,
            "strategies": results,
            "prompt_tokens": [len(p) for p in batch],
        }
        for name, rounds in results.items():
            if "error" in rounds[0]:
                rows.append((kind, name, "-", "-", "-", "-", "-", "-", rounds[0]["error"]))
                continue
            ratios = [r["tokens_per_s"] / p for r, p in zip(rounds, plain_rates, strict=True)]
            record[kind]["strategies"][name] = {"rounds": rounds, "ratios": ratios}
            decoding, decode_ratio = "-", "-"
            if "decode_tokens_per_s" in rounds[0]:
                decode_ratios = [r["decode_tokens_per_s"] / p for r, p in zip(rounds, plain_decode_rates, strict=True)]
                record[kind]["strategies"][name]["decode_ratios"] = decode_ratios
                decoding = f"{statistics.median(r['decode_tokens_per_s'] for r in rounds):.1f}"
                decode_ratio = (
                    f"{statistics.median(decode_ratios):.2f} ({', '.join(f'{x:.2f}' for x in decode_ratios)})"
                )
            rows.append(
                (
                    kind,
                    name,
                    f"{statistics.median(r['tokens_per_s'] for r in rounds):.1f}",
                    spread(ratios),
                    decoding,
                    decode_ratio,
                    f"{rounds[0]['acceptance']:.0%}" if "acceptance" in rounds[0] else "-",
                    f"{rounds[0]['tokens_per_forward']:.2f}" if "tokens_per_forward" in rounds[0] else "-",
                    "yes" if all(r["identical"] for r in rounds) else "NO",
                )
            )
        print(text_table(rows[-len(results) - 1 :] if len(rows) > 1 else rows), flush=True)
    print(text_table(rows))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    summary = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
        "models": {kind: str(target_folder) for kind, (_, target_folder) in targets.items()},
        "args": vars(args),
        "results": record,
    }
    (out / "results.json").write_text(json.dumps(summary, indent=1, default=str))


if __name__ == "__main__":
    main()
