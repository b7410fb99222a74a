"""Stage 1: raw web data → clean Chinese corpus, as datatrove pipelines (see ``clean.py``)."""
