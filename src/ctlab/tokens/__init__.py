"""Stage 3: token shards, source mixing, best-fit packing and the training loader."""
