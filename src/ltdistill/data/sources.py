"""Readers for the on-disk forms of CIFAR-like data, with a decode-once cache.

Three forms are understood (SPEC §1):

* the CIFAR "python version" pickle folders (``cifar-10-batches-py/``, ``cifar-100-python/``);
* ImageFolder trees ``<root>/<split>/<class>/<image>``;
* the same as one uncompressed tar per split, ``<root>/<split>.tar``.

Class order comes from ``classes.txt`` beside the split when present, else from the
sorted folder names; :class:`RawSplit` records which.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DataError

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".ppm", ".tif", ".tiff"}
CACHE_FORMAT = 1


@dataclass
class RawSplit:
    """A decoded split: uint8 images ``N x H x W x C``, int64 labels and class names."""

    images: np.ndarray
    labels: np.ndarray
    class_names: list[str]
    class_order: str  # "classes-file", "sorted-folders", "pickle-meta" or "dataset-labels"
    source: str  # human-readable description of where it came from


def cache_dir() -> Path:
    """``$LTDISTILL_CACHE`` or ``~/.cache/ltdistill``."""
    env = os.environ.get("LTDISTILL_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "ltdistill"


# ----------------------------------------------------------------------------- helpers
def _decode_image(data: bytes, where: str, shape: tuple[int, int, int] | None) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()  # raises on truncated files
            arr = np.asarray(im.convert("RGB" if (shape is None or shape[2] == 3) else "L"))
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise DataError(f"corrupt or truncated image {where}: {e}") from None
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if shape is not None and arr.shape != shape:
        raise DataError(f"image {where} has shape {arr.shape}, expected {shape}")
    return arr


def _read_classes_file(folder: Path) -> list[str] | None:
    f = folder / "classes.txt"
    if not f.is_file():
        return None
    names = [ln.strip() for ln in f.read_text().splitlines() if ln.strip()]
    if len(set(names)) != len(names):
        raise DataError(f"classes file {f} lists a class twice")
    return names


def _class_map(
    found: set[str], listed: list[str] | None, where: str
) -> tuple[list[str], str]:
    """Order the class folders found, checking them against the classes file."""
    if listed is None:
        return sorted(found), "sorted-folders"
    unknown = sorted(found - set(listed))
    if unknown:
        raise DataError(f"unknown class folder(s) {unknown} in {where}: not in classes.txt")
    missing = [c for c in listed if c not in found]
    if missing:
        raise DataError(
            f"classes.txt disagrees with the folders in {where}: no folder for {missing}"
        )
    return list(listed), "classes-file"


def _finish(
    images: list[np.ndarray], labels: list[int], names: list[str], order: str, source: str
) -> RawSplit:
    if not images:
        raise DataError(f"no images found in {source}")
    return RawSplit(
        np.stack(images).astype(np.uint8),
        np.asarray(labels, dtype=np.int64),
        names,
        order,
        source,
    )


# ----------------------------------------------------------------------------- readers
def read_tar_split(
    tar_path: Path, classes_folder: Path, shape: tuple[int, int, int] | None = None
) -> RawSplit:
    """Read an uncompressed ImageFolder tar (members ``<class>/<file>``)."""
    listed = _read_classes_file(classes_folder)
    size = tar_path.stat().st_size
    entries: list[tuple[str, bytes]] = []
    try:
        with tarfile.open(tar_path, "r:") as tf:
            end = 0
            for m in tf:
                if not m.isfile():
                    continue
                if "/" not in m.name.strip("/"):
                    continue  # a stray top-level file (e.g. a README) is not an image
                cls, fname = m.name.strip("/").split("/", 1)
                if Path(fname).suffix.lower() not in IMAGE_EXTS:
                    continue
                f = tf.extractfile(m)
                data = f.read() if f is not None else b""
                if len(data) != m.size:
                    raise DataError(f"truncated tar {tar_path}: member {m.name} is cut short")
                entries.append((cls, data))
                end = m.offset_data + ((m.size + 511) // 512) * 512
    except tarfile.TarError as e:
        raise DataError(f"cannot read tar {tar_path}: {e}") from None
    # tarfile stops silently at a truncated header: a complete archive ends with two
    # zero blocks after the last member's data.
    if size < end + 1024:
        raise DataError(f"truncated tar {tar_path}: the archive ends before its end-of-archive marker")
    names, order = _class_map({c for c, _ in entries}, listed, str(tar_path))
    index = {c: i for i, c in enumerate(names)}
    images, labels = [], []
    for cls, data in entries:
        images.append(_decode_image(data, f"{tar_path}:{cls}/…", shape))
        labels.append(index[cls])
    return _finish(images, labels, names, order, f"tar {tar_path}")


def read_folder_split(
    split_dir: Path, classes_folder: Path, shape: tuple[int, int, int] | None = None
) -> RawSplit:
    """Read an ImageFolder tree ``<split_dir>/<class>/<image>`` (files in sorted order)."""
    listed = _read_classes_file(classes_folder)
    found = {p.name for p in split_dir.iterdir() if p.is_dir()}
    stray = [p.name for p in split_dir.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS]
    if stray:
        raise DataError(f"images directly in {split_dir} (expected <class>/<image>): {stray[:3]}")
    names, order = _class_map(found, listed, str(split_dir))
    images, labels = [], []
    for i, cls in enumerate(names):
        for p in sorted((split_dir / cls).iterdir()):
            if p.is_file() and p.suffix.lower() in IMAGE_EXTS:
                images.append(_decode_image(p.read_bytes(), str(p), shape))
                labels.append(i)
    return _finish(images, labels, names, order, f"folder {split_dir}")


def _unpickle(path: Path) -> dict:
    if not path.is_file():
        raise DataError(f"missing CIFAR pickle file {path}")
    try:
        with open(path, "rb") as f:
            return pickle.load(f, encoding="bytes")
    except Exception as e:  # noqa: BLE001 - any unpickling failure means a bad file
        raise DataError(f"corrupt CIFAR pickle file {path}: {e}") from None


def _key(d: dict, name: str, path: Path):
    for k in (name.encode(), name):
        if k in d:
            return d[k]
    raise DataError(f"CIFAR pickle file {path} has no {name!r} entry")


def read_cifar_pickle(folder: Path, split: str, num_classes: int) -> RawSplit:
    """Read a CIFAR-10 (``cifar-10-batches-py``) or CIFAR-100 (``cifar-100-python``) folder."""
    if num_classes == 10:
        files = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
        meta_file, meta_key, label_key = "batches.meta", "label_names", "labels"
    else:
        files = ["train"] if split == "train" else ["test"]
        meta_file, meta_key, label_key = "meta", "fine_label_names", "fine_labels"
    xs, ys = [], []
    for name in files:
        d = _unpickle(folder / name)
        x = np.asarray(_key(d, "data", folder / name), dtype=np.uint8)
        y = np.asarray(_key(d, label_key, folder / name), dtype=np.int64)
        if x.ndim != 2 or x.shape[1] != 3072 or len(x) != len(y):
            raise DataError(f"CIFAR pickle file {folder / name} has data of shape {x.shape}")
        xs.append(x.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        ys.append(y)
    meta = _unpickle(folder / meta_file)
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in _key(meta, meta_key, folder / meta_file)]
    labels = np.concatenate(ys)
    if len(names) != num_classes or labels.min() < 0 or labels.max() >= num_classes:
        raise DataError(f"CIFAR pickle folder {folder} does not hold {num_classes} classes")
    return RawSplit(np.concatenate(xs), labels, names, "pickle-meta", f"pickle {folder}")


# ----------------------------------------------------------------------------- discovery + cache
PICKLE_DIRS = {10: "cifar-10-batches-py", 100: "cifar-100-python"}


def find_source(root: Path, split: str, num_classes: int) -> tuple[str, Path]:
    """Which form of the data lives under ``root``: ("pickle"|"tar"|"folder", path)."""
    if not root.exists():
        raise DataError(f"data root {root} does not exist")
    pick = PICKLE_DIRS.get(num_classes)
    if pick:
        for cand in (root / pick, root):
            marker = "batches.meta" if num_classes == 10 else "meta"
            if (cand / marker).is_file():
                return "pickle", cand
    if (root / f"{split}.tar").is_file():
        return "tar", root / f"{split}.tar"
    if (root / split).is_dir():
        return "folder", root / split
    raise DataError(
        f"no {split} split under {root}: expected a CIFAR pickle folder ({pick}), "
        f"{split}.tar or a {split}/ ImageFolder tree"
    )


def _fingerprint(kind: str, path: Path, prefix: str = "") -> str:
    """A cache key from every input file's path, size and mtime (and ``classes.txt``)."""
    h = hashlib.sha256(f"{prefix}{CACHE_FORMAT}|{kind}|{path.resolve()}".encode())
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    cls = path.parent / "classes.txt"
    for p in files + ([cls] if cls.is_file() else []):
        st = p.stat()
        h.update(f"{p}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()[:24]


def load_raw_split(
    root: str | Path,
    split: str,
    num_classes: int,
    shape: tuple[int, int, int] | None = (32, 32, 3),
    use_cache: bool = True,
) -> RawSplit:
    """Decode one split from any supported form, caching the decoded arrays.

    The cache key covers the path, size and modification time of every input file,
    so editing the data invalidates it. A second load takes well under a second.
    """
    root = Path(root).expanduser()
    kind, path = find_source(root, split, num_classes)
    if kind == "pickle":
        return read_cifar_pickle(path, split, num_classes)  # already fast to read
    cache_file = cache_dir() / f"{split}-{_fingerprint(kind, path)}.npz"
    if use_cache and cache_file.is_file():
        try:
            with np.load(cache_file, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                return RawSplit(z["images"], z["labels"], meta["class_names"], meta["class_order"], meta["source"])
        except Exception:  # noqa: BLE001 - a broken cache is rebuilt, never trusted
            pass
    reader = read_tar_split if kind == "tar" else read_folder_split
    raw = reader(path, path.parent, shape)
    if use_cache:
        try:
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache_file.with_suffix(f".{os.getpid()}.tmp.npz")
            meta = json.dumps({"class_names": raw.class_names, "class_order": raw.class_order, "source": raw.source})
            np.savez(tmp, images=raw.images, labels=raw.labels, meta=np.asarray(meta))
            os.replace(tmp, cache_file)
        except OSError:
            pass  # a read-only home is not an error; we just decode again next time
    return raw
