"""``ctlab data tokenize``: clean corpora → token shards, with several sources mixed by weight.

Each input file becomes one shard (so the result does not depend on the number of workers),
tokenised in parallel worker processes and written under temporary names; a shard is complete
once its ``.json`` exists, so an interrupted run resumes where it stopped. Bad input records
are counted per kind, never silently skipped.

Mixing: ``--mix zh=2.8,en=1,code=0.3`` asks for those shares of *tokens*. The source that is
shortest relative to its weight is used whole and the others are sampled down (whole
documents, a seeded shuffle), so every share is met as closely as whole documents allow; the
mix actually produced, and the tokens left out, are reported.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import IO

import numpy as np
from tqdm import tqdm

from ctlab.data.readers import BadRecord, CorpusReader, corpus_files
from ctlab.errors import UserError
from ctlab.report.tables import text_table
from ctlab.runs import RUN_FILE, atomic_write, claim, file_digest, read_json, save_npy, write_json
from ctlab.tokenizer.load import read_tokenizer
from ctlab.tokens.store import FORMAT, MANIFEST

BATCH_DOCUMENTS = 512
_SOURCE_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


@dataclass
class Source:
    name: str
    inputs: list[str]
    weight: float | None = None
    files: list[str] = field(default_factory=list)


def parse_sources(specs: list[str], mix: str | None) -> list[Source]:
    """``NAME=PATH`` (NAME: letters, digits, ``_-.``; repeatable) or bare PATH (source ``corpus``)
    specs, and an optional ``NAME=WEIGHT,...`` mix naming every source."""
    sources: dict[str, Source] = {}
    for spec in specs:
        name, _, path = spec.partition("=")
        if not _SOURCE_NAME.match(name) or not path:  # a bare path (which may hold "=", as in lang=zh/)
            name, path = "corpus", spec
        sources.setdefault(name, Source(name, [])).inputs.append(path)
    if mix:
        weights: dict[str, float] = {}
        for item in mix.split(","):
            name, _, value = item.partition("=")
            if name.strip() in weights:
                raise UserError(f"--mix names {name.strip()!r} twice")
            try:
                weights[name.strip()] = float(value)
            except ValueError:
                raise UserError(f"bad mix entry {item!r}: expected NAME=WEIGHT") from None
        if set(weights) != set(sources):
            raise UserError(f"--mix names {sorted(weights)} but the sources are {sorted(sources)}")
        if any(w <= 0 or not np.isfinite(w) for w in weights.values()):
            raise UserError("mix weights must be positive numbers")
        for name, weight in weights.items():
            sources[name].weight = weight
    for source in sources.values():
        source.files = corpus_files(source.inputs)
        if not source.files:
            raise UserError(f"source {source.name!r} has no input files")
    return list(sources.values())


@dataclass
class TokenizerInfo:
    """What a tokens folder needs to know about its tokenizer (read without transformers)."""

    path: str
    vocab_size: int
    bos_id: int | None
    eos_id: int
    pad_id: int
    sha256: str

    @classmethod
    def load(cls, folder: str) -> TokenizerInfo:
        tokenizer_json = Path(folder, "tokenizer.json")
        if not tokenizer_json.is_file():
            raise UserError(f"{folder} holds no tokenizer.json (train one with `ctlab tokenizer train`)")
        config_path = Path(folder, "tokenizer_config.json")
        config = read_json(config_path, "a tokenizer folder") if config_path.is_file() else {}
        if not isinstance(config, dict):
            raise UserError(f"{config_path} is not a mapping of settings")
        tokenizer = read_tokenizer(tokenizer_json)

        def special(key: str) -> int | None:
            token = config.get(key)
            token = token.get("content") if isinstance(token, dict) else token
            return tokenizer.token_to_id(token) if token else None

        eos = special("eos_token")
        if eos is None:
            raise UserError(f"the tokenizer in {folder} has no eos_token in tokenizer_config.json")
        pad = special("pad_token")
        return cls(
            str(tokenizer_json.absolute()),
            tokenizer.get_vocab_size(with_added_tokens=True),
            special("bos_token"),
            eos,
            eos if pad is None else pad,
            file_digest(tokenizer_json),
        )

    @property
    def dtype(self) -> str:
        return "uint16" if self.vocab_size <= 1 << 16 else "uint32"


_worker_tokenizer = None


def _init_worker(tokenizer_json: str, threads: int | None) -> None:
    if threads is not None:  # before tokenizers starts its thread pool in this process
        os.environ["RAYON_NUM_THREADS"] = str(threads)
    global _worker_tokenizer
    _worker_tokenizer = read_tokenizer(tokenizer_json)  # "<|endoftext|>" in a document is text, not EOS


def tokenize_file(
    path: str, shard_path: str, bos_id: int | None, eos_id: int, dtype: str, text_key: str = "text"
) -> dict:
    """Tokenise every document of ``path`` into ``shard_path``.{bin,idx.npy,json}; returns the shard's
    record (also written as its .json, last, which marks the shard complete)."""
    shard = Path(shard_path)
    identity = _input_identity(path)  # before reading: a file changed meanwhile is redone next time
    reader = CorpusReader([path], text_key=text_key, progress=False)
    prefix = [] if bos_id is None else [bos_id]
    offsets = [0]
    counts = {"characters": 0, "bad_records": {}}

    def encode(texts: list[str], out: IO[bytes]) -> None:
        for encoding in _worker_tokenizer.encode_batch_fast(texts, add_special_tokens=False):
            ids = np.array([*prefix, *encoding.ids, eos_id], dtype=dtype)
            out.write(ids.tobytes())
            offsets.append(offsets[-1] + len(ids))

    def write_tokens(out: IO[bytes]) -> None:
        batch: list[str] = []
        for item in reader.read_file(path):
            if isinstance(item, BadRecord):
                counts["bad_records"][item.kind] = counts["bad_records"].get(item.kind, 0) + 1
                continue
            batch.append(item.text)
            counts["characters"] += len(item.text)
            if len(batch) == BATCH_DOCUMENTS:
                encode(batch, out)
                batch = []
        encode(batch, out)

    atomic_write(shard.with_name(shard.name + ".bin"), write_tokens)
    save_npy(shard.with_name(shard.name + ".idx.npy"), np.array(offsets, dtype=np.int64))
    record = {
        "name": shard.name,
        "input": path,
        **identity,
        "documents": len(offsets) - 1,
        "tokens": offsets[-1],
        **counts,
    }
    write_json(shard.with_name(shard.name + ".json"), record)
    return record


def _tokenize_unit(args: tuple) -> dict:
    return tokenize_file(*args)


def choose_mix(sources: list[dict], seed: int) -> list[np.ndarray]:
    """Per source, the indices of the documents kept by the mix (all of them without weights).

    ``sources``: dicts with ``weight`` (None or > 0) and ``lengths`` ((documents,) tokens each).
    """
    totals = [int(s["lengths"].sum()) for s in sources]
    if any(s["weight"] is None for s in sources):
        return [np.arange(len(s["lengths"]), dtype=np.int64) for s in sources]
    if 0 in totals:
        raise ValueError("a source with no documents cannot be mixed by weight")
    weight_sum = sum(s["weight"] for s in sources)
    scale = min(total / (s["weight"] / weight_sum) for s, total in zip(sources, totals, strict=True))
    chosen = []
    for index, (source, total) in enumerate(zip(sources, totals, strict=True)):
        target = scale * source["weight"] / weight_sum
        lengths = source["lengths"]
        if target >= total:
            chosen.append(np.arange(len(lengths), dtype=np.int64))
            continue
        order = np.random.default_rng([seed, index]).permutation(len(lengths))
        cumulative = np.cumsum(lengths[order])
        count = int(np.searchsorted(cumulative, target))  # first prefix reaching the target ...
        if count > 0 and target - cumulative[count - 1] < cumulative[min(count, len(order) - 1)] - target:
            count -= 1  # ... or the one before it, whichever is closer
        chosen.append(np.sort(order[: count + 1]))
    return chosen


def mix_table(manifest: dict) -> str:
    """The mix as produced: per source, documents and tokens kept of those available, and shares."""
    rows = [("source", "weight", "documents", "tokens", "target", "produced", "left out")]
    for s in manifest["sources"]:
        rows.append(
            (
                s["name"],
                "-" if s["weight"] is None else f"{s['weight']:g}",
                f"{s['selected_documents']:,}/{s['documents']:,}",
                f"{s['selected_tokens']:,}/{s['tokens']:,}",
                "-" if s["target_share"] is None else f"{s['target_share']:.1%}",
                f"{s['produced_share']:.1%}",
                f"{s['tokens'] - s['selected_tokens']:,} tokens",
            )
        )
    lines = [text_table(rows)]
    bad: dict[str, int] = {}
    for source in manifest["sources"]:
        for kind, count in source["bad_records"].items():
            bad[kind] = bad.get(kind, 0) + count
    if bad:
        lines.append("bad records (skipped): " + ", ".join(f"{k} {v}" for k, v in sorted(bad.items())))
    return "\n".join(lines)


def _input_identity(path: str) -> dict:
    """What tells a changed input file apart: its size and modification time."""
    stat = os.stat(path)
    return {"input_bytes": stat.st_size, "input_mtime_ns": stat.st_mtime_ns}


def _run_units(pending: list[tuple], tokenizer_json: str, workers: int, progress: bool) -> list[dict]:
    """Tokenise the pending shards, in worker processes when there are several; their records in order."""
    records = []
    with tqdm(
        total=sum(os.path.getsize(args[0]) for args in pending),
        unit="B",
        unit_scale=True,
        desc="tokenize",
        disable=not progress,
    ) as bar:
        if workers == 1 or len(pending) <= 1:
            _init_worker(tokenizer_json, None)
            results = map(_tokenize_unit, pending)
            for record in results:
                records.append(record)
                bar.update(record["input_bytes"])
            return records
        threads = max(1, (os.cpu_count() or 1) // workers)
        with ProcessPoolExecutor(
            workers, mp_context=get_context("fork"), initializer=_init_worker, initargs=(tokenizer_json, threads)
        ) as pool:
            for record in pool.map(_tokenize_unit, pending):
                records.append(record)
                bar.update(record["input_bytes"])
    return records


def _source_entry(source: Source, shards: list[dict]) -> dict:
    bad: dict[str, int] = {}
    for shard in shards:
        for kind, count in shard["bad_records"].items():
            bad[kind] = bad.get(kind, 0) + count
    return {
        "name": source.name,
        "inputs": source.inputs,
        "weight": source.weight,
        "shards": [{k: s[k] for k in ("name", "input", "documents", "tokens", "characters")} for s in shards],
        "documents": sum(s["documents"] for s in shards),
        "tokens": sum(s["tokens"] for s in shards),
        "characters": sum(s["characters"] for s in shards),
        "bad_records": bad,
    }


def tokenize(
    sources: list[Source],
    tokenizer_dir: str,
    out: str,
    workers: int = 1,
    seed: int = 0,
    progress: bool = True,
    text_key: str = "text",
) -> dict:
    """Tokenise ``sources`` into the tokens folder ``out`` (see :mod:`ctlab.tokens.store`) and
    choose the mix; returns the manifest. Rerunning resumes; a folder made from other inputs or
    another tokenizer is refused."""
    if workers < 1:
        raise UserError("--workers must be at least 1")
    if seed < 0:
        raise UserError("--seed must be at least 0")
    info = TokenizerInfo.load(tokenizer_dir)
    out_dir = Path(out)
    run = {"format": FORMAT, "tokenizer_sha256": info.sha256, "text_key": text_key}
    resumed = claim(out_dir, "tokenize", {**run, "sources": {s.name: s.files for s in sources}}).resumed
    if resumed:
        for leftover in (out_dir / "shards").glob(".tmp.*"):  # a killed run's partial files
            leftover.unlink(missing_ok=True)
    (out_dir / "shards").mkdir(exist_ok=True)

    shard_dir = out_dir / "shards"
    shard_paths = {s.name: [str(shard_dir / f"{s.name}-{k:05d}") for k in range(len(s.files))] for s in sources}
    records: dict[str, dict] = {}
    pending = []
    for source in sources:
        for path, shard_path in zip(source.files, shard_paths[source.name], strict=True):
            done = Path(shard_path + ".json")  # written last: the shard is complete
            record = json.loads(done.read_text()) if done.is_file() else None
            if record is not None and all(record.get(k) == v for k, v in _input_identity(path).items()):
                records[shard_path] = record
            else:  # not done, or its input file changed since
                pending.append((path, shard_path, info.bos_id, info.eos_id, info.dtype, text_key))
    for args, record in zip(pending, _run_units(pending, info.path, workers, progress), strict=True):
        records[args[1]] = record

    entries, lengths = [], []
    for source in sources:
        shards = [records[p] for p in shard_paths[source.name]]
        entries.append(_source_entry(source, shards))
        lengths.append(np.concatenate([np.diff(np.load(Path(p + ".idx.npy"))) for p in shard_paths[source.name]]))
    empty = [e["name"] for e in entries if e["documents"] == 0]
    if empty:
        bad = {e["name"]: e["bad_records"] for e in entries if e["name"] in empty}
        if not resumed:  # this call wrote it all and found nothing to keep: leave the folder as it was
            shutil.rmtree(out_dir / "shards")
            (out_dir / RUN_FILE).unlink()
        raise UserError(f"source(s) {', '.join(empty)} hold no documents (bad records: {bad}); check --text-key")
    chosen = choose_mix([{"weight": s.weight, "lengths": n} for s, n in zip(sources, lengths, strict=True)], seed)
    (out_dir / MANIFEST).unlink(missing_ok=True)  # the folder is incomplete until the new manifest is written
    mix_dir = out_dir / "mix"
    shutil.rmtree(mix_dir, ignore_errors=True)
    mix_dir.mkdir()
    weight_sum = sum(s.weight for s in sources) if all(s.weight for s in sources) else None
    selected_total = sum(int(n[c].sum()) for n, c in zip(lengths, chosen, strict=True))
    for entry, source, picks, source_lengths in zip(entries, sources, chosen, lengths, strict=True):
        save_npy(mix_dir / f"{source.name}.npy", picks)
        entry["selected_documents"] = len(picks)
        entry["selected_tokens"] = int(source_lengths[picks].sum())
        entry["target_share"] = None if weight_sum is None else source.weight / weight_sum
        entry["produced_share"] = entry["selected_tokens"] / selected_total if selected_total else 0.0
    manifest = {
        "format": FORMAT,
        "tokenizer": {
            "path": info.path,
            "sha256": info.sha256,
            "vocab_size": info.vocab_size,
            "bos_id": info.bos_id,
            "eos_id": info.eos_id,
            "pad_id": info.pad_id,
        },
        "dtype": info.dtype,
        "seed": seed,
        "document_layout": "[BOS] tokens [EOS]" if info.bos_id is not None else "tokens [EOS]",
        "sources": entries,
        "selected_documents": sum(e["selected_documents"] for e in entries),
        "selected_tokens": selected_total,
    }
    write_json(out_dir / MANIFEST, manifest)
    return manifest
