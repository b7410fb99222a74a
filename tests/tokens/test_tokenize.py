"""`ctlab data tokenize`: exact documents in the shards, resumable and worker-independent runs,
mixing by token shares, source specs, and the CLI's messages."""

import gzip
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer

from ctlab.cli import main
from ctlab.errors import UserError
from ctlab.tokens.tokenize import choose_mix, parse_sources, tokenize

FAST = {
    "deadline": None,
    "derandomize": True,
    "database": None,
    "suppress_health_check": [HealthCheck.too_slow],
}
BOS, EOS, PAD = "<|bos|>", "<|endoftext|>", "<|pad|>"


# -- helpers ------------------------------------------------------------------------------------------


def write_jsonl(path: Path, texts: list[str], extra_lines: tuple[bytes, ...] = ()) -> Path:
    """One {"id", "text"} record per text; ``extra_lines`` are written raw after the first record."""
    lines = [
        json.dumps({"id": f"{path.stem}-{i}", "text": t}, ensure_ascii=False).encode() for i, t in enumerate(texts)
    ]
    lines[1:1] = extra_lines
    data = b"\n".join(lines) + b"\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data, mtime=0) if path.name.endswith(".gz") else data)
    return path


def read_documents(folder: Path) -> dict[str, list[np.ndarray]]:
    """source → token arrays of all its documents (selected or not), in shard order."""
    manifest = json.loads((folder / "tokens.json").read_text())
    docs = {}
    for source in manifest["sources"]:
        docs[source["name"]] = []
        for shard in source["shards"]:
            tokens = np.fromfile(folder / "shards" / f"{shard['name']}.bin", dtype=manifest["dtype"])
            offsets = np.load(folder / "shards" / f"{shard['name']}.idx.npy")
            docs[source["name"]].extend(tokens[a:b] for a, b in zip(offsets[:-1], offsets[1:], strict=True))
    return docs


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def source_lengths(folder: Path) -> dict[str, np.ndarray]:
    return {name: np.array([len(d) for d in docs]) for name, docs in read_documents(folder).items()}


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("ctlab: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


# -- fixtures -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, zh_docs, en_docs, code_docs):
    """JSONL inputs of three sources (zh in two files, one with a malformed line and an empty
    record; code gzip-compressed) and the texts each source should hold, in order."""
    root = tmp_path_factory.mktemp("inputs")
    zh_a = write_jsonl(
        root / "zh" / "a.jsonl", zh_docs[:60], (b'{"id": "broken", "text": "unterminated', b'{"text": "  "}')
    )
    zh_b = write_jsonl(root / "zh" / "b.jsonl", zh_docs[60:])
    en = write_jsonl(root / "en.jsonl", en_docs)
    code = write_jsonl(root / "code.jsonl.gz", code_docs)
    specs = [f"zh={zh_a}", f"zh={zh_b}", f"en={en}", f"code={code}"]
    return {"root": root, "specs": specs, "texts": {"zh": zh_docs, "en": en_docs, "code": code_docs}}


@pytest.fixture(scope="module")
def tokens(tmp_path_factory, inputs, tokenizer_dir):
    """The three sources tokenised with one worker and no mix."""
    out = tmp_path_factory.mktemp("tokens") / "out"
    manifest = tokenize(parse_sources(inputs["specs"], None), str(tokenizer_dir), str(out), progress=False)
    return out, manifest


@pytest.fixture(scope="module")
def tokenizer(tokenizer_dir) -> Tokenizer:
    return Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))


def copy_of(tokens_folder: Path, tmp_path: Path) -> Path:
    """A copy of a tokens folder: reruns into it resume without tokenising again."""
    return Path(shutil.copytree(tokens_folder, tmp_path / "copy"))


# -- shards hold the documents exactly ------------------------------------------------------------------


def test_documents_decode_back_to_the_inputs_in_order(tokens, inputs, tokenizer):
    out, manifest = tokens
    bos, eos, pad = (tokenizer.token_to_id(t) for t in (BOS, EOS, PAD))
    assert manifest["dtype"] == "uint16" and manifest["tokenizer"]["vocab_size"] == 600
    assert (manifest["tokenizer"]["bos_id"], manifest["tokenizer"]["eos_id"], manifest["tokenizer"]["pad_id"]) == (
        bos,
        eos,
        pad,
    )
    docs = read_documents(out)
    assert list(docs) == ["zh", "en", "code"]
    for name, texts in inputs["texts"].items():
        assert len(docs[name]) == len(texts)
        for ids, text in zip(docs[name], texts, strict=True):
            assert ids.dtype == np.uint16
            assert ids[0] == bos and ids[-1] == eos
            assert not np.isin(ids[1:-1], [bos, eos, pad]).any()
            assert tokenizer.decode(ids[1:-1].tolist(), skip_special_tokens=False) == text


def test_manifest_counts_shards_and_bad_records(tokens, inputs):
    out, manifest = tokens
    by_name = {s["name"]: s for s in manifest["sources"]}
    zh = by_name["zh"]
    assert [s["name"] for s in zh["shards"]] == ["zh-00000", "zh-00001"]
    assert [s["documents"] for s in zh["shards"]] == [60, 60]
    assert zh["bad_records"] == {"malformed_json": 1, "empty": 1}
    assert by_name["en"]["bad_records"] == {} and by_name["code"]["bad_records"] == {}
    for name, texts in inputs["texts"].items():
        source = by_name[name]
        assert source["documents"] == len(texts)
        assert source["characters"] == sum(map(len, texts))
        assert source["weight"] is None and source["target_share"] is None
        for shard in source["shards"]:
            assert (out / "shards" / f"{shard['name']}.bin").stat().st_size == 2 * shard["tokens"]
            assert (out / "shards" / f"{shard['name']}.json").is_file()
        # without --mix every document is selected
        assert np.array_equal(np.load(out / "mix" / f"{name}.npy"), np.arange(len(texts)))
        assert source["selected_tokens"] == source["tokens"]
    assert manifest["selected_tokens"] == sum(s["tokens"] for s in manifest["sources"])
    assert manifest["selected_documents"] == sum(len(t) for t in inputs["texts"].values())
    assert not list(out.rglob(".tmp.*"))


def test_special_token_text_inside_a_document_is_text(tmp_path, tokenizer_dir, tokenizer, zh_docs):
    text = f"{zh_docs[0][:40]}<|endoftext|>下一段<|bos|> x <|pad|><|end|>{zh_docs[1][:40]}"
    source = write_jsonl(tmp_path / "in.jsonl", [text, EOS])
    tokenize(parse_sources([str(source)], None), str(tokenizer_dir), str(tmp_path / "out"), progress=False)
    docs = read_documents(tmp_path / "out")["corpus"]
    specials = [tokenizer.token_to_id(t) for t in (BOS, EOS, PAD, "<|end|>")]
    assert len(docs) == 2
    for ids, expected in zip(docs, [text, EOS], strict=True):
        assert not np.isin(ids[1:-1], specials).any()
        assert tokenizer.decode(ids[1:-1].tolist(), skip_special_tokens=False) == expected


def test_two_workers_write_the_same_bytes_as_one(tokens, inputs, tokenizer_dir, tmp_path):
    out, _ = tokens
    tokenize(parse_sources(inputs["specs"], None), str(tokenizer_dir), str(tmp_path / "w2"), workers=2, progress=False)
    assert folder_bytes(tmp_path / "w2") == folder_bytes(out)


# -- resuming and conflicting runs ----------------------------------------------------------------------


def test_rerun_after_a_kill_resumes_to_the_same_result(tokens, inputs, tokenizer_dir, tmp_path):
    out, _ = tokens
    copy = copy_of(out, tmp_path)
    (copy / "shards" / "zh-00001.json").unlink()  # killed after writing the tokens, before the marker
    (copy / "shards" / "en-00000.json").unlink()  # killed mid-shard: no marker and no tokens
    (copy / "shards" / "en-00000.bin").unlink()
    (copy / "shards" / "en-00000.idx.npy").unlink()
    (copy / "tokens.json").unlink()
    untouched = copy / "shards" / "code-00000.bin"
    before = untouched.stat()
    tokenize(parse_sources(inputs["specs"], None), str(tokenizer_dir), str(copy), progress=False)
    assert folder_bytes(copy) == folder_bytes(out)
    after = untouched.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)  # not tokenised again


def test_rerun_with_other_inputs_or_tokenizer_is_refused(tokens, inputs, tokenizer_dir, tmp_path):
    out, _ = tokens
    copy = copy_of(out, tmp_path)
    expected = folder_bytes(copy)
    with pytest.raises(UserError, match="holds a tokenize run with other settings"):
        tokenize(parse_sources(inputs["specs"][:3], None), str(tokenizer_dir), str(copy), progress=False)
    other_tokenizer = Path(shutil.copytree(tokenizer_dir, tmp_path / "other-tokenizer"))
    with open(other_tokenizer / "tokenizer.json", "a") as f:
        f.write("\n")  # same tokenizer, other file: another sha256
    with pytest.raises(UserError, match="holds a tokenize run with other settings"):
        tokenize(parse_sources(inputs["specs"], None), str(other_tokenizer), str(copy), progress=False)
    assert folder_bytes(copy) == expected


def test_a_non_empty_unrelated_folder_is_refused(inputs, tokenizer_dir, tmp_path):
    unrelated = tmp_path / "unrelated"
    unrelated.mkdir()
    (unrelated / "notes.txt").write_text("keep me")
    with pytest.raises(UserError, match="not empty and not a ctlab tokenize folder"):
        tokenize(parse_sources(inputs["specs"], None), str(tokenizer_dir), str(unrelated), progress=False)
    assert (unrelated / "notes.txt").read_text() == "keep me"
    assert not (unrelated / "run.json").exists() and not (unrelated / "tokens.json").exists()


def test_a_refused_folder_is_left_as_it_was(inputs, tokenizer_dir, tmp_path):
    unrelated = tmp_path / "unrelated"
    unrelated.mkdir()
    (unrelated / "notes.txt").write_text("keep me")
    with pytest.raises(UserError):
        tokenize(parse_sources(inputs["specs"], None), str(tokenizer_dir), str(unrelated), progress=False)
    assert [p.name for p in unrelated.iterdir()] == ["notes.txt"]


def test_missing_tokenizer_is_refused(inputs, tmp_path):
    with pytest.raises(UserError, match="no tokenizer.json"):
        tokenize(parse_sources(inputs["specs"], None), str(tmp_path / "nothing"), str(tmp_path / "out"))
    with pytest.raises(UserError, match="workers"):
        tokenize(parse_sources(inputs["specs"], None), str(tmp_path / "nothing"), str(tmp_path / "out"), workers=0)


# -- mixing -----------------------------------------------------------------------------------------------


def check_mix(folder: Path, manifest: dict, weights: dict[str, float]) -> dict[str, np.ndarray]:
    """The mix of ``folder`` meets the weights as closely as whole documents allow; returns the picks."""
    lengths = source_lengths(folder)
    picks = {name: np.load(folder / "mix" / f"{name}.npy") for name in lengths}
    totals = {name: int(ls.sum()) for name, ls in lengths.items()}
    weight_sum = sum(weights.values())
    limiting = min(totals, key=lambda name: totals[name] / weights[name])
    selected = {name: int(lengths[name][picks[name]].sum()) for name in lengths}
    selected_total = sum(selected.values())
    assert manifest["selected_tokens"] == selected_total
    assert picks[limiting].tolist() == list(range(len(lengths[limiting])))  # used whole
    longest = {name: int(ls.max()) for name, ls in lengths.items()}
    for source in manifest["sources"]:
        name = source["name"]
        chosen = picks[name]
        assert chosen.dtype == np.int64 and len(np.unique(chosen)) == len(chosen)  # every kept doc once
        assert np.all(np.diff(chosen) > 0) and chosen[0] >= 0 and chosen[-1] < len(lengths[name])
        assert source["selected_documents"] == len(chosen)
        assert source["selected_tokens"] == selected[name]
        assert source["target_share"] == pytest.approx(weights[name] / weight_sum)
        assert source["produced_share"] == pytest.approx(selected[name] / selected_total)
        # tokens: within half a document of the target that the limiting source sets
        target_tokens = totals[limiting] * weights[name] / weights[limiting]
        assert len(chosen) > 1 and abs(selected[name] - target_tokens) <= longest[name] / 2
        # shares: then off by at most one (longest) document of the selected total
        assert abs(source["produced_share"] - source["target_share"]) <= max(longest.values()) / selected_total
    return picks


@pytest.mark.parametrize("weights", [{"zh": 2.8, "en": 1.0, "code": 0.3}, {"zh": 1.0, "en": 1.0, "code": 1.0}])
def test_mix_meets_the_token_shares(tokens, inputs, tokenizer_dir, tmp_path, weights):
    out, _ = tokens
    copy = copy_of(out, tmp_path)
    mix = ",".join(f"{k}={v}" for k, v in weights.items())
    manifest = tokenize(parse_sources(inputs["specs"], mix), str(tokenizer_dir), str(copy), progress=False)
    picks = check_mix(copy, manifest, weights)
    assert sum(len(p) for p in picks.values()) < sum(len(t) for t in inputs["texts"].values())  # some left out
    # the shards are untouched: a new mix only re-chooses documents
    assert {k: v for k, v in folder_bytes(copy).items() if k.startswith("shards/")} == {
        k: v for k, v in folder_bytes(out).items() if k.startswith("shards/")
    }


def test_another_seed_picks_other_documents_in_the_same_shares(tokens, inputs, tokenizer_dir, tmp_path):
    out, _ = tokens
    weights = {"zh": 3.0, "en": 1.0, "code": 1.0}
    mix = "zh=3,en=1,code=1"
    picks = []
    for seed in (0, 1):
        folder = Path(shutil.copytree(out, tmp_path / f"seed{seed}"))
        manifest = tokenize(
            parse_sources(inputs["specs"], mix), str(tokenizer_dir), str(folder), seed=seed, progress=False
        )
        assert manifest["seed"] == seed
        picks.append(check_mix(folder, manifest, weights))
    sampled = [name for name in weights if len(picks[0][name]) < len(source_lengths(out)[name])]
    assert sampled and any(not np.array_equal(picks[0][n], picks[1][n]) for n in sampled)


def test_same_seed_picks_the_same_documents(tokens, inputs, tokenizer_dir, tmp_path):
    out, _ = tokens
    results = []
    for k in range(2):
        folder = Path(shutil.copytree(out, tmp_path / f"run{k}"))
        tokenize(
            parse_sources(inputs["specs"], "zh=1,en=2,code=1"), str(tokenizer_dir), str(folder), seed=7, progress=False
        )
        results.append(folder_bytes(folder))
    assert results[0] == results[1]


@given(
    st.lists(
        st.tuples(st.lists(st.integers(2, 500), min_size=1, max_size=60), st.floats(0.01, 100)), min_size=1, max_size=4
    ),
    st.integers(0, 2**32 - 1),
)
@settings(max_examples=150, **FAST)
def test_choose_mix_properties(sources, seed):
    specs = [{"weight": w, "lengths": np.array(ls, dtype=np.int64)} for ls, w in sources]
    chosen = choose_mix(specs, seed)
    totals = [int(s["lengths"].sum()) for s in specs]
    weight_sum = sum(s["weight"] for s in specs)
    scale = min(t / (s["weight"] / weight_sum) for s, t in zip(specs, totals, strict=True))
    limiting = min(range(len(specs)), key=lambda i: totals[i] / specs[i]["weight"])
    assert chosen[limiting].tolist() == list(range(len(specs[limiting]["lengths"])))
    for spec, picks in zip(specs, chosen, strict=True):
        assert len(np.unique(picks)) == len(picks) >= 1
        target = scale * spec["weight"] / weight_sum
        error = abs(int(spec["lengths"][picks].sum()) - target)
        # the closer of the prefixes around the target; a single document when even it overshoots
        assert error <= spec["lengths"].max() / 2 + 1e-6 or (len(picks) == 1 and error <= spec["lengths"].max())
    # without weights every document is kept
    unweighted = choose_mix([{"weight": None, "lengths": s["lengths"]} for s in specs], seed)
    assert [c.tolist() for c in unweighted] == [list(range(len(s["lengths"]))) for s in specs]


@pytest.mark.parametrize(
    ("mix", "message"),
    [
        ("zh=1,en=1,code=1,web=1", "--mix names"),
        ("zh=1,en=1", "--mix names"),
        ("zh=1,en=0,code=1", "positive"),
        ("zh=1,en=-2,code=1", "positive"),
        ("zh=1,en=nan,code=1", "positive"),
        ("zh=1,en=inf,code=1", "positive"),
        ("zh=1,en,code=1", "bad mix entry"),
        ("zh=1,en=abc,code=1", "bad mix entry"),
        ("zh=1;en=1;code=1", "bad mix entry"),
    ],
)
def test_bad_mix_is_refused(inputs, mix, message):
    with pytest.raises(UserError, match=message):
        parse_sources(inputs["specs"], mix)


# -- source specs ---------------------------------------------------------------------------------------


def test_parse_sources(inputs, tmp_path):
    root = inputs["root"]
    sources = parse_sources(inputs["specs"], "zh=2, en=1 ,code=0.5")
    assert [(s.name, s.weight) for s in sources] == [("zh", 2.0), ("en", 1.0), ("code", 0.5)]
    zh = sources[0]
    assert zh.inputs == [str(root / "zh" / "a.jsonl"), str(root / "zh" / "b.jsonl")]
    assert zh.files == [str(root / "zh" / "a.jsonl"), str(root / "zh" / "b.jsonl")]
    # a folder stands for its files; a bare path is the source "corpus"
    (folder,) = parse_sources([str(root / "zh")], None)
    assert (folder.name, folder.weight, folder.files) == ("corpus", None, zh.files)
    with pytest.raises(UserError, match="input not found"):
        parse_sources([f"zh={root / 'missing.jsonl'}"], None)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no input files"):
        parse_sources([f"zh={tmp_path / 'empty'}"], None)
    with pytest.raises(UserError, match="input not found: z h="):  # not a NAME=: the whole spec is a path
        parse_sources([f"z h={root / 'en.jsonl'}"], None)


def test_paths_with_an_equals_sign(tmp_path, zh_docs):
    # hive-style partition folders such as lang=zh/ are common in Parquet datasets
    path = write_jsonl(tmp_path / "lang=zh" / "part.jsonl", zh_docs[:2])
    (source,) = parse_sources([f"zh={path}"], None)
    assert (source.name, source.files) == ("zh", [str(path)])


def test_a_clean_output_folder_is_a_source(tmp_path, tokenizer_dir, tokenizer, zh_docs):
    run = tmp_path / "clean-run"
    (run / "clean").mkdir(parents=True)
    (run / "rejects").mkdir()
    (run / "run.json").write_text('{"kind": "clean"}')
    (run / "stats.json").write_text("{}")
    records = [{"text": t, "id": f"doc-{i}", "metadata": {"url": f"http://x.cn/{i}"}} for i, t in enumerate(zh_docs)]
    for k, part in enumerate((records[:5], records[5:9])):
        data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in part).encode()
        (run / "clean" / f"{k:05d}.jsonl.gz").write_bytes(gzip.compress(data))
    rejected = json.dumps({"text": "rejected page", "id": "r"}).encode() + b"\n"
    (run / "rejects" / "00000.jsonl.gz").write_bytes(gzip.compress(rejected))
    (source,) = parse_sources([f"zh={run}"], None)
    assert source.files == [str(run / "clean" / "00000.jsonl.gz"), str(run / "clean" / "00001.jsonl.gz")]
    tokenize([source], str(tokenizer_dir), str(tmp_path / "out"), progress=False)
    docs = read_documents(tmp_path / "out")["zh"]
    assert [tokenizer.decode(d[1:-1].tolist(), skip_special_tokens=False) for d in docs] == zh_docs[:9]


# -- the CLI ----------------------------------------------------------------------------------------------


def test_cli_tokenize_and_pack(inputs, tokenizer_dir, tmp_path, capsys):
    out = tmp_path / "tokens"
    argv = ["data", "tokenize", *inputs["specs"], "--tokenizer", str(tokenizer_dir), "--out", str(out)]
    assert main([*argv, "--mix", "zh=2,en=1,code=1", "--seed", "3", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    for word in ("source", "weight", "target", "produced", "left out", "zh", "en", "code", "50.0%", "25.0%", "uint16"):
        assert word in printed
    assert "bad records (skipped): empty 1, malformed_json 1" in printed
    manifest = json.loads((out / "tokens.json").read_text())
    assert manifest["seed"] == 3 and [s["weight"] for s in manifest["sources"]] == [2.0, 1.0, 1.0]
    assert f"{manifest['selected_tokens']:,} tokens" in printed

    assert main(["data", "pack", str(out), "--seq-len", "128", "--out", str(tmp_path / "packed")]) == 0
    printed = capsys.readouterr().out
    stats = json.loads((tmp_path / "packed" / "pack_stats.json").read_text())
    assert stats["strategy"] == "bfd" and stats["seq_len"] == 128 and stats["tokens"] == manifest["selected_tokens"]
    assert "padding_fraction" in printed and f"{stats['sequences']:,}" in printed and "packed: " in printed
    assert (tmp_path / "packed" / "pack.json").is_file()


def test_cli_errors_are_one_line(inputs, tokenizer_dir, tmp_path, capsys):
    specs = inputs["specs"]
    tok = ["--tokenizer", str(tokenizer_dir)]
    cases = [
        (
            ["data", "tokenize", *specs, "--tokenizer", str(tmp_path / "none"), "--out", str(tmp_path / "a")],
            "tokenizer",
        ),
        (["data", "tokenize", *specs, *tok, "--out", str(tmp_path / "b"), "--mix", "zh=1,en=1,web=1"], "--mix"),
        (["data", "tokenize", *specs, *tok, "--out", str(tmp_path / "c"), "--mix", "zh=1,en=0,code=1"], "positive"),
        (["data", "tokenize", f"zh={tmp_path / 'missing.jsonl'}", *tok, "--out", str(tmp_path / "d")], "not found"),
        (["data", "pack", str(inputs["root"]), "--seq-len", "64", "--out", str(tmp_path / "f")], "not a tokens"),
        (["data", "pack", str(inputs["root"]), "--seq-len", "1", "--out", str(tmp_path / "g")], "--seq-len"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        assert message in one_line_error(capsys)
    bad = tmp_path / "bad-tokenizer"
    bad.mkdir()
    (bad / "tokenizer.json").write_text("{not json")
    assert main(["data", "tokenize", *specs, "--tokenizer", str(bad), "--out", str(tmp_path / "h")]) == 2
    assert "is not a valid tokenizer" in one_line_error(capsys)
    (bad / "tokenizer.json").write_text("")
    assert main(["data", "tokenize", *specs, "--tokenizer", str(bad), "--out", str(tmp_path / "h")]) == 2
    assert "is not a valid tokenizer" in one_line_error(capsys)
    assert not (tmp_path / "h").exists()
    with pytest.raises(SystemExit) as refused:  # refused by the argument parser, before any work
        main(["data", "tokenize", *specs, *tok, "--out", str(tmp_path / "e"), "--workers", "0"])
    assert refused.value.code == 2
    assert "argument --workers: must be at least 1, not 0" in capsys.readouterr().err
    assert not (tmp_path / "e").exists()


def test_a_wrong_text_key_leaves_the_folder_free_for_the_corrected_command(inputs, tokenizer_dir, tmp_path):
    out = tmp_path / "out"
    sources = parse_sources(inputs["specs"][2:3], None)
    with pytest.raises(UserError, match="hold no documents .* check --text-key"):
        tokenize(sources, str(tokenizer_dir), str(out), progress=False, text_key="body")
    assert not out.exists() or not any(out.iterdir())
    manifest = tokenize(sources, str(tokenizer_dir), str(out), progress=False)
    assert manifest["selected_documents"] == len(inputs["texts"]["en"])
