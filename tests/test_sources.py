"""The three on-disk forms read identically; bad files give clear errors."""

import dataclasses

import numpy as np
import pytest
import torch

from ltdistill.data import load_lt_data, sources
from ltdistill.data.sources import load_raw_split
from ltdistill.errors import DataError
from tests.helpers import (
    fake_images,
    write_cifar10_pickle,
    write_cifar100_pickle,
    write_folder,
    write_tar,
)

NAMES = ["zeta", "alpha", "mid"]  # deliberately not sorted: order must come from classes.txt


def _sorted_by_label(raw):
    order = np.lexsort((np.arange(len(raw.labels)), raw.labels))
    return raw.images[order], raw.labels[order]


def test_three_forms_agree(tmp_path):
    x, y = fake_images(4, 3)
    write_folder(tmp_path / "f", "train", x, y, NAMES)
    write_tar(tmp_path / "t", "train", x, y, NAMES)
    a = load_raw_split(tmp_path / "f", "train", 3, use_cache=False)
    b = load_raw_split(tmp_path / "t", "train", 3, use_cache=False)
    assert a.class_names == b.class_names == NAMES
    assert a.class_order == "classes-file"
    for raw in (a, b):
        xi, yi = _sorted_by_label(raw)
        assert np.array_equal(xi, x) and np.array_equal(yi, y)


def test_sorted_names_without_classes_file(tmp_path):
    x, y = fake_images(2, 3)
    write_tar(tmp_path, "train", x, y, NAMES, classes_file=False)
    raw = load_raw_split(tmp_path, "train", 3, use_cache=False)
    assert raw.class_names == sorted(NAMES) and raw.class_order == "sorted-folders"


def test_cifar10_pickle_folder(tmp_path):
    names = [f"c{i}" for i in range(10)]
    x, y = fake_images(5, 10)
    xt, yt = fake_images(2, 10, seed=1)
    write_cifar10_pickle(tmp_path, x, y, xt, yt, names)
    for root in (tmp_path, tmp_path / "cifar-10-batches-py"):
        tr = load_raw_split(root, "train", 10)
        te = load_raw_split(root, "test", 10)
        assert np.array_equal(tr.images, x) and np.array_equal(tr.labels, y)
        assert np.array_equal(te.images, xt) and tr.class_names == names


def test_cifar100_pickle_folder_and_lt_split(tmp_path, monkeypatch):
    from ltdistill.data import datasets

    names = [f"f{i:02d}" for i in range(100)]
    x, y = fake_images(6, 100)
    xt, yt = fake_images(1, 100, seed=2)
    write_cifar100_pickle(tmp_path, x, y, xt, yt, names)
    raw = load_raw_split(tmp_path, "train", 100)
    assert np.array_equal(raw.images, x) and raw.class_names == names
    # A 6-per-class stand-in for CIFAR-100 so the LT split can run on the tiny file.
    info = datasets.DATASETS.get("cifar100")
    monkeypatch.setitem(datasets.DATASETS._items, "cifar100", dataclasses.replace(info, n_per_class=6))
    data = load_lt_data("cifar100", tmp_path, imbalance=6)
    assert data.class_counts[0] == 6 and data.class_counts[-1] == 1
    assert len(data.train) == sum(data.class_counts) and len(data.test) == 100


def test_subset_copy_loads_only_at_its_own_imbalance(tmp_path, monkeypatch):
    """A copy holding one LT split (as lt_subset_tar.py writes) gives that split at its own
    factor; at another factor it would silently give a different split, so it is refused."""
    from ltdistill.data import datasets, longtail_counts, longtail_indices

    names = [f"c{i}" for i in range(10)]
    info = datasets.DATASETS.get("cifar10")
    monkeypatch.setitem(datasets.DATASETS._items, "cifar10", dataclasses.replace(info, n_per_class=8))
    x, y = fake_images(8, 10)
    xt, yt = fake_images(1, 10, seed=2)
    keep = longtail_indices(y, 10, 4, 8)  # the IF-4 split of the full (8 a class) copy
    full, sub = tmp_path / "full", tmp_path / "sub"
    for root, (a, b) in ((full, (x, y)), (sub, (x[keep], y[keep]))):
        write_tar(root, "train", a, b, names)
        write_tar(root, "test", xt, yt, names)
    ref = load_lt_data("cifar10", full, imbalance=4)
    got = load_lt_data("cifar10", sub, imbalance=4)
    assert got.class_counts == longtail_counts(8, 10, 4)
    assert torch.equal(got.train.images, ref.train.images) and torch.equal(got.train.labels, ref.train.labels)
    with pytest.raises(DataError, match=r"imbalance 2 .*imbalance 4 \(a subset copy.*use the full copy"):
        load_lt_data("cifar10", sub, imbalance=2)
    unused = np.setdiff1d(np.flatnonzero(y == 9), keep)[0]  # the IF-4 split keeps 2 of class 9's 8
    extra = np.sort(np.append(keep, unused))  # one image more than the split: no factor fits
    write_tar(sub, "train", x[extra], y[extra], names)
    with pytest.raises(DataError, match=r"not the 8 per class") as e:
        load_lt_data("cifar10", sub, imbalance=4)
    assert "subset copy" not in str(e.value)
    write_tar(sub, "train", x[keep][:-1], y[keep][:-1], names)  # a class short of the split: that class is named
    with pytest.raises(DataError, match=r"class 'c9' has 1 training images but the long-tailed split"):
        load_lt_data("cifar10", sub, imbalance=4)


def test_cache_makes_second_load_skip_decoding(tmp_path, monkeypatch):
    x, y = fake_images(3, 3)
    write_tar(tmp_path, "train", x, y, NAMES)
    first = load_raw_split(tmp_path, "train", 3)

    def boom(*a, **k):
        raise AssertionError("decoded again despite the cache")

    monkeypatch.setattr(sources, "read_tar_split", boom)
    second = load_raw_split(tmp_path, "train", 3)
    assert np.array_equal(first.images, second.images) and first.class_names == second.class_names


def test_missing_root():
    with pytest.raises(DataError, match="does not exist"):
        load_raw_split("/nonexistent/cifar", "train", 10)


def test_root_without_data(tmp_path):
    with pytest.raises(DataError, match="no train split"):
        load_raw_split(tmp_path, "train", 10)


def test_corrupt_image(tmp_path):
    x, y = fake_images(2, 3)
    split = write_folder(tmp_path, "train", x, y, NAMES)
    bad = split / "alpha" / "bad.png"
    bad.write_bytes(b"not an image at all")
    with pytest.raises(DataError, match="corrupt or truncated image .*bad.png"):
        load_raw_split(tmp_path, "train", 3, use_cache=False)


def test_truncated_image(tmp_path):
    x, y = fake_images(2, 3)
    split = write_folder(tmp_path, "train", x, y, NAMES)
    p = next((split / "mid").iterdir())
    p.write_bytes(p.read_bytes()[:60])
    with pytest.raises(DataError, match="corrupt or truncated image"):
        load_raw_split(tmp_path, "train", 3, use_cache=False)


def test_truncated_tar(tmp_path):
    x, y = fake_images(3, 3)
    path = write_tar(tmp_path, "train", x, y, NAMES)
    data = path.read_bytes()
    import tarfile

    with tarfile.open(path) as tf:
        last = tf.getmembers()[-1]
    # cut inside the middle, inside the last member's data, and inside its header
    for cut in (len(data) // 2, last.offset_data + 10, last.offset + 100):
        path.write_bytes(data[:cut])
        with pytest.raises(DataError, match="truncated tar|cannot read tar|corrupt or truncated"):
            load_raw_split(tmp_path, "train", 3, use_cache=False)


def test_unknown_class_folder(tmp_path):
    x, y = fake_images(2, 3)
    write_folder(tmp_path, "train", x, y, NAMES)
    (tmp_path / "classes.txt").write_text("zeta\nalpha\n")
    with pytest.raises(DataError, match=r"unknown class folder\(s\) \['mid'\]"):
        load_raw_split(tmp_path, "train", 3, use_cache=False)


def test_classes_file_disagrees(tmp_path):
    x, y = fake_images(2, 3)
    write_tar(tmp_path, "train", x, y, NAMES)
    (tmp_path / "classes.txt").write_text("zeta\nalpha\nmid\nghost\n")
    with pytest.raises(DataError, match="disagrees .*ghost"):
        load_raw_split(tmp_path, "train", 3, use_cache=False)


def test_wrong_image_size(tmp_path):
    x, y = fake_images(2, 3, size=16)
    write_folder(tmp_path, "train", x, y, NAMES)
    with pytest.raises(DataError, match="expected \\(32, 32, 3\\)"):
        load_raw_split(tmp_path, "train", 3, use_cache=False)


def test_wrong_class_count_for_dataset(tmp_path):
    x, y = fake_images(2, 3)
    write_tar(tmp_path, "train", x, y, NAMES)
    write_tar(tmp_path, "test", x, y, NAMES)
    with pytest.raises(DataError, match="expects 10 classes"):
        load_lt_data("cifar10", tmp_path, imbalance=1)


def test_corrupt_pickle(tmp_path):
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    (d / "batches.meta").write_bytes(b"garbage")
    with pytest.raises(DataError, match="missing CIFAR pickle file|corrupt CIFAR pickle"):
        load_raw_split(tmp_path, "train", 10)
