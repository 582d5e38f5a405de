"""Writers for small datasets in the real on-disk formats (pickle, ImageFolder, tar)."""

from __future__ import annotations

import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image


def fake_images(n_per_class: int, classes: int, seed: int = 0, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.RandomState(seed)
    x = rng.randint(0, 256, size=(n_per_class * classes, size, size, 3)).astype(np.uint8)
    y = np.repeat(np.arange(classes), n_per_class)
    return x, y


def png_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def write_cifar10_pickle(root: Path, x_tr, y_tr, x_te, y_te, names) -> Path:
    """The CIFAR-10 'python version' layout: 5 train batches, a test batch and batches.meta."""
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    chunks = np.array_split(np.arange(len(y_tr)), 5)
    for i, ch in enumerate(chunks, 1):
        _dump(d / f"data_batch_{i}", {b"data": x_tr[ch].transpose(0, 3, 1, 2).reshape(len(ch), -1),
                                       b"labels": y_tr[ch].tolist(), b"batch_label": b"x"})
    _dump(d / "test_batch", {b"data": x_te.transpose(0, 3, 1, 2).reshape(len(y_te), -1), b"labels": y_te.tolist()})
    _dump(d / "batches.meta", {b"label_names": [n.encode() for n in names], b"num_vis": 3072})
    return d


def write_cifar100_pickle(root: Path, x_tr, y_tr, x_te, y_te, names) -> Path:
    d = root / "cifar-100-python"
    d.mkdir(parents=True)
    for split, x, y in (("train", x_tr, y_tr), ("test", x_te, y_te)):
        _dump(d / split, {b"data": x.transpose(0, 3, 1, 2).reshape(len(y), -1), b"fine_labels": y.tolist(),
                          b"coarse_labels": (y // 5).tolist()})
    _dump(d / "meta", {b"fine_label_names": [n.encode() for n in names], b"coarse_label_names": [b"c"]})
    return d


def _dump(path: Path, obj) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def write_folder(root: Path, split: str, x, y, names, classes_file: bool = True) -> Path:
    for i, (a, c) in enumerate(zip(x, y)):
        p = root / split / names[c] / f"{i:04d}.png"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(png_bytes(a))
    if classes_file:
        (root / "classes.txt").write_text("\n".join(names) + "\n")
    return root / split


def write_tar(root: Path, split: str, x, y, names, classes_file: bool = True) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    path = root / f"{split}.tar"
    with tarfile.open(path, "w") as tf:
        for i, (a, c) in enumerate(zip(x, y)):
            data = png_bytes(a)
            info = tarfile.TarInfo(f"{names[c]}/{i:04d}.png")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    if classes_file:
        (root / "classes.txt").write_text("\n".join(names) + "\n")
    return path
