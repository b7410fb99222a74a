"""Packed folders and the training loader: every selected document's tokens exactly once, labels and
positions per chunk, rank sharding of the shuffled stream and resuming by position."""

import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from ctlab.errors import UserError
from ctlab.tokens.loader import PackedLoader, collate
from ctlab.tokens.pack import pack
from ctlab.tokens.packed import IGNORE_INDEX, PackedDataset, write_packing
from ctlab.tokens.store import TokenStore
from ctlab.tokens.tokenize import parse_sources, tokenize

SEQ_LEN = 64


# -- helpers ------------------------------------------------------------------------------------------


def write_jsonl(path: Path, texts: list[str]) -> str:
    path.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts))
    return str(path)


def selected_documents(folder: Path) -> list[np.ndarray]:
    """The token arrays of the documents the mix selected, in store order, read straight from the files."""
    manifest = json.loads((folder / "tokens.json").read_text())
    docs = []
    for source in manifest["sources"]:
        source_docs = []
        for shard in source["shards"]:
            tokens = np.fromfile(folder / "shards" / f"{shard['name']}.bin", dtype=manifest["dtype"])
            offsets = np.load(folder / "shards" / f"{shard['name']}.idx.npy")
            source_docs.extend(tokens[a:b].astype(np.int64) for a, b in zip(offsets[:-1], offsets[1:], strict=True))
        docs.extend(source_docs[i] for i in np.load(folder / "mix" / f"{source['name']}.npy"))
    return docs


def batches_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        torch.equal(a[k], b[k]) if isinstance(a[k], torch.Tensor) else a[k] == b[k] for k in a
    )


def global_stream(loaders: list[PackedLoader], steps: int) -> list[int]:
    """Sequence indices of ``steps`` global batches: the ranks' batches of each step, in rank order."""
    return [i for _ in range(steps) for loader in loaders for i in loader.next_indices()]


# -- fixtures -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokens_dir(tmp_path_factory, tokenizer_dir, inews, code_docs) -> Path:
    """Short documents (inews paragraphs, in two files) and longer ones (Python modules), mixed so
    that some documents are left out."""
    root = tmp_path_factory.mktemp("loader")
    paragraphs = [p.strip() for _, text in inews[2000:2060] for p in text.split("\n") if p.strip()]
    half = len(paragraphs) // 2
    specs = [
        "zh=" + write_jsonl(root / "zh-a.jsonl", paragraphs[:half]),
        "zh=" + write_jsonl(root / "zh-b.jsonl", paragraphs[half:]),
        "code=" + write_jsonl(root / "code.jsonl", code_docs[:8]),
    ]
    out = root / "tokens"
    tokenize(parse_sources(specs, "zh=3,code=1"), str(tokenizer_dir), str(out), progress=False)
    return out


@pytest.fixture(scope="module", params=["bfd", "concat"])
def packed(request, tokens_dir, tmp_path_factory) -> PackedDataset:
    out = tmp_path_factory.mktemp("packed") / request.param
    write_packing(str(tokens_dir), str(out), SEQ_LEN, request.param)
    return PackedDataset(out)


@pytest.fixture(scope="module")
def exact_packed(tokens_dir, tmp_path_factory) -> PackedDataset:
    """A bfd packing whose sequence count is a multiple of 12 (= B·W for B 2 and W 2 or 3)."""
    starts, lengths, _ = TokenStore(tokens_dir).documents()
    seq_len = next(n for n in range(SEQ_LEN, 4 * SEQ_LEN) if pack(starts, lengths, n).sequences % 12 == 0)
    out = tmp_path_factory.mktemp("exact") / "packed"
    write_packing(str(tokens_dir), str(out), seq_len)
    dataset = PackedDataset(out)
    assert len(dataset) % 12 == 0 and len(dataset) >= 48
    return dataset


# -- PackedDataset ---------------------------------------------------------------------------------------


def test_sequences_hold_every_selected_document_exactly_once(packed, tokens_dir):
    dataset = packed
    pad = dataset.pad_id
    docs = selected_documents(tokens_dir)
    assert len(docs) < sum(s["documents"] for s in json.loads((tokens_dir / "tokens.json").read_text())["sources"])
    assert any(len(d) > SEQ_LEN for d in docs) and any(len(d) < SEQ_LEN // 2 for d in docs)
    chunks, stream = [], []
    for index in range(len(dataset)):
        item = dataset[index]
        assert {k: (v.dtype, v.shape) for k, v in item.items()} == {
            "input_ids": (np.int64, (SEQ_LEN,)),
            "labels": (np.int64, (SEQ_LEN,)),
            "position_ids": (np.int64, (SEQ_LEN,)),
        }
        starts = np.flatnonzero(item["position_ids"] == 0).tolist()  # each chunk, then any padding
        seqlens = np.diff([*starts, SEQ_LEN]).tolist()
        assert starts[0] == 0 and min(seqlens) >= 1
        real = len(dataset.packing.sequence(index))
        assert len(seqlens) in (real, real + 1)
        assert seqlens[:real] == [length for _, length in dataset.packing.sequence(index)]
        at = 0
        for k, size in enumerate(seqlens):
            ids = item["input_ids"][at : at + size]
            labels = item["labels"][at : at + size]
            assert item["position_ids"][at : at + size].tolist() == list(range(size))
            if k < real:
                assert labels[:-1].tolist() == ids[1:].tolist() and labels[-1] == IGNORE_INDEX
                assert pad not in ids.tolist()
                chunks.append(tuple(ids.tolist()))
                stream.extend(ids.tolist())
            else:  # padding
                assert set(ids.tolist()) == {pad} and set(labels.tolist()) == {IGNORE_INDEX}
            at += size
    # bfd cuts only documents longer than L (into L-token pieces and a remainder) and reorders them;
    # concat cuts the stream of documents every L tokens, in order
    if dataset.manifest["strategy"] == "bfd":
        expected = Counter(tuple(d[i : i + SEQ_LEN].tolist()) for d in docs for i in range(0, len(d), SEQ_LEN))
        assert Counter(chunks) == expected
    else:
        assert stream == np.concatenate(docs).tolist()
        assert len(dataset) == -(-len(stream) // SEQ_LEN)


def test_indexing_out_of_range(packed):
    with pytest.raises(IndexError):
        packed[len(packed)]
    with pytest.raises(IndexError):
        packed[-1]


def test_changed_tokens_folder_is_refused(tokens_dir, tmp_path):
    tokens = Path(shutil.copytree(tokens_dir, tmp_path / "tokens"))
    write_packing(str(tokens), str(tmp_path / "packed"), SEQ_LEN)
    assert len(PackedDataset(tmp_path / "packed")) > 0
    manifest = json.loads((tokens / "tokens.json").read_text())
    manifest["seed"] = 1  # e.g. the mix chosen again
    (tokens / "tokens.json").write_text(json.dumps(manifest))
    with pytest.raises(UserError, match="pack it again"):
        PackedDataset(tmp_path / "packed")
    with pytest.raises(UserError, match="not a packed folder"):
        PackedDataset(tokens)
    with pytest.raises(UserError, match="holds a ctlab tokenize run, not a pack run"):
        write_packing(str(tokens), str(tokens), SEQ_LEN)


def test_a_packed_folder_is_not_repacked_with_other_settings(tokens_dir, tmp_path):
    """Training resumes on what a packed folder holds: `data pack` never changes it under a run."""
    out = tmp_path / "packed"
    stats = write_packing(str(tokens_dir), str(out), SEQ_LEN)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    for seq_len, strategy in ((SEQ_LEN // 2, "bfd"), (SEQ_LEN, "concat")):
        with pytest.raises(UserError, match="holds a pack run with other settings"):
            write_packing(str(tokens_dir), str(out), seq_len, strategy)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert write_packing(str(tokens_dir), str(out), SEQ_LEN) == stats  # the same packing again
    (out / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="seq_len: 64 -> 32"):
        write_packing(str(tokens_dir), str(out), SEQ_LEN // 2)
    not_ours = tmp_path / "mine"
    not_ours.mkdir()
    (not_ours / "pack.json").write_text("{}")
    with pytest.raises(UserError, match="not empty and not a ctlab pack folder"):
        write_packing(str(tokens_dir), str(not_ours), SEQ_LEN)


# -- collate --------------------------------------------------------------------------------------------


def test_collate_stacks_the_samples(packed):
    samples = [packed[i] for i in (0, len(packed) // 2, len(packed) - 1)]
    batch = collate(samples)
    assert sorted(batch) == ["input_ids", "labels", "position_ids"]
    for key in batch:
        assert batch[key].dtype == torch.int64 and batch[key].shape == (3, SEQ_LEN)
        assert np.array_equal(batch[key].numpy(), np.stack([s[key] for s in samples]))


# -- PackedLoader ----------------------------------------------------------------------------------------


def test_resume_continues_with_the_same_batches(packed):
    batch_size = 5
    steps_per_epoch = -(-len(packed) // batch_size)
    uninterrupted = PackedLoader(packed, batch_size, seed=3)
    for _ in range(steps_per_epoch - 3):
        uninterrupted.next_indices()
    state = uninterrupted.state_dict()
    assert state == {"position": (steps_per_epoch - 3) * batch_size, "seed": 3, "global_batch_size": batch_size}
    expected = [next(uninterrupted) for _ in range(6)]  # across the epoch boundary
    assert uninterrupted.epoch > 1
    resumed = PackedLoader(packed, batch_size, seed=3)
    resumed.load_state_dict(json.loads(json.dumps(state)))  # as saved in a checkpoint
    from_position = PackedLoader(str(packed.folder), batch_size, seed=3, position=state["position"])
    for batch in expected:
        assert batches_equal(next(resumed), batch)
        assert batches_equal(next(from_position), batch)
    assert resumed.state_dict() == uninterrupted.state_dict()


def test_ranks_partition_each_epoch(exact_packed):
    n = len(exact_packed)
    for world_size in (2, 3):
        loaders = [PackedLoader(exact_packed, 2, seed=1, rank=r, world_size=world_size) for r in range(world_size)]
        steps = n // (2 * world_size)
        for _epoch in range(2):
            per_rank = [[] for _ in loaders]
            for _ in range(steps):
                for rank, loader in enumerate(loaders):
                    batch = loader.next_indices()
                    assert len(batch) == 2
                    per_rank[rank].extend(batch)
            assert sorted(i for indices in per_rank for i in indices) == list(range(n))
            assert all(not set(a) & set(b) for a in per_rank for b in per_rank if a is not b)
        assert all(loader.epoch == 2 for loader in loaders)


def test_stream_semantics_when_batches_straddle_epochs(packed):
    n = len(packed)
    batch_size, world_size = 5, 3
    if n % (batch_size * world_size) == 0:
        batch_size = 7
    assert n % (batch_size * world_size) != 0
    loaders = [PackedLoader(packed, batch_size, seed=2, rank=r, world_size=world_size) for r in range(world_size)]
    steps = -(-3 * n // (batch_size * world_size))
    stream = global_stream(loaders, steps)
    for epoch in range(3):  # the stream is a permutation of the sequences per epoch
        assert sorted(stream[epoch * n : (epoch + 1) * n]) == list(range(n))
    epochs = [stream[e * n : (e + 1) * n] for e in range(3)]
    assert epochs[0] != epochs[1] != epochs[2]
    # over the steps that cover one epoch, each sequence comes once or twice (the last batch
    # reaches into the next epoch)
    first_steps = -(-n // (batch_size * world_size))
    counts = Counter(stream[: first_steps * batch_size * world_size])
    assert set(counts) == set(range(n)) and set(counts.values()) <= {1, 2}
    assert sum(c == 2 for c in counts.values()) <= first_steps * batch_size * world_size - n


def test_resume_with_another_world_size_at_the_same_global_batch(packed):
    n = len(packed)
    before = [PackedLoader(packed, 3, seed=4, rank=r, world_size=2) for r in range(2)]
    reference = [PackedLoader(packed, 3, seed=4, rank=r, world_size=2) for r in range(2)]
    steps = n // 6 - 1
    global_stream(before, steps)
    expected = global_stream(reference, steps + 4)[steps * 6 :]  # crosses the epoch boundary
    state = before[0].state_dict()
    assert state == before[1].state_dict() and state["global_batch_size"] == 6
    after = [PackedLoader(packed, 2, seed=4, rank=r, world_size=3) for r in range(3)]
    for loader in after:
        loader.load_state_dict(state)
    assert global_stream(after, 4) == expected
    single = PackedLoader(packed, 6, seed=4)
    single.load_state_dict(state)
    assert global_stream([single], 4) == expected


def test_seed_decides_the_order(packed):
    n = len(packed)

    def order(seed: int) -> list[int]:
        return global_stream([PackedLoader(packed, 4, seed=seed)], -(-n // 4))[:n]

    assert order(0) == order(0)
    assert order(0) != order(1) and sorted(order(1)) == list(range(n))
    assert order(0) != list(range(n))


def test_state_of_another_run_is_refused(packed):
    loader = PackedLoader(packed, 4, seed=0, world_size=2)
    state = loader.state_dict()
    with pytest.raises(UserError, match="seed 0, not 1"):
        PackedLoader(packed, 4, seed=1, world_size=2).load_state_dict(state)
    with pytest.raises(UserError, match="took 8 sequences per step .* not 12"):
        PackedLoader(packed, 4, seed=0, world_size=3).load_state_dict(state)
    with pytest.raises(UserError, match="took 8 sequences per step .* not 4"):
        PackedLoader(packed, 2, seed=0, world_size=2).load_state_dict(state)


@pytest.mark.parametrize(("batch_size", "rank", "world_size"), [(0, 0, 1), (2, 2, 2), (2, -1, 2), (2, 0, 0)])
def test_bad_loader_shape(packed, batch_size, rank, world_size):
    with pytest.raises(ValueError, match="bad loader shape"):
        PackedLoader(packed, batch_size, rank=rank, world_size=world_size)
