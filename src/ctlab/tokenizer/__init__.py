"""Stage 2: byte-level BPE tokenizers for Chinese-centric corpora, and how they compare."""
