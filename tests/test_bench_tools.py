"""The benchmark's bookkeeping: the tuned settings are exactly what the stored
coordinate search chose, and an unfinished search is refused."""

from __future__ import annotations

import importlib
import json
import sys

import pytest

from .conftest import REPO


@pytest.fixture(scope="module")
def tune():
    sys.path.insert(0, str(REPO / "bench"))
    try:
        yield importlib.import_module("tune")
    finally:
        sys.path.remove(str(REPO / "bench"))


def _write(path, method, scores):
    """One stored trial per (point, score); points as bench/tune.py records them."""
    with open(path, "w") as f:
        for point, score in scores:
            f.write(json.dumps({"method": method, "protocol": "tune-v1", "seed": 0, "point": point,
                                "val_balanced_acc": score}) + "\n")


def test_best_overrides_replays_the_coordinate_search(tune, tmp_path, monkeypatch):
    monkeypatch.setitem(tune.SEARCH, "toy", [("lr_img", [10, 3, 30]), ("sigma", [1.0, 2.0])])
    f = tmp_path / "tuning.jsonl"
    _write(f, "toy", [
        ({"lr_img": 10, "sigma": 1.0}, 40.0),
        ({"lr_img": 3, "sigma": 1.0}, 41.0),   # best lr
        ({"lr_img": 30, "sigma": 1.0}, 39.0),
        ({"lr_img": 3, "sigma": 2.0}, 40.5),   # worse: sigma stays 1.0
        ({"lr_img": 30, "sigma": 2.0}, 99.0),  # never on the search path: must not be picked
    ])
    assert tune.best_overrides("toy", results=f) == ["lr_img=3", "sigma=1.0"]


def test_ties_keep_the_default_value(tune, tmp_path, monkeypatch):
    monkeypatch.setitem(tune.SEARCH, "toy", [("lr_img", [10, 3])])
    f = tmp_path / "tuning.jsonl"
    _write(f, "toy", [({"lr_img": 10}, 40.0), ({"lr_img": 3}, 40.0)])
    assert tune.best_overrides("toy", results=f) == ["lr_img=10"]


def test_unfinished_or_unknown_search_is_refused(tune, tmp_path, monkeypatch):
    monkeypatch.setitem(tune.SEARCH, "toy", [("lr_img", [10, 3]), ("sigma", [1.0, 2.0])])
    f = tmp_path / "tuning.jsonl"
    _write(f, "toy", [({"lr_img": 10, "sigma": 1.0}, 40.0), ({"lr_img": 3, "sigma": 1.0}, 41.0)])
    with pytest.raises(SystemExit, match="has not finished"):
        tune.best_overrides("toy", results=f)
    with pytest.raises(SystemExit, match="no tuning search"):
        tune.best_overrides("no-such-method", results=f)
