"""Files that appear complete or not at all: every output is written to a temporary name in
its folder, then renamed into place, so a killed run never leaves a half-written file behind."""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import numpy as np


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


def write_json(path: str | Path, data: Any) -> None:
    atomic_write(path, lambda f: f.write(json.dumps(data, indent=1, ensure_ascii=False).encode() + b"\n"))


def save_npy(path: str | Path, array: np.ndarray) -> None:
    atomic_write(path, lambda f: np.save(f, array))
