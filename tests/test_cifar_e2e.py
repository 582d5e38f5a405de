"""End to end on the real offline CIFAR-10 copy (skipped when it is absent)."""

import json

import pytest

from ltdistill.cli import main
from ltdistill.data import load_lt_data

pytestmark = pytest.mark.slow


def test_real_cifar10_lt_split(cifar10_root):
    d = load_lt_data("cifar10", cifar10_root, imbalance=100)
    assert d.class_names[:3] == ["airplane", "automobile", "bird"]
    assert d.meta["class_order"] == "classes-file"
    assert d.class_counts == [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
    assert len(d.train) == 12406 and len(d.test) == 10000
    assert tuple(d.train.images.shape[1:]) == (3, 32, 32)
    x = d.normalize(d.test.images[::5])  # balanced over classes
    assert abs(float(x.mean())) < 0.2  # the SPEC's CIFAR-10 normalisation centres the data


def test_distill_random_then_evaluate(cifar10_root, tmp_path, capsys):
    s = tmp_path / "set.pt"
    assert main(["distill", "--dataset", "cifar10", "--data-root", str(cifar10_root), "--imbalance", "100",
                 "--ipc", "10", "--method", "random", "--seed", "0", "--out", str(s), "--quiet"]) == 0
    j = tmp_path / "r.json"
    assert main(["evaluate", str(s), "--data-root", str(cifar10_root), "--epochs", "20", "--runs", "1",
                 "--json", str(j), "--quiet"]) == 0
    r = json.loads(j.read_text())
    assert r["dataset"]["class_counts"][-1] == 50
    assert r["acc_mean"] > 15  # chance is 10 %; 100 real images and 20 epochs reach ~20-25 %
