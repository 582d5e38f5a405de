"""Shared fixtures. Tests run on CPU and never touch the network."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
CIFAR10 = Path(os.environ.get("LTDISTILL_CIFAR10", REPO.parent / "shared" / "datasets" / "cifar10"))


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """A per-session decode cache, so tests never read (or write) the user's cache."""
    old = os.environ.get("LTDISTILL_CACHE")
    os.environ["LTDISTILL_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    yield
    if old is None:
        os.environ.pop("LTDISTILL_CACHE", None)
    else:
        os.environ["LTDISTILL_CACHE"] = old


@pytest.fixture(scope="session")
def cifar10_root() -> Path:
    if not (CIFAR10 / "train.tar").is_file():
        pytest.skip(f"offline CIFAR-10 copy not found at {CIFAR10} (set LTDISTILL_CIFAR10)")
    return CIFAR10


@pytest.fixture(scope="session")
def digits_lt():
    from ltdistill.data import load_lt_data

    return load_lt_data("digits", imbalance=10)
