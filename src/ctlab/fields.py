"""Config dataclasses read from files and command lines refuse names they do not have."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable


def reject_unknown(config_class: type, names: Iterable[str], what: str) -> None:
    """ValueError naming every entry of ``names`` that is not a field of ``config_class``."""
    unknown = sorted(set(names) - {f.name for f in dataclasses.fields(config_class)})
    if unknown:
        raise ValueError(f"unknown {what} field(s): {', '.join(unknown)}")
