"""Stage 7: evaluation (early-exit perplexity so far)."""
