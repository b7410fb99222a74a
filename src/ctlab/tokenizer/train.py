"""Train a byte-level BPE tokenizer for a Chinese-centric corpus, saved in Hugging Face format.

Why byte-level: every string, whatever its script, emoji or control characters, encodes to
tokens and decodes back exactly, with no unknown token. Why a custom pre-tokenisation:
runs of Han characters are kept whole (BPE can then learn multi-character words, which is
where Chinese compression comes from) and apart from Latin letters, digits are split one by
one (numbers stay arithmetic-friendly), punctuation and whitespace follow the usual GPT-style
rules. No normaliser runs, so decoding gives back the exact input (stage 1 already normalised
the corpus).

The saved folder loads with ``transformers.AutoTokenizer.from_pretrained``; it holds the BOS,
EOS and PAD tokens, chat-role tokens and a chat template whose assistant turns are marked for
``return_assistant_tokens_mask`` (used by fine-tuning).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from tqdm import tqdm

from ctlab.data.readers import BadRecord, CorpusReader, corpus_files
from ctlab.errors import UserError
from ctlab.runs import file_digest
from ctlab.tokenizer.load import TOKENIZER_FILES

BOS, EOS, PAD = "<|bos|>", "<|endoftext|>", "<|pad|>"
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>")
SPECIAL_TOKENS = (BOS, EOS, PAD, *ROLE_TOKENS)

# Han runs whole and apart from other letters; single digits; GPT-style punctuation and spaces
PRETOKENIZE_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|\p{Han}+|[^\r\n\p{L}\p{N}]?[^\P{L}\p{Han}]+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "<|assistant|>\n{% generation %}{{ message['content'] }}<|end|>{% endgeneration %}{{ '\\n' }}"
    "{% else %}"
    "{{ '<|' + message['role'] + '|>' }}\n{{ message['content'] }}<|end|>\n"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
MIN_VOCAB = 256 + len(SPECIAL_TOKENS)


def untrained_tokenizer() -> Tokenizer:
    """An empty byte-level BPE with ctlab's pre-tokenisation, decoder and BOS post-processor."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def train_tokenizer(texts: Iterable[str], vocab_size: int, min_frequency: int = 2, progress: bool = True) -> Tokenizer:
    """Byte-level BPE trained on ``texts``: 256 byte tokens, the special tokens, then merges up
    to ``vocab_size`` in all. Deterministic for the same texts in the same order."""
    if min_frequency < 0:
        raise UserError("--min-frequency must be at least 0")
    if vocab_size < MIN_VOCAB:
        raise UserError(f"--vocab-size must be at least {MIN_VOCAB} (256 bytes + {len(SPECIAL_TOKENS)} special)")
    tokenizer = untrained_tokenizer()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=progress and sys.stderr.isatty(),  # its bars print blank lines elsewhere
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    bos = tokenizer.token_to_id(BOS)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos)]
    )
    return tokenizer


def check_output_folder(out_dir: str) -> Path:
    """The absolute ``out_dir`` if a tokenizer may be written there: absent, empty, or holding
    only tokenizer files (which are replaced); anything else is refused (:class:`UserError`)."""
    out = Path(out_dir).absolute()
    if out.exists():
        if not out.is_dir():
            raise UserError(f"{out_dir} is a file: choose another --out")
        others = sorted(p.name for p in out.iterdir() if p.name not in TOKENIZER_FILES | {"training.json"})
        if others:
            raise UserError(f"{out_dir} holds other files ({', '.join(others[:3])}): choose another --out")
    elif not os.access(next(p for p in out.parents if p.exists()), os.W_OK):
        raise UserError(f"cannot create {out_dir}: permission denied")
    return out


def save_tokenizer(tokenizer: Tokenizer, out_dir: str, training: dict | None = None) -> None:
    """Write ``out_dir`` in Hugging Face format (tokenizer.json, tokenizer_config.json, chat
    template) plus ``training.json``; the folder appears complete or not at all. An existing
    tokenizer folder is replaced; any other non-empty folder is refused (:class:`UserError`)."""
    from transformers import PreTrainedTokenizerFast

    hf = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        extra_special_tokens=list(ROLE_TOKENS),
        chat_template=CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False,
    )
    out = check_output_folder(out_dir)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    except OSError as err:
        raise UserError(f"cannot write {out_dir}: {err.strerror or err}") from None
    try:
        hf.save_pretrained(staging)
        config_path = staging / "tokenizer_config.json"
        config = json.loads(config_path.read_text())
        # the names transformers 4.x, vLLM and lm-eval read too
        config["tokenizer_class"] = "PreTrainedTokenizerFast"
        config["additional_special_tokens"] = config.pop("extra_special_tokens", list(ROLE_TOKENS))
        config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
        if training is not None:
            (staging / "training.json").write_text(json.dumps(training, indent=2, ensure_ascii=False) + "\n")
        if out.exists():
            shutil.rmtree(out)
        os.replace(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


class CorpusTexts:
    """The texts of corpus files (JSONL, Parquet, WARC; a ``ctlab data clean`` folder stands for
    its clean output), counting documents, characters and bad records as it goes."""

    def __init__(self, paths: list[str], text_key: str = "text", progress: bool = True):
        self.files = corpus_files(paths)
        self.reader = CorpusReader(self.files, text_key=text_key, progress=False)
        self.progress = progress
        self.documents = 0
        self.characters = 0
        self.bad_records: dict[str, int] = {}

    def __iter__(self) -> Iterator[str]:
        total = sum(os.path.getsize(f) for f in self.files)
        with tqdm(total=total, unit="B", unit_scale=True, desc="read corpus", disable=not self.progress) as bar:
            for path in self.files:
                for item in self.reader.read_file(path, bar):
                    if isinstance(item, BadRecord):
                        self.bad_records[item.kind] = self.bad_records.get(item.kind, 0) + 1
                        continue
                    self.documents += 1
                    self.characters += len(item.text)
                    yield item.text


def train(
    corpus: list[str],
    out_dir: str,
    vocab_size: int,
    min_frequency: int = 2,
    progress: bool = True,
    text_key: str = "text",
) -> dict:
    """Train on the documents of ``corpus`` and save to ``out_dir``; returns the training summary."""
    check_output_folder(out_dir)  # before hours of training, not after
    texts = CorpusTexts(corpus, text_key=text_key, progress=progress)
    if not texts.files:
        raise UserError("no input files found in " + ", ".join(corpus))
    started = time.perf_counter()
    tokenizer = train_tokenizer(texts, vocab_size, min_frequency, progress)
    seconds = time.perf_counter() - started
    if texts.documents == 0:
        raise UserError("the corpus holds no documents")
    summary = {
        "vocab_size": tokenizer.get_vocab_size(),
        "requested_vocab_size": vocab_size,
        "min_frequency": min_frequency,
        "files": texts.files,
        "documents": texts.documents,
        "characters": texts.characters,
        "bad_records": texts.bad_records,
        "seconds": round(seconds, 2),
    }
    save_tokenizer(tokenizer, out_dir, summary)
    summary["tokenizer_sha256"] = file_digest(Path(out_dir, "tokenizer.json"))
    return summary
