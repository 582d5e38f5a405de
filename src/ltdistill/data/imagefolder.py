"""A user's own image folder: ``DIR/train/<class>/<image>`` and ``DIR/test/<class>/<image>``
(``val/`` accepted for ``test/``), or the same as ``train.tar`` / ``test.tar``.

Any number of classes (at least two); PNG, JPEG, BMP, GIF, WebP, PPM or TIFF; RGB or
greyscale. When any image of the training split is in colour every image is converted to
RGB (the number converted is recorded), else the data stay single-channel. With
``image_size`` N every image is resized so its shorter side is N (bicubic) and
centre-cropped to N x N; without it all images must already share one size.

Files whose extension is not an image's (a ``notes.txt``, a ``.DS_Store``) are skipped
with one warning naming them: real archives carry such files and refusing the whole
folder for them would help nobody. A file with an image extension that does not decode
is an error, since silently dropping a training image changes the class counts.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import DataError
from .sources import IMAGE_EXTS, _class_map, _read_classes_file, cache_dir
from .sources import _fingerprint as sources_fingerprint

CACHE_FORMAT = 1
GREY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"}


@dataclass
class FolderSplit:
    """A decoded split of an image folder."""

    images: np.ndarray  # N x H x W x C uint8
    labels: np.ndarray  # N int64
    class_names: list[str]
    class_order: str
    source: str
    greyscale_converted: int = 0
    skipped: list[str] = field(default_factory=list)


def find_split(root: Path, split: str) -> tuple[str, Path]:
    """("folder" | "tar", path) of ``split`` (train, or test with val accepted) under ``root``."""
    if not root.exists():
        raise DataError(f"data root {root} does not exist")
    if not root.is_dir():
        raise DataError(f"data root {root} is not a folder")
    names = ["test", "val"] if split == "test" else [split]
    for n in names:
        if (root / n).is_dir():
            return "folder", root / n
        if (root / f"{n}.tar").is_file():
            return "tar", root / f"{n}.tar"
    want = " or ".join(f"{n}/ or {n}.tar" for n in names)
    raise DataError(f"no {split} split under {root}: expected {want} (with one sub-folder per class)")


def _entries(kind: str, path: Path) -> tuple[list[tuple[str, str, bytes | Path]], list[str], set[str]]:
    """(class, name, bytes-or-path) of every image file, the skipped non-image files and
    every class folder found (also empty ones)."""
    entries, skipped, classes = [], [], set()
    if kind == "folder":
        stray = sorted(p.name for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS)
        if stray:
            raise DataError(f"images directly in {path} (expected <class>/<image>): {stray[:3]}")
        for d in sorted(p for p in path.iterdir() if p.is_dir()):
            classes.add(d.name)
            for p in sorted(d.rglob("*")):
                if not p.is_file():
                    continue
                if p.suffix.lower() in IMAGE_EXTS:
                    entries.append((d.name, str(p), p))
                else:
                    skipped.append(str(p.relative_to(path)))
        return entries, skipped, classes
    try:
        with tarfile.open(path, "r:") as tf:
            for m in tf:
                name = m.name.strip("/")
                if "/" not in name:
                    if m.isdir():
                        classes.add(name)
                    continue
                cls = name.split("/", 1)[0]
                classes.add(cls)
                if not m.isfile():
                    continue
                if Path(name).suffix.lower() not in IMAGE_EXTS:
                    skipped.append(name)
                    continue
                f = tf.extractfile(m)
                data = f.read() if f is not None else b""
                if len(data) != m.size:
                    raise DataError(f"truncated tar {path}: member {name} is cut short")
                entries.append((cls, f"{path}:{name}", data))
    except tarfile.TarError as e:
        raise DataError(f"cannot read tar {path}: {e}") from None
    return entries, skipped, classes


def _load(src: bytes | Path, where: str, image_size: int | None) -> np.ndarray:
    """One image as ``H x W`` (greyscale) or ``H x W x 3`` uint8, resized when asked."""
    from PIL import Image, UnidentifiedImageError

    try:
        data = src.read_bytes() if isinstance(src, Path) else src
    except OSError as e:
        raise DataError(f"cannot read image {where}: {e.strerror or e}") from None
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()  # raises on truncated files
            im = im.convert("L") if im.mode in GREY_MODES else im.convert("RGB")
            if image_size:
                w, h = im.size
                s = image_size / min(w, h)
                nw, nh = max(image_size, round(w * s)), max(image_size, round(h * s))
                im = im.resize((nw, nh), Image.BICUBIC)
                left, top = (nw - image_size) // 2, (nh - image_size) // 2
                im = im.crop((left, top, left + image_size, top + image_size))
            return np.asarray(im, dtype=np.uint8).copy()
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise DataError(f"corrupt or truncated image {where}: {e}") from None


def read_split(kind: str, path: Path, classes_folder: Path, image_size: int | None,
               show_progress: bool = False) -> FolderSplit:
    from ..progress import progress_bar

    listed = _read_classes_file(classes_folder)
    entries, skipped, classes = _entries(kind, path)
    names, order = _class_map(classes, listed, str(path))
    counts = {c: 0 for c in names}
    for cls, _, _ in entries:
        counts[cls] += 1
    empty = [c for c in names if counts[c] == 0]
    if empty:
        raise DataError(f"class folder(s) {empty} in {path} hold no images")
    index = {c: i for i, c in enumerate(names)}
    arrays, labels = [], []
    with progress_bar(total=len(entries), desc=f"decode {path.name}", enabled=show_progress and len(entries) > 2000) \
            as bar:
        for cls, where, src in entries:
            arrays.append(_load(src, where, image_size))
            labels.append(index[cls])
            bar.update(1)
    shapes = {a.shape[:2] for a in arrays}
    if len(shapes) > 1:
        by = {}
        for (_, where, _), a in zip(entries, arrays):
            by.setdefault(a.shape[:2], where)
        ex = "; ".join(f"{h}x{w} ({p})" for (h, w), p in list(by.items())[:3])
        raise DataError(f"the images of {path} have {len(shapes)} different sizes, e.g. {ex}: "
                        f"pass --image-size N to resize them all to N x N")
    (h, w), = shapes
    if h != w and image_size is None:
        raise DataError(f"the images of {path} are {h}x{w}, not square: pass --image-size N to crop them to N x N")
    colour = any(a.ndim == 3 for a in arrays)
    grey = sum(a.ndim == 2 for a in arrays)
    if colour:
        images = np.stack([np.repeat(a[..., None], 3, axis=2) if a.ndim == 2 else a for a in arrays])
    else:
        images = np.stack(arrays)[..., None]
    return FolderSplit(images, np.asarray(labels, dtype=np.int64), names, order,
                       f"{kind} {path}", grey if colour else 0, skipped)


def _fingerprint(kind: str, path: Path, image_size: int | None) -> str:
    return sources_fingerprint(kind, path, f"imagefolder|{CACHE_FORMAT}|{image_size}|")


def load_split(root: str | Path, split: str, image_size: int | None = None, show_progress: bool = False,
               use_cache: bool = True) -> FolderSplit:
    """Decode one split (cached by the path, size and mtime of every file, and the size)."""
    root = Path(root).expanduser()
    kind, path = find_split(root, split)
    cache_file = cache_dir() / f"imagefolder-{split}-{_fingerprint(kind, path, image_size)}.npz"
    if use_cache and cache_file.is_file():
        try:
            with np.load(cache_file, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                out = FolderSplit(z["images"], z["labels"], meta["class_names"], meta["class_order"],
                                  meta["source"], meta["greyscale_converted"], meta["skipped"])
        except Exception:  # noqa: BLE001 - a broken cache is rebuilt, never trusted
            out = None
        if out is not None:
            _warn_skipped(out, path)
            return out
    out = read_split(kind, path, root, image_size, show_progress)
    _warn_skipped(out, path)
    if use_cache:
        try:
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache_file.with_suffix(f".{os.getpid()}.tmp.npz")
            meta = json.dumps({"class_names": out.class_names, "class_order": out.class_order, "source": out.source,
                               "greyscale_converted": out.greyscale_converted, "skipped": out.skipped})
            np.savez(tmp, images=out.images, labels=out.labels, meta=np.asarray(meta))
            os.replace(tmp, cache_file)
        except OSError:
            pass
    return out


def _warn_skipped(s: FolderSplit, path: Path) -> None:
    if s.skipped:
        more = f" and {len(s.skipped) - 3} more" if len(s.skipped) > 3 else ""
        warnings.warn(f"skipped {len(s.skipped)} file(s) in {path} that are not images: "
                      f"{', '.join(s.skipped[:3])}{more}", stacklevel=3)
