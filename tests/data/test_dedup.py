"""Deduplication: the whole-run MinHash + exact pipeline on real articles, and similar-line removal."""

import dataclasses
import json
import random
from pathlib import Path

import pytest

from ctlab.data.clean import ExecutorOptions, build_phases, run_clean
from ctlab.data.dedup import DedupConfig, SimilarLineDedup, dedup_key
from ctlab.data.recipes import Recipe, load_recipe
from ctlab.data.steps import read_output

REPO = Path(__file__).resolve().parents[2]

EDIT_CHARS = "的一是在不了有和人这中大为上个国我以要他"
SUFFIX = "\n本文来源：网络转载"


# -- building a corpus with known duplicates ------------------------------------------------------------


def shingles(text: str, n: int = 5) -> set[str]:
    key = dedup_key(text)
    return {key[i : i + n] for i in range(len(key) - n + 1)}


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


def pick_distinct(inews, count: int, min_len: int, max_len: int, taken: list[set]) -> list[str]:
    """Articles (in inews order) whose 5-gram Jaccard with every one picked so far is at most 0.2."""
    picked = []
    for _, text in inews:
        if not min_len <= len(text) <= max_len:
            continue
        s = shingles(text)
        if all(jaccard(s, other) <= 0.2 for other in taken):
            taken.append(s)
            picked.append(text)
            if len(picked) == count:
                return picked
    raise AssertionError("not enough distinct articles")


def edited(text: str, seed: int, edits: int = 3) -> str:
    """``text`` with ``edits`` Han characters replaced by other ones and a site suffix appended."""
    rng = random.Random(seed)
    chars = list(text)
    han = [i for i, ch in enumerate(chars) if "\u4e00" <= ch <= "\u9fff"]
    for i in rng.sample(han, edits):
        chars[i] = rng.choice([c for c in EDIT_CHARS if c != chars[i]])
    return "".join(chars) + SUFFIX


def reformatted(text: str) -> str:
    """The same content with other whitespace and punctuation: an exact duplicate after dedup_key."""
    return "  " + text.replace("，", ", ").replace("。", "! ").replace("\n", "\n\n") + " ~"


@dataclasses.dataclass
class Corpus:
    shards: list[list[dict]]  # the records of each input file (= each task's shard)
    expected_removed: dict[str, str]  # id -> reason
    distinct: list[str]  # ids of articles that have no duplicate

    @property
    def all_ids(self) -> list[str]:
        return [r["id"] for shard in self.shards for r in shard]


def build_corpus(inews) -> Corpus:
    taken: list[set] = []
    long = pick_distinct(inews, 8, 2000, 6000, taken)  # sources of duplicates
    short = pick_distinct(inews, 52, 300, 3000, taken)  # articles without duplicates
    shard0: list[dict] = []
    shard1: list[dict] = []
    removed: dict[str, str] = {}

    def add(shard, doc_id, text):
        shard.append({"id": doc_id, "text": text, "url": f"http://news.example.cn/{doc_id}.html"})

    for i, text in enumerate(short):
        add(shard0 if i % 2 == 0 else shard1, f"distinct-{i}", text)
    # 1. an exact copy later in the same shard
    add(shard0, "orig-0", long[0])
    # 2. a near duplicate later in the same shard
    add(shard0, "orig-1", long[1])
    # 3. an exact copy placed *before* the article it copies: the first one is kept
    add(shard0, "copy-first-2", long[2])
    add(shard0, "orig-2", long[2])
    removed["orig-2"] = "exact_duplicate"
    # 4. a near duplicate in shard 0 of an article in shard 1: the shard-0 variant is kept
    add(shard0, "near-first-3", edited(long[3], seed=3))
    add(shard1, "orig-3", long[3])
    removed["orig-3"] = "near_duplicate"
    # 5./6. copies in shard 1 of articles in shard 0
    add(shard0, "orig-4", long[4])
    add(shard0, "orig-5", long[5])
    add(shard1, "copy-4", long[4])
    removed["copy-4"] = "exact_duplicate"
    add(shard1, "near-5", edited(long[5], seed=5))
    removed["near-5"] = "near_duplicate"
    # 7. same content, other whitespace and punctuation: exact after normalisation
    add(shard0, "orig-6", long[6])
    add(shard1, "reformatted-6", reformatted(long[6]))
    removed["reformatted-6"] = "exact_duplicate"
    # 8. a chain: a near duplicate of an article, then an exact copy of that near duplicate;
    #    the copy differs from the kept text, so it is a near duplicate too; plus two exact copies
    add(shard0, "orig-7", long[7])
    add(shard1, "near-7", edited(long[7], seed=7))
    add(shard1, "copy-of-near-7", edited(long[7], seed=7))
    add(shard1, "copy-7a", long[7])
    add(shard1, "copy-7b", long[7])
    removed.update(
        {
            "near-7": "near_duplicate",
            "copy-of-near-7": "near_duplicate",
            "copy-7a": "exact_duplicate",
            "copy-7b": "exact_duplicate",
        }
    )
    # the later copies of cases 1 and 2
    add(shard0, "copy-0", long[0])
    removed["copy-0"] = "exact_duplicate"
    add(shard0, "near-1", edited(long[1], seed=1))
    removed["near-1"] = "near_duplicate"
    return Corpus([shard0, shard1], removed, [f"distinct-{i}" for i in range(len(short))])


@pytest.fixture(scope="module")
def corpus(inews) -> Corpus:
    return build_corpus(inews)


def write_inputs(folder: Path, corpus: Corpus) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, shard in enumerate(corpus.shards):
        path = folder / f"shard{index}.jsonl"
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in shard), encoding="utf-8")
        paths.append(str(path))
    return paths


def dedup_only(recipe: Recipe) -> Recipe:
    """``recipe`` with every rule stage off: only similar lines and the whole-run dedup run."""
    changes = {}
    for field in dataclasses.fields(recipe):
        config = getattr(recipe, field.name)
        if dataclasses.is_dataclass(config) and hasattr(config, "enabled"):
            changes[field.name] = dataclasses.replace(config, enabled=False)
    return dataclasses.replace(recipe, **changes)


def read_jsonl_gz(folder: Path) -> list[dict]:
    return list(read_output(folder))


# -- the corpus itself is what the tests claim ------------------------------------------------------------


def test_corpus_is_built_as_described(corpus):
    ids = corpus.all_ids
    assert len(ids) == len(set(ids))
    texts = {r["id"]: r["text"] for shard in corpus.shards for r in shard}
    assert texts["copy-0"] == texts["orig-0"]
    assert texts["near-1"] != texts["orig-1"] and dedup_key(texts["near-1"]) != dedup_key(texts["orig-1"])
    assert dedup_key(texts["reformatted-6"]) == dedup_key(texts["orig-6"]) != dedup_key(texts["near-7"])
    assert texts["reformatted-6"] != texts["orig-6"]
    for near, orig in [("near-1", "orig-1"), ("near-first-3", "orig-3"), ("near-5", "orig-5"), ("near-7", "orig-7")]:
        assert 0.9 < jaccard(shingles(texts[near], 13), shingles(texts[orig], 13)) < 1
    assert len(corpus.distinct) >= 50


# -- the whole-run dedup ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("recipe_name", "ngram", "bands", "rows", "workers"),
    [("mapcc", 5, 14, 8, 1), ("fineweb2-zh", 5, 14, 8, 2), ("configs/mapcc-ctllm-minhash.yaml", 13, 9, 13, 1)],
)
def test_dedup_removes_injected_duplicates_and_keeps_the_earliest(
    tmp_path, corpus, recipe_name, ngram, bands, rows, workers
):
    spec = str(REPO / recipe_name) if recipe_name.endswith(".yaml") else recipe_name
    recipe = dedup_only(load_recipe(spec))
    assert (recipe.dedup.ngram, recipe.dedup.bands, recipe.dedup.rows) == (ngram, bands, rows)
    assert recipe.dedup.exact and recipe.dedup.minhash
    inputs = write_inputs(tmp_path / "in", corpus)
    out = tmp_path / "out"
    stats = run_clean(inputs, str(out), recipe, ExecutorOptions(tasks=2, workers=workers), progress=False)

    assert [s["name"] for s in stats["stages"]] == ["similar-lines", "dedup"]
    dedup = stats["stages"][-1]
    n = len(corpus.all_ids)
    assert stats["input_docs"] == dedup["docs_in"] == n
    expected_reasons: dict[str, int] = {}
    for reason in corpus.expected_removed.values():
        expected_reasons[reason] = expected_reasons.get(reason, 0) + 1
    assert dedup["dropped"] == expected_reasons
    assert dedup["docs_out"] == stats["output_docs"] == n - len(corpus.expected_removed)

    kept = [r["id"] for r in read_jsonl_gz(out / "clean")]
    assert len(kept) == len(set(kept))
    assert set(kept) == set(corpus.all_ids) - set(corpus.expected_removed)
    # the earliest document of each cluster survives; every distinct article survives
    for doc_id in ("orig-0", "orig-1", "copy-first-2", "near-first-3", "orig-4", "orig-5", "orig-6", "orig-7"):
        assert doc_id in kept
    assert set(corpus.distinct) <= set(kept)

    rejects = read_jsonl_gz(out / "rejects" / "dedup")
    assert {r["id"]: r["reason"] for r in rejects} == corpus.expected_removed
    assert len(rejects) == len(corpus.expected_removed)
    assert {r["stage"] for r in rejects} == {"dedup"}
    texts = {r["id"]: r["text"] for shard in corpus.shards for r in shard}
    for r in rejects:
        assert r["text"] == texts[r["id"]]  # the dropped document itself, unchanged
        assert r["metadata"]["url"] == f"http://news.example.cn/{r['id']}.html"


def test_exact_only_keeps_near_duplicates(tmp_path, corpus):
    recipe = dedup_only(load_recipe("fineweb2-zh"))
    recipe = dataclasses.replace(recipe, dedup=dataclasses.replace(recipe.dedup, minhash=False, similar_lines=False))
    phases = [name for name, _, _ in build_phases(recipe, ["x"], str(tmp_path / "p"), 2, None, False)]
    assert phases == ["filter", "dedup-cluster", "dedup-filter", "stats"]
    inputs = write_inputs(tmp_path / "in", corpus)
    stats = run_clean(inputs, str(tmp_path / "out"), recipe, ExecutorOptions(tasks=2), progress=False)
    rejects = {r["id"]: r["reason"] for r in read_jsonl_gz(tmp_path / "out" / "rejects" / "dedup")}
    # exact copies of the kept text only; "copy-of-near-7" is an exact copy of "near-7", which is now kept
    expected = {k: v for k, v in corpus.expected_removed.items() if v == "exact_duplicate"}
    expected["copy-of-near-7"] = "exact_duplicate"
    assert rejects == expected
    assert stats["stages"][-1]["dropped"] == {"exact_duplicate": len(expected)}


def test_no_cross_document_dedup_has_no_dedup_phases(tmp_path):
    recipe = load_recipe("mapcc")
    recipe = dataclasses.replace(recipe, dedup=dataclasses.replace(recipe.dedup, exact=False, minhash=False))
    assert not recipe.dedup.across_documents
    phases = build_phases(recipe, ["x"], str(tmp_path), 3, None, False)
    assert [(name, tasks) for name, _, tasks in phases] == [("filter", 3), ("stats", 1)]
    full = build_phases(load_recipe("mapcc"), ["x"], str(tmp_path), 3, None, False)
    assert [(name, tasks) for name, _, tasks in full] == [
        ("filter", 3),
        ("dedup-buckets", 14),
        ("dedup-cluster", 1),
        ("dedup-filter", 3),
        ("stats", 1),
    ]


# -- helpers and similar lines ------------------------------------------------------------------------------


def test_dedup_key():
    assert dedup_key("Hello, World!  你好，世界。\n") == "helloworld你好世界"
    assert dedup_key("2019年 ©【新闻】_快讯_") == "2019年新闻快讯"
    assert dedup_key(" \t，。！？、…—") == ""
    a = "中央路红星开启“爱木”狂购，三伏天已到。"
    assert dedup_key(a) == dedup_key("中央路 红星开启 爱木 狂购 三伏天已到!")
    assert dedup_key(a) != dedup_key(a.replace("三伏", "四伏"))


def test_dedup_config_minhash_settings():
    config = DedupConfig(ngram=13, bands=9, rows=13, seed=7)
    minhash = config.minhash_config()
    assert (minhash.n_grams, minhash.num_buckets, minhash.hashes_per_bucket, minhash.seed) == (13, 9, 13, 7)
    assert config.across_documents
    assert DedupConfig(exact=True, minhash=False).across_documents
    assert not DedupConfig(exact=False, minhash=False).across_documents


@pytest.fixture
def lines_step():
    return SimilarLineDedup(DedupConfig(short_line_chars=15, max_edit_ratio=0.1))


def test_similar_lines_removes_a_nearly_repeated_long_line(lines_step, inews):
    long_line = next(line.strip() for _, t in inews for line in t.split("\n") if 60 <= len(line.strip()) <= 200)
    budget = int(0.1 * len(long_line))
    near = long_line[:10] + "的" + long_line[11:]  # one substitution
    assert near != long_line
    other = next(
        line.strip()
        for _, t in inews[50:]
        for line in t.split("\n")
        if 60 <= len(line.strip()) <= 200 and line.strip()[:5] != long_line[:5]
    )
    text = "\n".join([long_line, other, "  " + near + "  ", long_line])
    result, removed = lines_step.dedup_lines(text)
    assert removed == 2
    assert result == "\n".join([long_line, other])
    # beyond the edit budget the line stays
    chars = list(long_line)
    for i in range(budget + 1):
        chars[2 * i] = "国" if chars[2 * i] != "国" else "家"
    far = "".join(chars)
    result, removed = lines_step.dedup_lines(long_line + "\n" + far)
    assert removed == 0 and result == long_line + "\n" + far


def test_similar_lines_short_lines_must_match_exactly(lines_step):
    text = "\n".join(["首页", "新闻中心", "首页", "新闻中心。", "  新闻中心  ", "", "", "体育"])
    result, removed = lines_step.dedup_lines(text)
    assert removed == 2  # the exact repeats of "首页" and "新闻中心" (after stripping)
    assert result == "\n".join(["首页", "新闻中心", "新闻中心。", "", "", "体育"])  # blank lines are kept
    # 15 characters is still short: one character of difference keeps it
    a = "一二三四五六七八九十一二三四五"
    b = "一二三四五六七八九十一二三四六"
    assert len(a) == 15
    assert lines_step.dedup_lines(f"{a}\n{b}") == (f"{a}\n{b}", 0)
    assert lines_step.dedup_lines(f"{a}\n{a}") == (a, 1)


def test_similar_lines_keeps_distinct_lines_and_documents(lines_step, inews):
    text = inews[0][1]
    lines = [line for line in text.split("\n") if line.strip()]
    assert len(set(lines)) == len(lines)
    assert lines_step.dedup_lines(text) == (text, 0)
    result, removed = lines_step.dedup_lines(text + "\n" + text)
    assert removed == len(lines)
    assert result.rstrip("\n") == text.rstrip("\n")


def test_similar_lines_step_counts_removed_lines(lines_step):
    from datatrove.data import Document

    doc = Document(text="第一行的内容比较长，超过了十五个字。\n第一行的内容比较长，超过了十五个字！\n结尾", id="d")
    assert lines_step.process(doc) is True
    assert doc.text == "第一行的内容比较长，超过了十五个字。\n结尾"
    assert lines_step.stats["lines_removed"].total == 1
    untouched = Document(text="只有一行", id="e")
    assert lines_step.process(untouched) is True and untouched.text == "只有一行"


def test_signature_agreement_estimates_jaccard(tmp_path):
    """The share of equal MinHash values estimates the Jaccard similarity of the shingle sets."""
    import numpy as np

    from ctlab.data.dedup import DedupConfig, DedupSignature

    step = DedupSignature(str(tmp_path), DedupConfig(ngram=5, bands=16, rows=16))  # 256 hashes
    rng = np.random.default_rng(0)
    universe = rng.integers(0, 2**63, size=4000, dtype=np.uint64)
    for overlap in (0.9, 0.6, 0.3):
        shared = int(1000 * overlap / (1 + overlap) * 2)  # |A ∩ B| for |A| = |B| = 1000 at this Jaccard
        a = universe[:1000]
        b = np.concatenate([universe[:shared], universe[2000 : 2000 + 1000 - shared]])
        jaccard = shared / (2000 - shared)
        sig_a = np.concatenate(step.get_signature(a.reshape(-1, 1)))
        sig_b = np.concatenate(step.get_signature(b.reshape(-1, 1)))
        assert abs((sig_a == sig_b).mean() - jaccard) < 0.1, (overlap, jaccard, (sig_a == sig_b).mean())
