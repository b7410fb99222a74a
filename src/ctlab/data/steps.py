"""The shape every cleaning stage shares: a datatrove filter that may also edit the text,
keeps per-stage accounting (documents and characters in and out, drops by reason) and
writes every dropped document to ``rejects/<stage>/`` with its stage and reason.

Also the writers of a run: clean output, rejects, and the JSONL writer under both, which
writes under a temporary name and renames when the task closes it, so a killed task never
leaves a half-written file under a final name (a task that fails closes, and renames, what
it wrote; its rerun writes the file anew).
"""

from __future__ import annotations

import contextlib
import gzip
from abc import abstractmethod
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import orjson
from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.filters.base_filter import BaseFilter, get_filter_result
from datatrove.pipeline.writers.jsonl import JsonlWriter

TMP_PREFIX = ".tmp."


class AtomicJsonlWriter(JsonlWriter):
    """datatrove's JSONL writer, but each file is written as ``.tmp.<name>`` and renamed when closed.

    Compressed with gzip at ``gzip_level`` (None: plain JSONL): fsspec's gzip always uses level
    9, about twice as slow as 6 for 2% smaller files. Timestamps are left out of the gzip header,
    so the same documents give the same bytes.
    """

    name = "write"

    def __init__(self, output_folder, adapter=None, gzip_level: int | None = 6):
        name = TMP_PREFIX + "${rank}.jsonl" + (".gz" if gzip_level is not None else "")
        super().__init__(output_folder, output_filename=name, adapter=adapter, compression=None)
        self.gzip_level = gzip_level
        self._gzip: dict[str, gzip.GzipFile] = {}

    def _write(self, document: dict, file_handler, filename: str):
        if self.gzip_level is not None:
            if filename not in self._gzip:
                self._gzip[filename] = gzip.GzipFile(
                    fileobj=file_handler, mode="wb", compresslevel=self.gzip_level, mtime=0
                )
            file_handler = self._gzip[filename]
        super()._write(document, file_handler, filename)

    def close(self):
        for stream in self._gzip.values():
            stream.close()  # writes the gzip trailer; the file itself stays open for datatrove to close
        self._gzip.clear()
        names = list(self.output_mg.get_open_files())
        super().close()
        for name in names:
            final = name.replace(TMP_PREFIX, "", 1)
            self.output_folder.mv(name, final)


def _reject_adapter(self, document: Document) -> dict:
    metadata = dict(document.metadata)
    return {
        "id": document.id,
        "stage": metadata.pop("stage", self.stage),
        "reason": metadata.pop("reason", None),
        "text": document.text,
        "metadata": metadata,
    }


class RejectsWriter(AtomicJsonlWriter):
    """Writes dropped documents as ``{id, stage, reason, text, metadata}`` under ``rejects/<stage>/``."""

    name = "rejects"

    def __init__(self, rejects_folder: str, stage: str):
        super().__init__(f"{rejects_folder}/{stage}", adapter=_reject_adapter)
        self.stage = stage


def read_output(folder: str | Path) -> Iterator[dict]:
    """The records a writer of this module left in ``folder`` (``*.jsonl.gz``, in file order)."""
    for path in sorted(Path(folder).glob("*.jsonl.gz")):
        if path.name.startswith(TMP_PREFIX):  # unfinished
            continue
        with gzip.open(path, "rb") as f:
            yield from map(orjson.loads, f)


def _clean_adapter(self, document: Document) -> dict:
    return {"text": document.text, "id": document.id, "metadata": document.metadata}


class CleanWriter(AtomicJsonlWriter):
    """Writes clean documents as ``{text, id, metadata}`` (JSONL.gz)."""

    def __init__(self, output_folder: str):
        super().__init__(output_folder, adapter=_clean_adapter)


class CleaningStep(BaseFilter):
    """A stage of a recipe. Subclasses implement :meth:`process`.

    Stats recorded per task (summed into ``stats.json``): ``docs_in``, ``docs_out``,
    ``chars_in``, ``chars_out`` and ``dropped/<reason>``.
    """

    type = "🧹 - CLEAN"

    def __init__(self, rejects_folder: str | None = None):
        super().__init__(exclusion_writer=RejectsWriter(rejects_folder, self.name) if rejects_folder else None)

    @abstractmethod
    def process(self, doc: Document) -> bool | tuple[bool, str]:
        """Keep (True) or drop (False, reason) ``doc``; may rewrite ``doc.text`` in place."""

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        return self.process(doc)

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        # summed here and reported once: per-document stat updates cost more than some stages
        counts = Counter(dict.fromkeys(("docs_in", "docs_out", "chars_in", "chars_out"), 0))
        try:
            with self.exclusion_writer if self.exclusion_writer else contextlib.nullcontext() as rejects:
                for doc in data:
                    counts["docs_in"] += 1
                    counts["chars_in"] += len(doc.text)
                    with self.track_time():
                        keep, reason = get_filter_result(self.process(doc))
                    if keep:
                        counts["docs_out"] += 1
                        counts["chars_out"] += len(doc.text)
                        yield doc
                        continue
                    reason = reason or "dropped"
                    counts[f"dropped/{reason}"] += 1
                    if rejects:
                        doc.metadata["reason"] = reason
                        rejects.write(doc, rank)
        finally:
            for key, value in counts.items():
                self.stat_update(key, value=value, unit="task")
