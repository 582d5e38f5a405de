import numpy as np
import pytest
import torch

from ltdistill.artifact import DistilledSet, export_imagefolder, load_set, save_set
from ltdistill.data.sources import read_folder_split
from ltdistill.errors import ArtifactError
from ltdistill.methods import distill, make_config


@pytest.fixture
def small_set(digits_lt):
    return distill(make_config("random", ipc=3, seed=1), digits_lt)


def test_round_trip_weights_only(tmp_path, small_set):
    path = save_set(small_set, tmp_path / "s.pt")
    raw = torch.load(path, weights_only=True)
    assert raw["format_version"] == 1 and raw["method"] == "random"
    assert raw["dataset"]["class_counts"] == small_set.dataset["class_counts"]
    assert raw["dataset"]["split_seed"] == 42 and raw["seed"] == 1
    assert raw["library_version"] and raw["config"]["ipc"] == 3
    back = load_set(path)
    assert torch.equal(back.images, small_set.images) and torch.equal(back.labels, small_set.labels)
    assert back.class_names == small_set.class_names and back.mean == small_set.mean
    assert (tmp_path / "s.png").is_file()


def test_soft_labels_round_trip(tmp_path, small_set):
    small_set.soft_labels = torch.softmax(torch.randn(len(small_set.labels), 10), 1)
    back = load_set(save_set(small_set, tmp_path / "soft.pt"))
    assert torch.allclose(back.soft_labels, small_set.soft_labels)


def test_unknown_format_version(tmp_path, small_set):
    d = small_set.to_dict()
    d["format_version"] = 99
    torch.save(d, tmp_path / "v99.pt")
    with pytest.raises(ArtifactError, match="format version 99"):
        load_set(tmp_path / "v99.pt")


def test_not_an_artifact(tmp_path):
    torch.save({"hello": 1}, tmp_path / "x.pt")
    with pytest.raises(ArtifactError, match="not an ltdistill distilled set"):
        load_set(tmp_path / "x.pt")
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(ArtifactError, match="cannot read"):
        load_set(tmp_path / "junk.pt")
    with pytest.raises(ArtifactError, match="no distilled set"):
        load_set(tmp_path / "missing.pt")


def test_export_imagefolder_matches_pixels(tmp_path, small_set):
    out = export_imagefolder(small_set, tmp_path / "exp")
    dirs = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert dirs[0] == "000_0" and len(dirs) == 10
    # the export is itself a valid ImageFolder tree for our reader
    (out / "train").mkdir()
    for d in dirs:
        (out / d).rename(out / "train" / d)
    raw = read_folder_split(out / "train", out, shape=None)
    expect = (small_set.denormalized() * 255 + 0.5).to(torch.uint8)
    order = torch.argsort(small_set.labels, stable=True)
    got = torch.from_numpy(np.ascontiguousarray(raw.images)).permute(0, 3, 1, 2)[:, :1]
    assert torch.equal(got, expect[order])


def test_validate_rejects_mismatch(small_set):
    bad = DistilledSet(**{**small_set.__dict__, "labels": small_set.labels[:-1]})
    with pytest.raises(ArtifactError, match="do not match"):
        bad.validate()
