"""Read raw web data (WARC, JSONL, Parquet; plain, gzip or zstd) into datatrove Documents.

One reader for every input format, so a recipe starts the same way whatever the user
hands it, and so that broken input is *accounted for* instead of crashing a task or
vanishing: each unusable record is counted under a kind (``bad/<kind>`` in the step's
stats) and written to the rejects folder with that kind as its reason.

Bad-record kinds: ``corrupt_gzip``, ``corrupt_zstd`` (a compressed stream that is
truncated or damaged: what was read before the damage is kept), ``truncated_warc``,
``invalid_utf8``, ``malformed_json``, ``missing_text``, ``empty``, ``binary``,
``non_html`` (a WARC response that is not a web page), ``corrupt_parquet``,
``unreadable`` and ``unknown_format``. WARC records that are not responses (requests,
metadata, ...) hold no documents: they are counted as ``skipped_warc_records``.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import logging
import os
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson
from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.readers.base import BaseReader
from datatrove.pipeline.writers.disk_base import DiskWriter
from tqdm import tqdm

from ctlab.errors import UserError
from ctlab.runs import run_kind

FORMATS = ("warc", "jsonl", "parquet")
_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


@dataclass
class BadRecord:
    """A record that could not become a document: ``kind`` is what went wrong."""

    kind: str
    record_id: str
    detail: str = ""
    raw: str = ""


def expand_inputs(paths: list[str]) -> list[str]:
    """Files named on the command line plus every non-hidden file under named folders (sorted),
    each once, in the order given.

    Raises :class:`UserError` naming the first path that does not exist.
    """
    files: list[str] = []
    for p in paths:
        path = Path(p)
        if path.is_dir():
            files.extend(
                str(f)
                for f in sorted(path.rglob("*"))
                if f.is_file() and not any(part.startswith(".") for part in f.relative_to(path).parts)
            )
        elif path.is_file():
            files.append(str(path))
        else:
            raise UserError(f"input not found: {p}")
    return list(dict.fromkeys(os.path.abspath(f) for f in files))


def corpus_files(paths: list[str]) -> list[str]:
    """Like :func:`expand_inputs`, except that the folder of a ``ctlab data clean`` run stands for
    its clean documents only (``clean/*.jsonl.gz``), so later stages can be pointed at a run; an
    unfinished run is refused (:class:`UserError`)."""
    files: list[str] = []
    for p in paths:
        clean = Path(p, "clean")
        if run_kind(p) == "clean" and clean.is_dir():
            if not Path(p, "stats.json").is_file():
                raise UserError(f"{p} is a `ctlab data clean` run that has not finished (no stats.json)")
            files.extend(str(f) for f in sorted(clean.glob("*.jsonl.gz")) if not f.name.startswith("."))
        else:
            files.extend(expand_inputs([p]))
    return list(dict.fromkeys(os.path.abspath(f) for f in files))


def _open_decompressed(raw: io.BufferedReader) -> tuple[io.BufferedIOBase, str]:
    """The decompressed byte stream of ``raw`` and its compression name ("", "gzip", "zstd")."""
    head = raw.peek(4)[:4]
    if head[:2] == _GZIP_MAGIC:
        return gzip.GzipFile(fileobj=raw), "gzip"
    if head == _ZSTD_MAGIC:
        return io.BufferedReader(_ZstdFrames(raw), 1 << 16), "zstd"
    return raw, ""


class _ZstdFrames(io.RawIOBase):
    """The zstd frames of ``raw`` decompressed one after another.

    Raises ``zstandard.ZstdError`` when ``raw`` ends inside a frame: zstandard's own
    ``stream_reader`` ends silently there, so a truncated file would lose its tail unreported.
    """

    def __init__(self, raw):
        import zstandard

        self._raw = raw
        self._dctx = zstandard.ZstdDecompressor()
        self._frame = None  # decompressor of the frame being read; None between frames
        self._pending = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        import zstandard

        while not self._pending:
            chunk = self._raw.read(1 << 17)
            if not chunk:
                if self._frame is not None:
                    raise zstandard.ZstdError("zstd stream ends inside a frame (truncated)")
                return 0
            out = []
            while chunk:
                if self._frame is None:
                    self._frame = self._dctx.decompressobj()
                out.append(self._frame.decompress(chunk))
                chunk = b""
                if self._frame.eof:
                    chunk, self._frame = self._frame.unused_data, None
            self._pending = memoryview(b"".join(out))
        n = min(len(buffer), len(self._pending))
        buffer[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n


class _EOFErrorAsOSError:
    """``stream`` with EOFError (a truncated compressed stream) raised as OSError.

    warcio takes an EOFError from its input for the end of the archive, which would end a
    truncated ``.warc.gz`` silently instead of with a ``corrupt_gzip`` record. Reads return
    what is decompressed so far (``read1``), so the records before the damage are kept.
    """

    def __init__(self, stream):
        self._stream = stream
        self.bytes_read = 0

    def read(self, size: int = -1) -> bytes:
        try:
            data = self._stream.read1(size) if hasattr(self._stream, "read1") else self._stream.read(size)
        except EOFError as err:
            raise OSError(f"EOFError: {err}") from err
        self.bytes_read += len(data)
        return data


def sniff_format(path: str) -> str | None:
    """Guess the format of ``path`` from its first bytes (after decompression), then its name."""
    try:
        with open(path, "rb") as raw_file:
            raw = io.BufferedReader(raw_file)
            stream, _ = _open_decompressed(raw)
            head = stream.read(64)
    except (OSError, EOFError, zlib.error):
        head = b""
    except Exception:  # zstandard.ZstdError and friends: fall back to the name
        head = b""
    if head.startswith(b"WARC/"):
        return "warc"
    if head.startswith(b"PAR1"):
        return "parquet"
    if head.lstrip()[:1] == b"{":
        return "jsonl"
    name = path.lower()
    for suffix, fmt in ((".warc", "warc"), (".jsonl", "jsonl"), (".json", "jsonl"), (".parquet", "parquet")):
        if suffix in name:
            return fmt
    return None


# control characters (Unicode category Cc) except tab and line breaks, and the replacement character
_NOT_TEXT_RE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ufffd]")


def is_binary(text: str) -> bool:
    """True for text that is really binary data: a NUL anywhere, or more than 10% control or
    replacement characters in its first 4,096 characters."""
    if "\x00" in text:
        return True
    sample = text[:4096]
    return len(_NOT_TEXT_RE.findall(sample)) > 0.1 * len(sample)


class CorpusReader(BaseReader):
    """Reads a list of files, sharded by task: task ``rank`` reads ``files[rank::world_size]``.

    Args:
        files: input files (see :func:`expand_inputs`).
        input_format: one of FORMATS, or None to detect each file's format.
        text_key / id_key: JSONL and Parquet field names.
        rejects: writer for bad records (datatrove DiskWriter), optional.
        progress: show a progress bar of input bytes for this task.
    """

    name = "read"
    type = "📖 - READER"

    def __init__(
        self,
        files: list[str],
        input_format: str | None = None,
        text_key: str = "text",
        id_key: str = "id",
        rejects: DiskWriter | None = None,
        progress: bool = True,
    ):
        super().__init__(text_key=text_key, id_key=id_key)
        if input_format is not None and input_format not in FORMATS:
            raise ValueError(f"unknown input format {input_format!r} (choose from {', '.join(FORMATS)})")
        self.files = list(files)
        self.input_format = input_format
        self.rejects = rejects
        self.progress = progress

    # -- per-format record iterators: yield Document or BadRecord ---------------------------------

    def _text_record(self, text, record_id: str, raw_repr: str, metadata: dict) -> Document | BadRecord:
        if not isinstance(text, str):
            return BadRecord("missing_text", record_id, f"no string field {self.text_key!r}", raw_repr)
        if not text.strip():
            return BadRecord("empty", record_id, "no text", raw_repr)
        if is_binary(text):
            return BadRecord("binary", record_id, "control characters or NUL in text", raw_repr)
        return Document(text=text, id=record_id, metadata=metadata)

    def _read_jsonl(self, stream, path: str) -> Iterator[Document | BadRecord]:
        for line_no, line in enumerate(stream):
            if not line.strip():
                continue
            fallback_id = f"{path}:{line_no}"
            try:
                decoded = line.decode("utf-8")
            except UnicodeDecodeError as err:
                yield BadRecord("invalid_utf8", fallback_id, str(err), line.decode("utf-8", "backslashreplace"))
                continue
            try:
                obj = orjson.loads(decoded)
            except orjson.JSONDecodeError as err:
                yield BadRecord("malformed_json", fallback_id, str(err), decoded)
                continue
            if not isinstance(obj, dict):
                yield BadRecord("malformed_json", fallback_id, "line is not a JSON object", decoded)
                continue
            record_id = obj.get(self.id_key)
            record_id = fallback_id if record_id in (None, "") else str(record_id)
            metadata = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}
            metadata = {**metadata, "source": path, "url": obj.get("url", metadata.get("url"))}
            yield self._text_record(obj.get(self.text_key), record_id, decoded, metadata)

    def _read_warc(self, stream, path: str) -> Iterator[Document | BadRecord]:
        import trafilatura
        from warcio.archiveiterator import ArchiveIterator

        # what they would log (a record's line, an empty page) is counted as a bad record instead
        for library in ("warcio", "trafilatura"):
            logging.getLogger(library).setLevel(logging.CRITICAL)

        source = _EOFErrorAsOSError(stream)
        records = ArchiveIterator(source, arc2warc=True)
        complete = 0
        while True:
            skipped = records.err_count
            try:
                with contextlib.redirect_stderr(io.StringIO()):  # warcio prints the lines it skips
                    record = next(records, None)
            except AttributeError as err:  # warcio, on a header block cut before WARC-Target-URI
                yield BadRecord("truncated_warc", path, f"record headers cut short ({err})")
                return
            if records.err_count > skipped:
                yield BadRecord("truncated_warc", path, "data between records (a wrong Content-Length)")
            if record is None:
                # warcio also ends quietly on a record whose headers are cut short: the line it
                # read ahead of it, or data without any record, tell that from the end of the file
                if getattr(records, "next_line", None) or (complete == 0 and source.bytes_read):
                    yield BadRecord("truncated_warc", path, "the last record's headers are cut short")
                return
            complete += 1
            record_id = record.rec_headers.get_header("WARC-Record-ID") or f"{path}:{complete - 1}"
            url = record.rec_headers.get_header("WARC-Target-URI")
            payload = record.content_stream().read()
            missing = getattr(record.raw_stream, "limit", None)  # None: no Content-Length, headers cut short
            if missing is None or missing > 0 or not record.rec_headers.get_header("Content-Length"):
                detail = f"record ends {missing} bytes early" if missing else "record headers cut short"
                yield BadRecord("truncated_warc", record_id, detail)
                continue
            if record.rec_type != "response":
                self.stat_update("skipped_warc_records")
                continue
            content_type = record.http_headers.get_header("Content-Type", "") if record.http_headers else ""
            if content_type and "html" not in content_type.lower():
                yield BadRecord("non_html", record_id, content_type)
                continue
            html = _decode_html(payload, content_type)
            if html is None:
                raw = payload[:2000].decode("utf-8", "backslashreplace")
                yield BadRecord("invalid_utf8", record_id, "page is neither valid UTF-8 nor GB18030", raw)
                continue
            text = trafilatura.extract(html, favor_precision=True, include_comments=False)
            yield self._text_record(text or "", record_id, "", {"source": path, "url": url})

    def _read_parquet(self, stream, path: str) -> Iterator[Document | BadRecord]:
        import pyarrow.parquet as pq

        data = stream.read()
        try:
            parquet = pq.ParquetFile(io.BytesIO(data))
            row = 0
            for batch in parquet.iter_batches():
                for obj in batch.to_pylist():
                    record_id = obj.get(self.id_key)
                    record_id = f"{path}:{row}" if record_id in (None, "") else str(record_id)
                    row += 1
                    yield self._text_record(
                        obj.get(self.text_key), record_id, "", {"source": path, "url": obj.get("url")}
                    )
        except (OSError, ValueError) as err:  # pyarrow.ArrowInvalid is a ValueError
            yield BadRecord("corrupt_parquet", path, str(err))

    # -- the datatrove step --------------------------------------------------------------------------

    def read_file(self, path: str, progress: tqdm | None = None) -> Iterator[Document | BadRecord]:
        """Every record of one file; a damaged compressed stream ends the file with one bad record."""
        fmt = self.input_format or sniff_format(path)
        if fmt is None:
            yield BadRecord("unknown_format", path, "not WARC, JSONL or Parquet")
            return
        try:
            raw_file = open(path, "rb")
        except OSError as err:  # vanished or unreadable since the run started
            yield BadRecord("unreadable", path, f"{type(err).__name__}: {err}")
            return
        with raw_file:
            raw = io.BufferedReader(raw_file)
            stream, compression = _open_decompressed(raw)
            read = {"warc": self._read_warc, "jsonl": self._read_jsonl, "parquet": self._read_parquet}[fmt]
            last_pos = 0
            try:
                for item in read(stream, path):
                    if progress is not None:
                        pos = raw_file.tell()
                        progress.update(pos - last_pos)
                        last_pos = pos
                    yield item
            except (EOFError, OSError, zlib.error) as err:
                yield BadRecord(f"corrupt_{compression or fmt}", path, f"{type(err).__name__}: {err}")
            except Exception as err:
                if type(err).__module__.startswith("zstandard") or type(err).__name__ == "ArchiveLoadFailed":
                    kind = "corrupt_zstd" if compression == "zstd" else "truncated_warc"
                    yield BadRecord(kind, path, f"{type(err).__name__}: {err}")
                else:
                    raise
            if progress is not None:
                progress.update(os.path.getsize(path) - last_pos)

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        if data:
            yield from data
        shard = self.files[rank::world_size]
        total = sum(os.path.getsize(f) for f in shard)
        bar = tqdm(
            total=total,
            unit="B",
            unit_scale=True,
            desc=f"read task {rank}",
            disable=None if self.progress else True,  # None: off when stderr is not a terminal
            leave=False,
            mininterval=1,
        )
        with bar, self.rejects if self.rejects else contextlib.nullcontext() as rejects:
            for path in shard:
                self.stat_update("input_files")
                for item in self.read_file(path, bar):
                    if isinstance(item, BadRecord):
                        self.stat_update(f"bad/{item.kind}")
                        if rejects:
                            meta = {"stage": "read", "reason": item.kind, "detail": item.detail, "source": path}
                            rejects.write(Document(text=item.raw, id=item.record_id, metadata=meta), rank)
                        continue
                    self.stat_update("docs_out")
                    self.stat_update("chars_out", value=len(item.text))
                    yield item


def _decode_html(payload: bytes, content_type: str) -> str | None:
    """Decode a page with its declared charset, else UTF-8, else GB18030; None when none fits."""
    declared = None
    if "charset=" in content_type.lower():
        declared = content_type.lower().split("charset=")[-1].split(";")[0].strip().strip("\"'")
    for encoding in dict.fromkeys(e for e in (declared, "utf-8", "gb18030") if e):
        try:
            return payload.decode(encoding)
        except (UnicodeDecodeError, LookupError):
            continue
    return None
