"""Bring your own data: an image folder (naturally long-tailed, any size, some greyscale),
tensors from Python, custom networks, and every bad input as one clear line."""

from __future__ import annotations

import io
import json
import tarfile
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

import ltdistill as ld
from ltdistill.cli import main
from ltdistill.errors import ConfigError, DataError

COUNTS = [24, 16, 11, 8, 6, 4, 3]  # naturally long-tailed, not SPEC §1's rule
GREY = (2, 5)  # two classes stored as greyscale PNGs


def _image(rng, c: int, size: int = 48, grey: bool = False) -> Image.Image:
    a = rng.randint(0, 120, (size, size, 3)).astype(np.uint8)
    a[..., c % 3] += 100 + 15 * (c // 3)  # a class-dependent colour, so the classes are learnable
    im = Image.fromarray(a)
    return im.convert("L") if grey else im


def make_folder(root, counts=COUNTS, test_per_class: int = 3, size: int = 48, seed: int = 0):
    rng = np.random.RandomState(seed)
    for split, cnts in (("train", counts), ("test", [test_per_class] * len(counts))):
        for c, n in enumerate(cnts):
            d = root / split / f"c{c}"
            d.mkdir(parents=True)
            for i in range(n):
                _image(rng, c, size, c in GREY).save(d / f"{i:03d}.png")
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_folder(tmp_path_factory.mktemp("own") / "data")


def run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_load_keeps_the_data_as_it_is(folder):
    data = ld.load_lt_data("imagefolder", folder)
    assert data.class_counts == COUNTS and data.class_names == [f"c{i}" for i in range(7)]
    assert data.info.image_size == 48 and data.info.channels == 3  # greyscale classes converted
    assert data.meta["greyscale_converted"] == sum(COUNTS[c] for c in GREY)
    assert data.imbalance == pytest.approx(8.0) and data.meta["imposed_imbalance"] is None
    x = data.train.images.double() / 255
    assert data.info.mean == pytest.approx(tuple(x.mean((0, 2, 3)).tolist()), abs=1e-5)
    assert data.groups() == {"head": [0, 1], "medium": [2, 3, 4], "tail": [5, 6]}  # thirds by count


def test_imposed_split_and_resize(folder):
    data = ld.load_lt_data("imagefolder", folder, imbalance=4, image_size=32, n_per_class=12)
    assert data.class_counts == ld.data.longtail_counts(12, 7, 4) == [12, 9, 7, 6, 4, 3, 3]
    assert data.info.image_size == 32 and data.meta["imposed_imbalance"] == 4
    with pytest.raises(DataError, match="needs 21"):
        ld.load_lt_data("imagefolder", folder, imbalance=2, n_per_class=24)


def test_cli_info_distill_evaluate_end_to_end(folder, tmp_path, capsys):
    png = tmp_path / "counts.png"
    code, out, _ = run(capsys, "info", "--dataset", "imagefolder", "--data-root", str(folder), "--plot", str(png))
    assert code == 0 and "7 classes, 72 training and 21 test images, 48x48 px" in out
    assert "imbalance factor (largest / smallest class): 8 (as it is)" in out and Image.open(png).format == "PNG"
    for m in ("random", "dm", "csdm"):
        extra = [] if m == "random" else ["-s", "iterations=3", "-s", "batch_real=8"]
        code, out, _ = run(capsys, "distill", "--dataset", "imagefolder", "--data-root", str(folder), "--ipc", "2",
                           "--method", m, *extra, "--out", str(tmp_path / f"{m}.pt"), "--quiet", "-s", "device=cpu")
        assert code == 0 and f"class counts {COUNTS}" in out
        s = ld.load_set(tmp_path / f"{m}.pt")
        assert s.images.shape == (14, 3, 48, 48) and s.dataset["name"] == "imagefolder"
    # evaluate finds the data root in the set's config when --data-root is not given
    code, out, _ = run(capsys, "evaluate", str(tmp_path / "csdm.pt"), "--epochs", "2", "--runs", "1", "--quiet",
                       "--json", str(tmp_path / "r.json"))
    assert code == 0
    r = json.loads((tmp_path / "r.json").read_text())
    assert r["group_classes"] == {"head": [0, 1], "medium": [2, 3, 4], "tail": [5, 6]}
    assert r["dataset"]["class_counts"] == COUNTS and len(r["per_class"]) == 7


def test_tar_form_and_val_folder(tmp_path):
    src = make_folder(tmp_path / "src", counts=[5, 3], test_per_class=2)
    root = tmp_path / "tars"
    root.mkdir()
    with tarfile.open(root / "train.tar", "w") as tf:
        tf.add(src / "train" / "c0", arcname="c0")
        tf.add(src / "train" / "c1", arcname="c1")
    (src / "test").rename(root / "val")
    data = ld.load_lt_data("imagefolder", root)
    assert data.class_counts == [5, 3] and len(data.test) == 4


def test_from_tensors_everywhere(tmp_path):
    g = torch.Generator().manual_seed(0)
    ytr = torch.tensor([0] * 12 + [1] * 6 + [2] * 3)
    xtr = torch.rand(len(ytr), 3, 16, 16, generator=g) * 0.5 + 0.4 * torch.nn.functional.one_hot(ytr, 3).float()[
        :, :, None, None]
    yte = torch.arange(3).repeat_interleave(4)
    xte = torch.rand(12, 3, 16, 16, generator=g) * 0.5 + 0.4 * torch.nn.functional.one_hot(yte, 3).float()[
        :, :, None, None]
    data = ld.LTData.from_tensors(xtr, ytr, (xte * 255).round().to(torch.uint8), yte, class_names=["a", "b", "c"])
    assert data.class_counts == [12, 6, 3] and data.info.image_size == 16 and data.imbalance == 4
    for m in ("random", "dm", "csdm"):
        cfg = ld.make_config(m, ipc=2, device="cpu")
        if m != "random":
            cfg = ld.config.apply_overrides(cfg, ["iterations=2", "batch_real=4"])
        s = ld.distill(cfg, data)
        assert s.images.shape == (6, 3, 16, 16) and s.dataset["name"] == "tensors"
    res = ld.evaluate_set(s, data, ld.EvalConfig(epochs=2, runs=1, device="cpu"))
    assert len(res.per_class_mean) == 3
    from ltdistill.teacher import label_set, train_teacher

    t = train_teacher(data, ld.EvalConfig(epochs=1, runs=1, device="cpu"))
    assert label_set(s, t).soft_labels.shape == (6, 3)
    with pytest.raises(DataError, match="must lie in \\[0, 1\\]"):
        ld.LTData.from_tensors(xtr * 3, ytr, xte, yte)
    with pytest.raises(DataError, match="H == W"):
        ld.LTData.from_tensors(xtr[..., :8], ytr, xte, yte)


def test_a_user_defined_net(digits_lt, tmp_path):
    from torch import nn

    @ld.register_net("tiny_mlp_test")
    class TinyMLP(nn.Module):
        def __init__(self, channels, num_classes, image_size=32, hidden=32):
            super().__init__()
            self.feature_dim = hidden
            self.body = nn.Sequential(nn.Flatten(), nn.Linear(channels * image_size**2, hidden), nn.ReLU())
            self.classifier = nn.Linear(hidden, num_classes)

        def embed(self, x):
            return self.body(x)

        def forward(self, x):
            return self.classifier(self.embed(x))

    cfg = ld.config.apply_overrides(ld.make_config("dm", ipc=2, device="cpu"),
                                    ["iterations=3", "batch_real=8", "net=tiny_mlp_test"])
    s = ld.distill(cfg, digits_lt)
    res = ld.evaluate_set(s, digits_lt, ld.EvalConfig(net="tiny_mlp_test", epochs=3, runs=1, device="cpu"))
    assert 0 <= res.acc_mean <= 100 and s.config["options"]["net"] == "tiny_mlp_test"

    @ld.register_net("broken_net_test")
    def broken(channels, num_classes, image_size=32):
        return nn.Linear(2, 2)

    with pytest.raises(ConfigError, match="lacks embed, feature_dim, classifier"):
        ld.create_net("broken_net_test", 3, 10, 32)


@pytest.mark.parametrize("size", [32, 64, 128])
def test_every_net_works_from_32_to_128_px(size):
    depth = {32: 3, 64: 4, 128: 5}[size]
    for name in ld.list_nets():
        if name.endswith("_test"):
            continue
        net = ld.create_net(name, 3, 5, size)
        out = net(torch.rand(2, 3, size, size))
        assert out.shape == (2, 5), name
        if name == "convnet":
            assert sum(isinstance(m, torch.nn.Conv2d) for m in net.modules()) == depth


def test_dsa_and_spectral_losses_at_64px():
    from ltdistill.augment import DSAConfig, apply_dsa, sample_dsa

    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 3, 64, 64)
    p = sample_dsa(1, 64, g, DSAConfig(), siamese=True)
    assert apply_dsa(x, p).shape == x.shape


# ----------------------------------------------------------------------------- bad input
def _bad(capsys, root, *extra):
    code, out, err = run(capsys, "info", "--dataset", "imagefolder", "--data-root", str(root), "--plot",
                         str(root.parent / "x.png"), *extra)
    assert code == 2 and err.startswith("ltdistill: error: ") and "Traceback" not in err, err
    return err


def test_empty_class_folder(tmp_path, capsys):
    root = make_folder(tmp_path / "d", counts=[3, 2], test_per_class=1)
    (root / "train" / "c2").mkdir()
    (root / "test" / "c2").mkdir()
    err = _bad(capsys, root)
    assert "['c2']" in err and "hold no images" in err


def test_test_class_not_in_training(tmp_path, capsys):
    root = make_folder(tmp_path / "d", counts=[3, 2], test_per_class=1)
    (root / "test" / "c1").rename(root / "test" / "zebra")
    assert "test class(es) ['zebra']" in _bad(capsys, root)


def test_mixed_sizes_need_image_size(tmp_path, capsys):
    root = make_folder(tmp_path / "d", counts=[3, 2], test_per_class=1)
    _image(np.random.RandomState(1), 0, 40).save(root / "train" / "c0" / "big.png")
    err = _bad(capsys, root)
    assert "different sizes" in err and "--image-size" in err
    data = ld.load_lt_data("imagefolder", root, image_size=24)
    assert data.info.image_size == 24 and data.class_counts == [4, 2]


def test_non_image_files_are_skipped_with_one_warning(tmp_path):
    root = make_folder(tmp_path / "d", counts=[3, 2], test_per_class=1)
    (root / "train" / "c0" / "notes.txt").write_text("not an image")
    (root / "train" / "c1" / ".DS_Store").write_bytes(b"\0")
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        data = ld.load_lt_data("imagefolder", root)
    msgs = [str(x.message) for x in w if "not images" in str(x.message)]
    assert len(msgs) == 1 and "c0/notes.txt" in msgs[0] and "2 file(s)" in msgs[0]
    assert data.class_counts == [3, 2]


def test_unreadable_image(tmp_path, capsys):
    root = make_folder(tmp_path / "d", counts=[3, 2], test_per_class=1)
    (root / "train" / "c1" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    err = _bad(capsys, root)
    assert "corrupt or truncated image" in err and "bad.png" in err


def test_single_class(tmp_path, capsys):
    root = make_folder(tmp_path / "d", counts=[3], test_per_class=1)
    assert "at least two classes" in _bad(capsys, root)


def test_missing_splits_and_root(tmp_path, capsys):
    assert "does not exist" in _bad(capsys, tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    assert "no train split" in _bad(capsys, tmp_path / "empty")


def test_png_bytes_in_a_tar_that_is_cut(tmp_path, capsys):
    src = make_folder(tmp_path / "src", counts=[3, 2], test_per_class=1)
    root = tmp_path / "t"
    root.mkdir()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        tf.add(src / "train" / "c0", arcname="c0")
        tf.add(src / "train" / "c1", arcname="c1")
    (root / "train.tar").write_bytes(buf.getvalue()[:3000])
    (src / "test").rename(root / "test")
    err = _bad(capsys, root)
    assert "tar" in err


def test_groups_given_explicitly(tmp_path, capsys):
    root = make_folder(tmp_path / "d", counts=[5, 4, 3, 2], test_per_class=1)
    (root / "groups.json").write_text(json.dumps({"head": ["c0"], "medium": ["c1", "c2"], "tail": ["c3"]}))
    data = ld.load_lt_data("imagefolder", root)
    assert data.groups() == {"head": [0], "medium": [1, 2], "tail": [3]}
    (root / "groups.json").write_text(json.dumps({"head": ["c0"], "tail": ["c9"]}))
    assert "unknown class(es) ['c9']" in _bad(capsys, root)
    (root / "groups.json").write_text(json.dumps({"head": ["c0"], "tail": ["c3"]}))
    assert "exactly one group" in _bad(capsys, root)
