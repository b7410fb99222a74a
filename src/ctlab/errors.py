"""The one exception type for mistakes a user can make.

Every stage raises :class:`UserError` (or a subclass) for bad input: a missing or damaged file,
an invalid setting, an output folder that holds something else. The ``ctlab`` command catches
this type alone and prints its message as one line with exit status 2; anything else that
escapes a command is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """A mistake in what the user asked for or gave: its message is the whole explanation."""
