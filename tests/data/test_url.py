"""The URL stage: datatrove's URLFilter decisions, with the domain list held as hashes."""

import itertools
import os

import pytest
from datatrove.data import Document
from datatrove.pipeline.filters.url_filter import URLFilter

from ctlab.data.filters.url import CompactURLFilter, HashedLines, UrlBlocklistFilter, UrlConfig


def _doc(url):
    return Document(text="正文", id=url, metadata={"url": url} if url else {})


@pytest.fixture(scope="module")
def filters():
    """(ctlab's filter, datatrove's own) with the bundled lists loaded."""
    ours = UrlBlocklistFilter(UrlConfig())
    ours.process(_doc("http://example.cn/"))
    reference = URLFilter()
    reference.tldextractor = ours._filter().tldextractor
    reference.download_data()
    return ours, reference


def test_same_decisions_as_datatrove(filters):
    ours, reference = filters
    domains_file = next(p for p in _asset_files() if p.endswith("domains"))
    with open(domains_file, encoding="utf-8", errors="surrogateescape") as f:
        listed = [line.strip() for line in itertools.islice(f, 0, 4_000_000, 40_000)]
    urls = [f"http://{d}/page.html" for d in listed if d and not d.startswith("#")]
    urls += [f"http://www.{d}/x" for d in listed[:20] if d]
    urls += [
        "http://news.sina.com.cn/c/2019/a.html",
        "https://www.people.com.cn/n1/2019/index.html",
        "http://example.cn/xxx-porn-video",
        "http://192.168.1.1/admin",
        "https://zh.wikipedia.org/wiki/中文",
    ]
    blocked = 0
    for url in urls:
        expected = reference.filter(_doc(url))
        assert ours.process(_doc(url)) == expected, url
        blocked += expected is not True
    assert blocked >= len(listed) // 2  # the sample really exercises the domain list


def _asset_files():
    from datatrove.pipeline.filters import url_filter

    folder = url_filter.cached_assets_path(library_name="datatrove", namespace="filters", subfolder="url_filter")
    return [os.path.join(folder, name) for name in os.listdir(folder)]


def test_blocklisted_domain_dropped_and_plain_site_kept(filters):
    ours, _ = filters
    assert ours.process(_doc("http://www.pornhub.com/view")) == (False, "domain")
    assert ours.process(_doc("http://news.example.cn/1.html")) is True


def test_document_without_url_passes_and_is_counted():
    step = UrlBlocklistFilter(UrlConfig())
    assert step.process(_doc(None)) is True
    assert step.stats["no_url"].total == 1


def test_extra_domains_are_blocked(filters):
    step = UrlBlocklistFilter(UrlConfig(extra_domains=["spam-site.cn"]))
    assert step.process(_doc("http://www.spam-site.cn/a")) == (False, "domain")
    assert isinstance(step._filter(), CompactURLFilter)


def test_hashed_lines_membership_and_cache(tmp_path):
    path = tmp_path / "domains"
    path.write_text("# comment\nexample.com\n  spaced.org  \nbad.cn\n", encoding="utf-8")
    lines = HashedLines(str(path), extra={"extra.net"})
    assert "example.com" in lines and "spaced.org" in lines and "extra.net" in lines
    assert "# comment" not in lines and "good.cn" not in lines
    assert len(list(tmp_path.glob("domains.*.npy"))) == 1
    again = HashedLines(str(path))  # loaded from the cache
    assert "bad.cn" in again and "good.cn" not in again
