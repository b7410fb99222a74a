"""CorpusReader: every input format, every bad-record kind, ids, metadata, rejects and sharding."""

import gzip
import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard
from datatrove.data import Document
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from ctlab.data.demo import WebPage, page_html
from ctlab.data.readers import FORMATS, BadRecord, CorpusReader, expand_inputs, is_binary, sniff_format
from ctlab.data.steps import RejectsWriter
from ctlab.errors import UserError

BAD_KINDS = (
    "corrupt_gzip",
    "corrupt_zstd",
    "truncated_warc",
    "invalid_utf8",
    "malformed_json",
    "missing_text",
    "empty",
    "binary",
    "non_html",
    "corrupt_parquet",
    "unknown_format",
)


# -- helpers ------------------------------------------------------------------------------------------


def counters(step) -> dict[str, float]:
    """The step's stats as {name: total}."""
    return {name: metric.total for name, metric in step.stats.stats.items()}


def bad_counts(step) -> dict[str, int]:
    return {k.split("/", 1)[1]: int(v) for k, v in counters(step).items() if k.startswith("bad/")}


def read_file(path, **kwargs) -> list:
    return list(CorpusReader([str(path)], progress=False, **kwargs).read_file(str(path)))


def run_reader(files, **kwargs) -> tuple[list[Document], CorpusReader]:
    reader = CorpusReader([str(f) for f in files], progress=False, **kwargs)
    return list(reader.run(rank=0, world_size=1)), reader


def jsonl_bytes(records) -> bytes:
    return b"".join(json.dumps(r, ensure_ascii=False).encode() + b"\n" for r in records)


def article_records(inews, n, start=0):
    return [
        {"id": f"inews-{i}", "text": inews[i][1], "url": f"http://news.example.cn/{i}.html"}
        for i in range(start, start + n)
    ]


def first_paragraph(text: str) -> str:
    return squash(next(p for p in text.split("\n") if p.strip()))


def squash(text: str) -> str:
    """Without whitespace (HTML collapses runs of spaces)."""
    return "".join(text.split())


def write_warc(path, records, compress: bool) -> None:
    """records: (record id, url, content type, payload bytes); a warcinfo record comes first."""
    with open(path, "wb") as f:
        writer = WARCWriter(f, gzip=compress)
        writer.write_record(writer.create_warcinfo_record(str(path), {"software": "ctlab-tests"}))
        for record_id, url, content_type, payload in records:
            http = StatusAndHeaders("200 OK", [("Content-Type", content_type)], protocol="HTTP/1.1")
            record = writer.create_warc_record(
                url,
                "response",
                payload=io.BytesIO(payload),
                http_headers=http,
                warc_headers_dict={"WARC-Record-ID": record_id},
            )
            writer.write_record(record)


def html_records(inews, n, start=0):
    records = []
    for i in range(start, start + n):
        title, text = inews[i]
        page = WebPage(f"p{i}", f"http://news.example.cn/{i}.html", title, text)
        payload = page_html(page).encode("utf-8")
        records.append((f"<urn:test:{i}>", page.url, "text/html; charset=utf-8", payload))
    return records


# -- formats ------------------------------------------------------------------------------------------


def test_jsonl_plain_gzip_and_zstd_read_alike(tmp_path, inews):
    records = article_records(inews, 5)
    data = jsonl_bytes(records)
    paths = {
        "plain": tmp_path / "a.jsonl",
        "gzip": tmp_path / "a.jsonl.gz",
        "zstd": tmp_path / "a.jsonl.zst",
    }
    paths["plain"].write_bytes(data)
    paths["gzip"].write_bytes(gzip.compress(data))
    paths["zstd"].write_bytes(zstandard.ZstdCompressor().compress(data))
    for path in paths.values():
        assert sniff_format(str(path)) == "jsonl"
        docs, reader = run_reader([path])
        assert [(d.id, d.text) for d in docs] == [(r["id"], r["text"]) for r in records]
        assert [d.metadata for d in docs] == [{"source": str(path), "url": r["url"]} for r in records]
        stats = counters(reader)
        assert stats["docs_out"] == 5 and stats["input_files"] == 1
        assert stats["chars_out"] == sum(len(r["text"]) for r in records)
        assert bad_counts(reader) == {}


def test_zstd_with_several_frames_is_read_across_frames(tmp_path, inews):
    records = article_records(inews, 6)
    compressor = zstandard.ZstdCompressor()
    frames = compressor.compress(jsonl_bytes(records[:3])) + compressor.compress(jsonl_bytes(records[3:]))
    path = tmp_path / "frames.jsonl.zst"
    path.write_bytes(frames)
    docs, reader = run_reader([path])
    assert [d.id for d in docs] == [r["id"] for r in records]
    assert bad_counts(reader) == {}


@pytest.mark.parametrize("compress", [False, True], ids=["warc", "warc.gz"])
def test_warc_responses_become_documents(tmp_path, inews, compress):
    path = tmp_path / ("crawl.warc.gz" if compress else "crawl.warc")
    write_warc(path, html_records(inews, 3), compress)
    assert sniff_format(str(path)) == "warc"
    docs, reader = run_reader([path])
    assert [d.id for d in docs] == ["<urn:test:0>", "<urn:test:1>", "<urn:test:2>"]  # warcinfo skipped
    for i, doc in enumerate(docs):
        assert doc.metadata == {"source": str(path), "url": f"http://news.example.cn/{i}.html"}
        assert first_paragraph(inews[i][1]) in squash(doc.text)
        assert "<p>" not in doc.text and "关于我们" not in doc.text  # extracted text, not HTML or navigation
    assert bad_counts(reader) == {}


def test_warc_page_in_gb18030_is_decoded(tmp_path, inews):
    title, text = inews[0]
    page = WebPage("gb", "http://news.example.cn/gb.html", title, text)
    payload = page_html(page).replace("charset='utf-8'", "charset='gb18030'").encode("gb18030")
    path = tmp_path / "gb.warc"
    write_warc(path, [("<urn:test:gb>", page.url, "text/html", payload)], compress=False)
    [doc] = read_file(path)
    assert isinstance(doc, Document)
    assert first_paragraph(text) in squash(doc.text)


def test_parquet(tmp_path, inews):
    table = pa.table(
        {
            "id": ["p-0", None, "", "p-3"],
            "text": [inews[0][1], inews[1][1], inews[2][1], None],
            "url": ["http://a.cn/0", "http://a.cn/1", None, "http://a.cn/3"],
        }
    )
    path = tmp_path / "part.parquet"
    pq.write_table(table, path, row_group_size=2)  # two row groups: row numbers continue across batches
    assert sniff_format(str(path)) == "parquet"
    items = read_file(path)
    assert [type(x).__name__ for x in items] == ["Document", "Document", "Document", "BadRecord"]
    assert [x.id for x in items[:3]] == ["p-0", f"{path}:1", f"{path}:2"]
    assert [x.text for x in items[:3]] == [inews[0][1], inews[1][1], inews[2][1]]
    assert [x.metadata for x in items[:3]] == [
        {"source": str(path), "url": "http://a.cn/0"},
        {"source": str(path), "url": "http://a.cn/1"},
        {"source": str(path), "url": None},
    ]
    assert items[3].kind == "missing_text" and items[3].record_id == "p-3"


def test_format_is_detected_from_content_before_name(tmp_path, inews):
    records = article_records(inews, 2)
    jsonl = tmp_path / "records.bin"
    jsonl.write_bytes(b"\n  " + jsonl_bytes(records))  # leading whitespace is fine
    gz = tmp_path / "records.warc.dat"  # a misleading name: the content decides
    gz.write_bytes(gzip.compress(jsonl_bytes(records)))
    warc = tmp_path / "crawl.txt"
    write_warc(warc, html_records(inews, 1), compress=True)
    parquet = tmp_path / "table.bin"
    pq.write_table(pa.table({"text": [inews[0][1]]}), parquet)
    assert sniff_format(str(jsonl)) == "jsonl"
    assert sniff_format(str(gz)) == "jsonl"
    assert sniff_format(str(warc)) == "warc"
    assert sniff_format(str(parquet)) == "parquet"
    docs, reader = run_reader([jsonl, gz, warc, parquet])
    assert len(docs) == 6 and bad_counts(reader) == {}
    # the name decides only when the content says nothing
    for name, expected in [("x.jsonl", "jsonl"), ("x.json", "jsonl"), ("x.warc", "warc"), ("x.parquet", "parquet")]:
        (tmp_path / name).write_bytes(b"???")
        assert sniff_format(str(tmp_path / name)) == expected
    (tmp_path / "notes.txt").write_bytes(b"hello")
    assert sniff_format(str(tmp_path / "notes.txt")) is None


def test_input_format_overrides_detection(tmp_path, inews):
    path = tmp_path / "records.dat"  # first line a JSON array: neither content nor name says JSONL
    path.write_bytes(b'["header"]\n' + jsonl_bytes(article_records(inews, 2)))
    assert sniff_format(str(path)) is None
    assert [x.kind for x in read_file(path)] == ["unknown_format"]
    items = read_file(path, input_format="jsonl")
    assert [type(x).__name__ for x in items] == ["BadRecord", "Document", "Document"]
    assert items[0].kind == "malformed_json"
    assert [x.id for x in items[1:]] == ["inews-0", "inews-1"]
    # forcing a format on a file of another format reads nothing as documents
    assert all(isinstance(x, BadRecord) for x in read_file(path, input_format="parquet"))
    with pytest.raises(ValueError, match="unknown input format"):
        CorpusReader([], input_format="csv")
    assert FORMATS == ("warc", "jsonl", "parquet")


# -- ids and metadata ---------------------------------------------------------------------------------


def test_jsonl_ids_kept_or_derived_from_line(tmp_path, inews):
    text = inews[0][1]
    lines = [
        {"id": "keep-me", "text": text},
        {"text": text},
        None,  # a blank line still counts as a line
        {"id": "", "text": text},
        {"id": 42, "text": text},
        {"id": None, "text": text, "metadata": {"lang": "zh", "url": "http://meta.cn/"}},
    ]
    path = tmp_path / "ids.jsonl"
    path.write_bytes(b"".join(b"\n" if r is None else json.dumps(r).encode() + b"\n" for r in lines))
    docs = read_file(path)
    assert [d.id for d in docs] == ["keep-me", f"{path}:1", f"{path}:3", "42", f"{path}:5"]
    assert [d.id for d in read_file(path)] == [d.id for d in docs]  # stable across reads
    assert docs[0].metadata == {"source": str(path), "url": None}
    assert docs[-1].metadata == {"lang": "zh", "source": str(path), "url": "http://meta.cn/"}


def test_custom_text_and_id_keys(tmp_path, inews):
    path = tmp_path / "custom.jsonl"
    path.write_bytes(jsonl_bytes([{"doc_id": "d1", "content": inews[0][1]}, {"doc_id": "d2", "text": "x"}]))
    items = read_file(path, text_key="content", id_key="doc_id")
    assert isinstance(items[0], Document) and items[0].id == "d1" and items[0].text == inews[0][1]
    assert isinstance(items[1], BadRecord) and items[1].kind == "missing_text" and items[1].record_id == "d2"
    assert "content" in items[1].detail


# -- bad records --------------------------------------------------------------------------------------


def test_truncated_gzip_keeps_records_before_the_damage(tmp_path, inews):
    records = article_records(inews, 200)
    packed = gzip.compress(jsonl_bytes(records))
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(packed[: len(packed) // 2])
    docs, reader = run_reader([path])
    assert 0 < len(docs) < len(records)
    assert [(d.id, d.text) for d in docs] == [(r["id"], r["text"]) for r in records[: len(docs)]]
    assert bad_counts(reader) == {"corrupt_gzip": 1}
    items = read_file(path)
    assert isinstance(items[-1], BadRecord) and items[-1].kind == "corrupt_gzip"
    assert items[-1].record_id == str(path)
    assert all(isinstance(x, Document) for x in items[:-1])


def test_damaged_gzip_crc_is_corrupt_gzip(tmp_path, inews):
    data = bytearray(gzip.compress(jsonl_bytes(article_records(inews, 3))))
    data[-8] ^= 0xFF  # the CRC32 of the trailer
    path = tmp_path / "crc.jsonl.gz"
    path.write_bytes(bytes(data))
    items = read_file(path)
    assert [x.kind for x in items if isinstance(x, BadRecord)] == ["corrupt_gzip"]
    assert isinstance(items[-1], BadRecord)


def test_truncated_zstd_keeps_records_before_the_damage(tmp_path, inews):
    records = article_records(inews, 200)  # several zstd blocks: the first ones decode
    packed = zstandard.ZstdCompressor().compress(jsonl_bytes(records))
    path = tmp_path / "cut.jsonl.zst"
    path.write_bytes(packed[: len(packed) // 2])
    docs, reader = run_reader([path])
    assert 0 < len(docs) < len(records)
    assert [(d.id, d.text) for d in docs] == [(r["id"], r["text"]) for r in records[: len(docs)]]
    # the damage is reported as such, once, not as a broken last line
    assert bad_counts(reader) == {"corrupt_zstd": 1}


def test_truncated_small_zstd_is_reported(tmp_path, inews):
    packed = zstandard.ZstdCompressor().compress(jsonl_bytes(article_records(inews, 3)))
    path = tmp_path / "small.jsonl.zst"
    path.write_bytes(packed[:-10])
    items = read_file(path)
    assert [x.kind for x in items if isinstance(x, BadRecord)] == ["corrupt_zstd"]


def test_truncated_warc_record(tmp_path, inews):
    path = tmp_path / "cut.warc"
    write_warc(path, html_records(inews, 3), compress=False)
    data = path.read_bytes()
    path.write_bytes(data[:-300])  # inside the last record's payload
    docs, reader = run_reader([path])
    assert [d.id for d in docs] == ["<urn:test:0>", "<urn:test:1>"]
    assert bad_counts(reader) == {"truncated_warc": 1}
    bad = read_file(path)[-1]
    assert bad.kind == "truncated_warc" and bad.record_id == "<urn:test:2>"


def test_truncated_gzip_warc_keeps_complete_records(tmp_path, inews):
    path = tmp_path / "cut.warc.gz"
    write_warc(path, html_records(inews, 3), compress=True)
    data = path.read_bytes()
    path.write_bytes(data[:-200])
    docs, reader = run_reader([path])
    assert [d.id for d in docs] == ["<urn:test:0>", "<urn:test:1>"]
    assert bad_counts(reader) == {"corrupt_gzip": 1}


def test_jsonl_bad_records(tmp_path, inews):
    text = inews[0][1]
    lines = [
        json.dumps({"id": "good", "text": text}, ensure_ascii=False).encode(),
        b'{"id": "bad-json", "text": "unterminated',
        b'["not", "an", "object"]',
        b"42",
        b'{"id": "bad-utf8", "text": "\xff\xfe broken bytes"}',
        b'{"id": "no-text", "body": "x"}',
        b'{"id": "number-text", "text": 3}',
        b'{"id": "blank", "text": "  \\n\\t "}',
        b'{"id": "nothing", "text": ""}',
        b'{"id": "nul", "text": "\\u0000 hidden"}',
        b'{"id": "controls", "text": "\\u0001\\u0002\\u0003\\u0004ab"}',
        b'{"id": "few-controls", "text": "' + "正常的文本内容".encode() * 10 + b'\\u0001"}',
        b"   ",  # blank lines are skipped, not bad
        json.dumps({"id": "last", "text": text}, ensure_ascii=False).encode(),
    ]
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    items = read_file(path)
    got = [(x.record_id, x.kind) if isinstance(x, BadRecord) else (x.id, "doc") for x in items]
    assert got == [
        ("good", "doc"),
        (f"{path}:1", "malformed_json"),
        (f"{path}:2", "malformed_json"),
        (f"{path}:3", "malformed_json"),
        (f"{path}:4", "invalid_utf8"),
        ("no-text", "missing_text"),
        ("number-text", "missing_text"),
        ("blank", "empty"),
        ("nothing", "empty"),
        ("nul", "binary"),
        ("controls", "binary"),
        ("few-controls", "doc"),
        ("last", "doc"),
    ]
    by_id = {x.record_id: x for x in items if isinstance(x, BadRecord)}
    assert by_id[f"{path}:1"].raw.rstrip("\n") == lines[1].decode()  # the raw line goes to the rejects
    assert "\\xff" in by_id[f"{path}:4"].raw
    assert by_id[f"{path}:2"].detail == "line is not a JSON object"


def test_is_binary():
    assert is_binary("abc\x00def")
    assert is_binary("\x01\x02" + "a" * 10)
    assert is_binary("\ufffd" * 3 + "中文")
    assert not is_binary("中文\t内容\r\n第二行")
    assert not is_binary("中" * 100 + "\x07")


def test_warc_bad_records(tmp_path, inews):
    records = html_records(inews, 1)
    records += [
        ("<urn:test:png>", "http://news.example.cn/logo.png", "image/png", b"\x89PNG\r\n\x1a\n" + bytes(64)),
        ("<urn:test:pdf>", "http://news.example.cn/a.pdf", "application/pdf", b"%PDF-1.4 ..."),
        ("<urn:test:undecodable>", "http://news.example.cn/x.html", "text/html", b"<html>\xff\xff\x80</html>"),
        ("<urn:test:blank>", "http://news.example.cn/blank.html", "text/html", b"<html><body></body></html>"),
    ]
    path = tmp_path / "mixed.warc.gz"
    write_warc(path, records, compress=True)
    items = read_file(path)
    got = [(x.record_id, x.kind) if isinstance(x, BadRecord) else (x.id, "doc") for x in items]
    assert got == [
        ("<urn:test:0>", "doc"),
        ("<urn:test:png>", "non_html"),
        ("<urn:test:pdf>", "non_html"),
        ("<urn:test:undecodable>", "invalid_utf8"),
        ("<urn:test:blank>", "empty"),
    ]
    assert items[1].detail == "image/png"


def test_corrupt_parquet(tmp_path, inews):
    garbage = tmp_path / "garbage.parquet"
    garbage.write_bytes(b"PAR1" + b"\x00garbage" * 20)
    good = tmp_path / "good.parquet"
    pq.write_table(pa.table({"text": [t for _, t in inews[:20]]}), good)
    cut = tmp_path / "cut.parquet"
    cut.write_bytes(good.read_bytes()[:-100])
    for path in (garbage, cut):
        items = read_file(path)
        assert [(x.kind, x.record_id) for x in items] == [("corrupt_parquet", str(path))]


def test_unknown_format(tmp_path):
    path = tmp_path / "blob.bin"
    path.write_bytes(bytes(range(256)) * 4)
    docs, reader = run_reader([path])
    assert docs == []
    assert bad_counts(reader) == {"unknown_format": 1}
    assert counters(reader)["input_files"] == 1
    gz = tmp_path / "blob.gz"  # decompresses fine, but is none of the formats
    gz.write_bytes(gzip.compress(b"plain words\n"))
    assert [x.kind for x in read_file(gz)] == ["unknown_format"]


def _every_kind_of_bad_input(tmp_path, inews) -> list:
    """One file per bad kind (plus one good record each where the format allows)."""
    files = []
    records = article_records(inews, 200)
    packed = gzip.compress(jsonl_bytes(records))
    files.append(tmp_path / "a.jsonl.gz")
    files[-1].write_bytes(packed[: len(packed) // 2])
    packed = zstandard.ZstdCompressor().compress(jsonl_bytes(records))
    files.append(tmp_path / "b.jsonl.zst")
    files[-1].write_bytes(packed[: len(packed) // 2])
    files.append(tmp_path / "c.warc")
    write_warc(files[-1], html_records(inews, 2), compress=False)
    files[-1].write_bytes(files[-1].read_bytes()[:-300])
    files.append(tmp_path / "d.jsonl")
    files[-1].write_bytes(
        jsonl_bytes([{"id": "ok", "text": inews[0][1]}])
        + b'{"id": "u", "text": "\xff"}\n{"id": \n["array"]\n{"id": "m"}\n{"id": "e", "text": " "}\n'
        + b'{"id": "b", "text": "\\u0000"}\n'
    )
    files.append(tmp_path / "e.warc.gz")
    write_warc(files[-1], [("<urn:test:png>", "http://x.cn/a.png", "image/png", b"\x89PNG")], compress=True)
    files.append(tmp_path / "f.parquet")
    files[-1].write_bytes(b"PAR1 not really")
    files.append(tmp_path / "g.bin")
    files[-1].write_bytes(bytes(range(256)))
    return files


def test_every_bad_kind_is_counted_and_rejected(tmp_path, inews):
    (tmp_path / "in").mkdir()
    files = _every_kind_of_bad_input(tmp_path / "in", inews)
    rejects_folder = tmp_path / "rejects"
    docs, reader = run_reader(files, rejects=RejectsWriter(str(rejects_folder), "read"))
    bad = bad_counts(reader)
    assert bad == {
        "corrupt_gzip": 1,
        "corrupt_zstd": 1,
        "truncated_warc": 1,
        "invalid_utf8": 1,
        "malformed_json": 2,
        "missing_text": 1,
        "empty": 1,
        "binary": 1,
        "non_html": 1,
        "corrupt_parquet": 1,
        "unknown_format": 1,
    }
    assert set(bad) == set(BAD_KINDS)
    stats = counters(reader)
    assert stats["input_files"] == len(files)
    assert stats["docs_out"] == len(docs)
    assert stats["chars_out"] == sum(len(d.text) for d in docs)
    # every bad record is in the rejects, with its kind as the reason
    written = sorted(p.name for p in (rejects_folder / "read").iterdir())
    assert written == ["00000.jsonl.gz"]  # complete: no temporary file left behind
    with gzip.open(rejects_folder / "read" / "00000.jsonl.gz", "rt", encoding="utf-8") as f:
        rejects = [json.loads(line) for line in f]
    assert len(rejects) == sum(bad.values())
    assert {r["stage"] for r in rejects} == {"read"}
    reasons: dict[str, int] = {}
    for r in rejects:
        reasons[r["reason"]] = reasons.get(r["reason"], 0) + 1
        assert set(r) == {"id", "stage", "reason", "text", "metadata"}
        assert r["metadata"]["source"] in {str(f) for f in files}
        assert "detail" in r["metadata"]
    assert reasons == bad
    ids = {(r["reason"], r["id"]) for r in rejects}
    assert ("invalid_utf8", f"{files[3]}:1") in ids
    assert ("truncated_warc", "<urn:test:1>") in ids
    assert ("non_html", "<urn:test:png>") in ids
    assert ("unknown_format", str(files[-1])) in ids
    assert ("empty", "e") in ids and ("binary", "b") in ids and ("missing_text", "m") in ids


# -- sharding -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("world_size", [1, 3, 7, 9])
def test_sharding_reads_every_file_once(tmp_path, inews, world_size):
    files = []
    for f in range(7):
        path = tmp_path / f"part{f}.jsonl"
        path.write_bytes(jsonl_bytes(article_records(inews, 2, start=2 * f)))
        files.append(str(path))
    reader = CorpusReader(files, progress=False)
    seen: list[str] = []
    per_rank_files = []
    for rank in range(world_size):
        shard_reader = CorpusReader(files, progress=False)
        docs = list(shard_reader.run(rank=rank, world_size=world_size))
        seen.extend(d.id for d in docs)
        per_rank_files.append(int(counters(shard_reader).get("input_files", 0)))
        assert {d.metadata["source"] for d in docs} == set(files[rank::world_size])
    assert sorted(seen) == sorted(f"inews-{i}" for i in range(14))
    assert len(seen) == len(set(seen))
    assert sum(per_rank_files) == len(files)
    assert reader.files == files


def test_run_passes_upstream_documents_through(tmp_path, inews):
    path = tmp_path / "a.jsonl"
    path.write_bytes(jsonl_bytes(article_records(inews, 1)))
    upstream = [Document(text="上游", id="up")]
    docs = list(CorpusReader([str(path)], progress=False).run(iter(upstream)))
    assert [d.id for d in docs] == ["up", "inews-0"]


def test_progress_bar_does_not_change_the_result(tmp_path, inews):
    path = tmp_path / "a.jsonl.gz"
    path.write_bytes(gzip.compress(jsonl_bytes(article_records(inews, 3))))
    with_bar = list(CorpusReader([str(path)], progress=True).run())
    assert [d.id for d in with_bar] == ["inews-0", "inews-1", "inews-2"]


def test_expand_inputs(tmp_path):
    (tmp_path / "d" / "sub").mkdir(parents=True)
    (tmp_path / "d" / ".hidden").mkdir()
    for name in ("d/b.jsonl", "d/a.jsonl", "d/sub/c.jsonl", "d/.skip.jsonl", "d/.hidden/x.jsonl", "single.jsonl"):
        (tmp_path / name).write_text("{}\n")
    got = expand_inputs([str(tmp_path / "single.jsonl"), str(tmp_path / "d")])
    assert got == [str(tmp_path / p) for p in ("single.jsonl", "d/a.jsonl", "d/b.jsonl", "d/sub/c.jsonl")]
    with pytest.raises(UserError) as err:
        expand_inputs([str(tmp_path / "d"), str(tmp_path / "missing")])
    assert str(err.value) == f"input not found: {tmp_path / 'missing'}"


def test_warc_cut_anywhere_is_reported_never_raised(tmp_path, inews):
    """Cut an uncompressed WARC at many offsets: the complete records are read, a record cut
    anywhere (WARC headers, HTTP headers or payload) is one truncated_warc, nothing raises."""
    full = tmp_path / "full.warc"
    write_warc(full, html_records(inews, 3), compress=False)
    data = full.read_bytes()
    starts = [i for i in range(len(data)) if data.startswith(b"WARC/1.0\r\n", i)]
    assert len(starts) == 4  # warcinfo + 3 responses
    ends = [s - 4 for s in starts[1:]] + [len(data) - 4]  # each record is followed by \r\n\r\n
    cut_path = tmp_path / "cut.warc"
    offsets = sorted(set(range(1, len(data), 23)) | {s + d for s in starts for d in (1, 12, 20, 60, 200)})
    for cut in offsets:
        cut_path.write_bytes(data[:cut])
        items = read_file(cut_path, input_format="warc")
        complete = sum(end <= cut for end in ends)
        partial = any(start < cut < end for start, end in zip(starts, ends, strict=True))
        docs = [x for x in items if isinstance(x, Document)]
        bad = [x.kind for x in items if isinstance(x, BadRecord)]
        assert len(docs) == max(complete - 1, 0), cut  # the first record is the warcinfo
        assert bad == (["truncated_warc"] if partial else []), (cut, data[max(cut - 30, 0) : cut])
