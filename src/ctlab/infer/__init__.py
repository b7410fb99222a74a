"""Inference: the engine on token ids, KV-cache policies, sampling, and the text commands."""
