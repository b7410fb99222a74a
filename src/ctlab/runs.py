"""Run folders: where a stage may write, how its files appear, and how a rerun finds its work.

Every stage writes into a folder it *claims* with :func:`claim`. The folder's ``run.json``
names the stage (``kind``) and the run's *identity*: the settings that decide what it
computes. Claiming a folder that holds the same run resumes it; a folder that holds another
run, another stage's run, or anything that is not a ctlab run is refused with one line that
says why (naming the settings that differ), so no stage ever overwrites what it did not
write. A folder whose run never got past its start (nothing but ``run.json`` and what the
stage declares as set-up) may be claimed by a corrected command.

Also here, so that every stage does them one way: files written atomically (a temporary name
beside the target, renamed when complete), the checkpoints of a training run, and the
append-only ``metrics.jsonl`` of a run.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from ctlab import __version__
from ctlab.errors import UserError

RUN_FILE = "run.json"
METRICS_FILE = "metrics.jsonl"
_STEP_DIR = re.compile(r"^step-(\d{8})$")


class RunConflict(UserError):
    """The folder holds something else than the run asked for."""


# -- files that appear complete or not at all ------------------------------------------------------


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], Any]) -> None:
    """Call ``write`` on a binary file opened under a temporary name beside ``path``, then rename it."""
    path = Path(path)
    tmp = path.with_name(f".tmp.{path.name}.{os.getpid()}.{threading.get_ident()}")
    try:
        with open(tmp, "wb") as f:  # plain open: the file gets the usual permissions
            write(f)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def output_file(path: str | Path) -> Path:
    """``path`` as a file a command may write at its end: its folder made now, so a mistake in
    it is a one-line error before the work rather than a traceback after it."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path} is a folder: give a file name")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot write {path}: {err.strerror or err}") from None
    if not os.access(path.parent, os.W_OK):
        raise UserError(f"cannot write {path}: permission denied")
    return path


def write_json(path: str | Path, data: Any) -> None:
    atomic_write(path, lambda f: f.write(json.dumps(data, indent=1, ensure_ascii=False).encode() + b"\n"))


def save_npy(path: str | Path, array: np.ndarray) -> None:
    atomic_write(path, lambda f: np.save(f, array))


def file_digest(path: str | Path) -> str:
    """sha256 of a file, for recording which tokenizer or input a run used."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_json(path: str | Path, what: str) -> Any:
    """The JSON content of ``path``; a missing or damaged file is a :class:`UserError` naming ``what``."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path.parent} is not {what} (no {path.name})") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"{path} is damaged ({err}): make {what} again") from None


# -- claiming a folder ------------------------------------------------------------------------------


@dataclass
class Claim:
    folder: Path
    resumed: bool  # the folder already held this run


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict) and data:
        flat: dict[str, Any] = {}
        for key, value in data.items():
            flat.update(_flatten(value, f"{prefix}{key}."))
        return flat
    return {prefix.rstrip("."): data}


def differences(saved: dict, wanted: dict) -> list[str]:
    """``KEY: OLD -> NEW`` for every setting (dotted) that differs between two identities."""

    def shown(value: Any) -> str:
        text = json.dumps(value, ensure_ascii=False)
        return text if len(text) <= 40 else text[:37] + "..."

    old, new = _flatten(saved), _flatten(wanted)
    missing = object()
    return [
        f"{key}: {shown(old.get(key))} -> {shown(new.get(key))}"
        for key in sorted(old.keys() | new.keys())
        if old.get(key, missing) != new.get(key, missing)
    ]


def _normal(identity: dict) -> dict:
    return json.loads(json.dumps(identity))  # tuples as lists, keys as strings: as read back from disk


def claim(
    folder: str | Path,
    kind: str,
    identity: dict,
    record: dict | None = None,
    setup: Iterable[str] = (),
) -> Claim:
    """Make ``folder`` the run folder of a ``kind`` run with ``identity``, or resume it.

    ``record``: more to keep in run.json (the resolved config, say), not compared on resume.
    ``setup``: names the stage writes at every start (say, a copy of the tokenizer); a folder
    holding only those, run.json and empty folders has done no work and may take another identity.
    Raises :class:`RunConflict` for a folder holding anything else, :class:`UserError` for a
    folder that cannot be written.
    """
    folder = Path(folder)
    path = folder / RUN_FILE
    wanted = _normal(identity)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{folder} is a file, not a folder: choose another --out")
    if path.is_file():
        saved = read_json(path, "a ctlab run folder")
        if not isinstance(saved, dict) or saved.get("kind") != kind:
            other = saved.get("kind", "other") if isinstance(saved, dict) else "other"
            raise RunConflict(f"{folder} holds a ctlab {other} run, not a {kind} run: choose another --out")
        if saved.get("identity") == wanted:
            if any(saved.get(key) != value for key, value in _normal(record or {}).items()):
                _write_run_file(folder, kind, wanted, record)  # the record (paths, say) may have moved
            return Claim(folder, resumed=True)
        unstarted = {RUN_FILE, *setup}
        if any(entry.name not in unstarted and not _empty_folder(entry) for entry in folder.iterdir()):
            changed = differences(saved.get("identity") or {}, wanted)
            shown = "; ".join(changed[:4]) + (f"; and {len(changed) - 4} more" if len(changed) > 4 else "")
            raise RunConflict(
                f"{folder} holds a {kind} run with other settings ({shown}): "
                "choose another --out, or give the same settings to resume it"
            )
    elif folder.is_dir() and any(folder.iterdir()):
        raise RunConflict(f"{folder} is not empty and not a ctlab {kind} folder: choose another --out")
    _write_run_file(folder, kind, wanted, record)
    return Claim(folder, resumed=False)


def _empty_folder(path: Path) -> bool:
    return path.is_dir() and not any(path.iterdir())


def _write_run_file(folder: Path, kind: str, identity: dict, record: dict | None) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        write_json(folder / RUN_FILE, {"kind": kind, "ctlab": __version__, "identity": identity, **(record or {})})
    except OSError as err:
        raise UserError(f"cannot write to {folder}: {err.strerror or err}") from None


def run_kind(folder: str | Path) -> str | None:
    """The stage that made ``folder`` (from its run.json), or None."""
    path = Path(folder) / RUN_FILE
    if not path.is_file():
        return None
    with contextlib.suppress(OSError, ValueError):
        saved = json.loads(path.read_text(encoding="utf-8"))
        return saved.get("kind") if isinstance(saved, dict) else None
    return None


# -- checkpoints ------------------------------------------------------------------------------------


def checkpoint_dir(run: str | Path, step: int) -> Path:
    return Path(run) / "checkpoints" / f"step-{step:08d}"


def checkpoints(run: str | Path) -> list[tuple[int, Path]]:
    """(step, folder) of every complete checkpoint of ``run``, oldest first."""
    folder = Path(run) / "checkpoints"
    if not folder.is_dir():
        return []
    return sorted((int(m.group(1)), p) for p in folder.iterdir() if (m := _STEP_DIR.match(p.name)))


def is_checkpoint(folder: str | Path) -> bool:
    """A model folder: config.json beside safetensors weights."""
    folder = Path(folder)
    return (folder / "config.json").is_file() and any(folder.glob("*.safetensors"))


def latest_checkpoint(path: str | Path) -> Path:
    """``path`` itself when it is a model folder, else the latest checkpoint of the run at ``path``."""
    path = Path(path)
    if is_checkpoint(path):
        return path
    found = checkpoints(path)
    if found:
        return found[-1][1]
    if not path.exists():
        raise UserError(f"{path} does not exist")
    raise UserError(f"{path} is neither a model checkpoint nor a run folder with checkpoints")


# -- metrics ----------------------------------------------------------------------------------------


class Metrics:
    """A run's ``metrics.jsonl``: one JSON record per line, each with its ``step``."""

    def __init__(self, run: str | Path):
        self.path = Path(run) / METRICS_FILE

    def read(self) -> list[dict]:
        """The records; a line cut short by a kill (or otherwise not a record) is left out."""
        records = []
        for line in self.path.read_text(errors="replace").splitlines() if self.path.is_file() else []:
            with contextlib.suppress(json.JSONDecodeError):
                record = json.loads(line)
                if isinstance(record, dict) and isinstance(record.get("step"), int):
                    records.append(record)
        return records

    def append(self, record: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def keep_through(self, step: int) -> None:
        """Drop the records after ``step``: a run resuming from its checkpoint of ``step`` redoes
        them (-1: a run starting afresh keeps none)."""
        if not self.path.exists():
            return
        kept = "".join(json.dumps(r) + "\n" for r in self.read() if r["step"] <= step)
        atomic_write(self.path, lambda f: f.write(kept.encode()))
