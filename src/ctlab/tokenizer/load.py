"""Reading a ``tokenizer.json`` the way every stage uses it: text is always ordinary text.

A special token's surface form inside a document (``<|endoftext|>`` in a web page) encodes as
the characters it is made of, never as the special id, wherever ctlab tokenises, counts or
scores text. A file that is not a tokenizer is a user's mistake, said in one line.
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer

from ctlab.errors import UserError

# the files a Hugging Face tokenizer is made of (a model folder also holds weights and config.json)
TOKENIZER_FILES = frozenset(
    {
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "chat_template.jinja",
        "chat_template.json",
        "added_tokens.json",
        "vocab.json",
        "merges.txt",
        "tokenizer.model",
    }
)


def read_tokenizer(path: str | Path) -> Tokenizer:
    """The tokenizer of a ``tokenizer.json``, encoding special-token look-alikes as text."""
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as err:  # the Rust library raises a bare Exception for a bad file
        raise UserError(f"{path} is not a valid tokenizer ({err})") from None
    tokenizer.encode_special_tokens = True
    return tokenizer
