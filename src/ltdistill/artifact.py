"""The distilled-set artifact: one ``torch.save`` file of tensors and plain values.

``torch.load(path, weights_only=True)`` reads it; nothing in it needs ltdistill to
unpickle. Images are stored *normalised* with the ``mean``/``std`` stored beside
them, so ``images * std + mean`` gives pixels in [0, 1]. A PNG grid (one row per
class, de-normalised) is written next to the file.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import ArtifactError
from .utils import atomic_torch_save, atomic_write_bytes

FORMAT = "ltdistill-set"
FORMAT_VERSION = 1


@dataclass
class DistilledSet:
    """A synthetic set with everything needed to evaluate and reproduce it.

    Attributes:
        images: ``N x C x H x W`` float32, normalised with ``mean``/``std``.
        labels: ``N`` int64 hard labels.
        class_names: one name per class, in label order.
        mean, std: per-channel normalisation of ``images``.
        dataset: split record (name, imbalance, class_counts, split_seed, ...).
        method: registered method name; ``config`` its resolved configuration.
        seed: the run seed.
        soft_labels: optional ``N x C`` probabilities (soft-label track); for a multi-formation
            set (``factor`` f > 1) either ``N x C`` or one row per decoded image, ``N f² x C``.
        extra: optional plain values / tensors a method adds (e.g. a loss curve summary).
        factor: multi-formation factor f: each stored image holds f x f tiles that
            :func:`ltdistill.multiformation.decode` turns into f*f training images.
        provenance: the code that distilled the set: ``library_version`` and, when run
            from a git checkout, ``commit`` (``+dirty`` if ``src/`` differed from it).
    """

    images: torch.Tensor
    labels: torch.Tensor
    class_names: list[str]
    mean: list[float]
    std: list[float]
    dataset: dict[str, Any]
    method: str
    config: dict[str, Any]
    seed: int
    soft_labels: torch.Tensor | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    factor: int = 1
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def ipc(self) -> int:
        return int(torch.bincount(self.labels, minlength=self.num_classes).max())

    def training_tensors(self, soft: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """What a network is trained on: decoded images and matching (hard or soft) labels."""
        from .multiformation import decode

        y = self.soft_labels if soft else self.labels
        if self.factor == 1:
            return self.images.float(), y
        x = decode(self.images.float(), self.factor)
        # soft labels may hold one row per decoded image (a teacher labels each tile)
        return x, y if len(y) == len(x) else y.repeat_interleave(self.factor**2, dim=0)

    def denormalized(self) -> torch.Tensor:
        """Images in [0, 1] (clamped)."""
        return denormalize(self.images, self.mean, self.std)

    def to_dict(self) -> dict[str, Any]:
        from . import __version__

        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "library_version": __version__,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "images": self.images.detach().float().cpu().contiguous(),
            "labels": self.labels.detach().long().cpu().contiguous(),
            "soft_labels": None if self.soft_labels is None else self.soft_labels.detach().float().cpu(),
            "class_names": list(self.class_names),
            "mean": [float(m) for m in self.mean],
            "std": [float(s) for s in self.std],
            "dataset": dict(self.dataset),
            "method": self.method,
            "config": dict(self.config),
            "seed": int(self.seed),
            "extra": dict(self.extra),
            "factor": int(self.factor),
            "provenance": dict(self.provenance),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "artifact") -> DistilledSet:
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise ArtifactError(f"{where} is not an ltdistill distilled set")
        ver = d.get("format_version")
        if ver != FORMAT_VERSION:
            raise ArtifactError(
                f"{where} has format version {ver!r}; this ltdistill reads version {FORMAT_VERSION}"
            )
        try:
            s = cls(
                images=d["images"], labels=d["labels"], class_names=list(d["class_names"]),
                mean=list(d["mean"]), std=list(d["std"]), dataset=dict(d["dataset"]),
                method=str(d["method"]), config=dict(d["config"]), seed=int(d["seed"]),
                soft_labels=d.get("soft_labels"), extra=dict(d.get("extra") or {}),
                factor=int(d.get("factor", 1)), provenance=dict(d.get("provenance") or {}),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ArtifactError(f"{where} is missing or has a malformed field: {e}") from None
        s.validate(where)
        return s

    def validate(self, where: str = "set") -> None:
        n = len(self.labels)
        if self.images.ndim != 4 or self.images.shape[0] != n:
            raise ArtifactError(f"{where}: images {tuple(self.images.shape)} do not match {n} labels")
        if self.images.shape[1] != len(self.mean) or len(self.mean) != len(self.std):
            raise ArtifactError(f"{where}: normalisation does not match the image channels")
        if n and (int(self.labels.min()) < 0 or int(self.labels.max()) >= self.num_classes):
            raise ArtifactError(f"{where}: labels outside 0..{self.num_classes - 1}")
        rows = (n, n * self.factor**2)  # per stored image, or per decoded image of a multi-formation set
        if self.soft_labels is not None and (self.soft_labels.ndim != 2 or self.soft_labels.shape[0] not in rows
                                             or self.soft_labels.shape[1] != self.num_classes):
            raise ArtifactError(f"{where}: soft labels of shape {tuple(self.soft_labels.shape)}")
        if not torch.isfinite(self.images).all():
            raise ArtifactError(f"{where}: images contain NaN or inf")


def save_set(s: DistilledSet, path: str | Path, grid: bool = True) -> Path:
    """Atomically write the artifact (and ``<stem>.png`` beside it). Returns the path."""
    s.validate(str(path))
    path = Path(path)
    atomic_torch_save(s.to_dict(), path)
    if grid:
        save_grid(s, path.with_suffix(".png"))
    return path


def load_set(path: str | Path) -> DistilledSet:
    """Read an artifact with ``weights_only=True``; clear errors for bad files."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"no distilled set at {path}")
    try:
        d = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for a bad file
        raise ArtifactError(f"cannot read distilled set {path}: {e}") from None
    return DistilledSet.from_dict(d, str(path))


def _to_uint8(x: torch.Tensor) -> np.ndarray:
    """``N x C x H x W`` in [0, 1] -> ``N x H x W x 3`` uint8."""
    a = (x.clamp(0, 1) * 255 + 0.5).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return np.repeat(a, 3, axis=3) if a.shape[3] == 1 else a


def denormalize(x: torch.Tensor, mean, std) -> torch.Tensor:
    """Normalised images (any device) -> float CPU images in [0, 1] (clamped)."""
    mean = torch.tensor(list(mean)).view(1, -1, 1, 1)
    std = torch.tensor(list(std)).view(1, -1, 1, 1)
    return (x.detach().float().cpu() * std + mean).clamp(0, 1)


def tracker_grid(x: torch.Tensor, labels: torch.Tensor, factor: int, mean, std, num_classes: int) -> np.ndarray:
    """The grid a tracker shows: normalised training images (decoded: ``factor``² per stored
    label) de-normalised, one row per class."""
    y = labels.repeat_interleave(factor**2) if factor > 1 and len(labels) != len(x) else labels
    return grid_array(denormalize(x, mean, std), y, num_classes)


def grid_array(images01: torch.Tensor, labels: torch.Tensor, num_classes: int, max_per_row: int = 20,
               upscale: int | None = None) -> np.ndarray:
    """``H x W x 3`` uint8 grid of images in [0, 1]: one row per class (its first
    ``max_per_row`` images), upscaled so small images stay visible."""
    imgs = _to_uint8(images01)
    _, h, w, _ = imgs.shape
    up = upscale or max(1, 32 // max(h, w))
    ipc = int(torch.bincount(labels, minlength=num_classes).max()) if len(labels) else 1
    cols = min(max_per_row, max(1, ipc))
    pad = 1
    canvas = np.full((num_classes * (h + pad) + pad, cols * (w + pad) + pad, 3), 255, np.uint8)
    for c in range(num_classes):
        idx = torch.nonzero(labels == c).flatten()[:cols]
        for j, i in enumerate(idx.tolist()):
            y, x = pad + c * (h + pad), pad + j * (w + pad)
            canvas[y : y + h, x : x + w] = imgs[i]
    if up > 1:
        canvas = canvas.repeat(up, axis=0).repeat(up, axis=1)
    return canvas


def save_grid(s: DistilledSet, path: str | Path, max_per_row: int = 20, upscale: int | None = None) -> Path:
    """PNG grid: one row per class (the first ``max_per_row`` images), de-normalised."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(grid_array(s.denormalized(), s.labels, s.num_classes, max_per_row, upscale)).save(buf, "PNG")
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def export_imagefolder(s: DistilledSet, out_dir: str | Path, raw: bool = False) -> Path:
    """Write the set as ``out_dir/<NNN>_<class>/<NNNN>.png`` plus ``classes.txt``.

    The images are the ones evaluation trains on: a multi-formation set (``factor`` f > 1)
    is decoded into its f*f tiles per stored image; ``raw=True`` writes the stored mosaics
    instead. Class folders are zero-padded label indices (so sorted order is label order)
    followed by the class name; pixels are de-normalised to 8 bits.
    """
    from PIL import Image

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if raw or s.factor == 1:
        x, labels = s.images.float(), s.labels
    else:
        x, labels = s.training_tensors()
    imgs = _to_uint8(denormalize(x, s.mean, s.std))
    cw = max(3, len(str(s.num_classes - 1)))
    folders = [f"{c:0{cw}d}_{_safe(n)}" for c, n in enumerate(s.class_names)]
    counters = [0] * s.num_classes
    for i, y in enumerate(labels.tolist()):
        d = out / folders[y]
        d.mkdir(exist_ok=True)
        Image.fromarray(imgs[i]).save(d / f"{counters[y]:04d}.png")
        counters[y] += 1
    (out / "classes.txt").write_text("\n".join(folders) + "\n")
    return out


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)
