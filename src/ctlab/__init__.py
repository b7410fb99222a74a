"""ctlab: make and study small Chinese-centric language models, from raw web data onwards."""

__version__ = "0.1.0"
