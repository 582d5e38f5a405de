"""Dataset registry and the in-memory long-tailed dataset the methods consume.

Real images stay uint8 tensors in memory (CIFAR-10 train is 150 MB) and are
normalised per batch; nothing here uses a DataLoader.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from ..registry import Registry
from .longtail import longtail_counts, longtail_indices
from .sources import RawSplit, load_raw_split


@dataclass(frozen=True)
class DatasetInfo:
    """Static facts about a dataset: shape, classes and normalisation."""

    name: str
    num_classes: int
    n_per_class: int  # images per class in the balanced training set (the LT head)
    image_size: int
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    loader: Callable[[str | None, str, bool], RawSplit]
    needs_root: bool = True
    # head / medium / tail groups: either fixed class-index ranges or count thresholds
    groups: str = "thirds"  # "cifar10" (0-2/3-6/7-9) or "counts" (>100 / 20-100 / <20)


DATASETS: Registry[DatasetInfo] = Registry("dataset")


def _cifar_loader(num_classes: int):
    def load(root: str | None, split: str, download: bool) -> RawSplit:
        if root is None:
            raise DataError(f"dataset cifar{num_classes} needs --data-root")
        if download:
            download_cifar(num_classes, root)
        return load_raw_split(root, split, num_classes)

    return load


def download_cifar(num_classes: int, root: str) -> None:
    """Fetch the CIFAR pickle folder through torchvision (an optional extra)."""
    try:
        import torchvision.datasets as tvd
    except Exception as e:  # noqa: BLE001 - ImportError or a broken torchvision build
        raise DataError(
            f"--download needs torchvision (pip install 'ltdistill[download]'): {e}. "
            "Otherwise point --data-root at a CIFAR folder you already have."
        ) from None
    cls = tvd.CIFAR10 if num_classes == 10 else tvd.CIFAR100
    try:
        cls(root, train=True, download=True)
        cls(root, train=False, download=True)
    except Exception as e:  # noqa: BLE001 - network errors come in many types
        raise DataError(f"download of CIFAR-{num_classes} into {root} failed (offline?): {e}") from None


def _digits_loader(root: str | None, split: str, download: bool) -> RawSplit:
    """scikit-learn's 8x8 digits (1797 real scans, ships inside the package).

    The last 50 images of each class (in the file's order) are the balanced test
    split; the rest are training images, made long-tailed by the usual rule.
    """
    from sklearn.datasets import load_digits

    d = load_digits()
    x = np.clip(np.rint(d.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)[..., None]
    y = d.target.astype(np.int64)
    keep = []
    for c in range(10):
        idx = np.flatnonzero(y == c)
        keep.append(idx[-50:] if split == "test" else idx[:-50])
    keep = np.concatenate(keep)
    return RawSplit(x[keep], y[keep], [str(c) for c in range(10)], "dataset-labels", "sklearn digits")


DATASETS.add(
    "cifar10",
    DatasetInfo("cifar10", 10, 5000, 32, 3, (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010),
                _cifar_loader(10), groups="cifar10"),
)
DATASETS.add(
    "cifar100",
    DatasetInfo("cifar100", 100, 500, 32, 3, (0.5071, 0.4866, 0.4409), (0.2673, 0.2564, 0.2762),
                _cifar_loader(100), groups="counts"),
)
# Digits: 124 training images in the smallest class; mean/std of its pixels / 255.
DATASETS.add(
    "digits",
    DatasetInfo("digits", 10, 124, 8, 1, (0.3058,), (0.3753,), _digits_loader, needs_root=False,
                groups="cifar10"),
)


def list_datasets() -> list[str]:
    return DATASETS.names()


@dataclass
class ImageSet:
    """Images (uint8 ``N x C x H x W``) and labels held in memory."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def indices_of(self, c: int) -> torch.Tensor:
        return torch.nonzero(self.labels == c, as_tuple=False).flatten()


@dataclass
class LTData:
    """A long-tailed training split plus the balanced test split of one dataset."""

    info: DatasetInfo
    train: ImageSet
    test: ImageSet
    class_names: list[str]
    imbalance: float
    split_seed: int
    class_counts: list[int]
    meta: dict = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return self.info.num_classes

    def normalize(self, x_uint8: torch.Tensor, device: torch.device | None = None) -> torch.Tensor:
        """uint8 images -> float32 normalised with the dataset's mean/std."""
        x = x_uint8.to(device=device, dtype=torch.float32).div_(255.0)
        mean = torch.tensor(self.info.mean, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.info.std, device=x.device).view(1, -1, 1, 1)
        return (x - mean) / std

    def split_record(self) -> dict:
        """Plain-value description that identifies the split (stored with every output)."""
        return {
            "name": self.info.name,
            "imbalance": float(self.imbalance),
            "split_seed": int(self.split_seed),
            "class_counts": [int(n) for n in self.class_counts],
            "num_classes": self.num_classes,
            "image_size": self.info.image_size,
            "channels": self.info.channels,
            **{k: v for k, v in self.meta.items() if isinstance(v, (str, int, float))},
        }

    def groups(self) -> dict[str, list[int]]:
        return class_groups(self.info, self.class_counts)


def class_groups(info: DatasetInfo, counts: list[int]) -> dict[str, list[int]]:
    """Head / medium / tail class indices (SPEC §7).

    CIFAR-10 (and digits): classes 0-2, 3-6, 7-9. CIFAR-100: many-shot > 100
    training images, medium 20-100, few-shot < 20.
    """
    C = len(counts)
    if info.groups == "cifar10" and C == 10:
        return {"head": [0, 1, 2], "medium": [3, 4, 5, 6], "tail": [7, 8, 9]}
    if info.groups == "counts":
        return {
            "head": [c for c in range(C) if counts[c] > 100],
            "medium": [c for c in range(C) if 20 <= counts[c] <= 100],
            "tail": [c for c in range(C) if counts[c] < 20],
        }
    a, b = round(C * 0.3), round(C * 0.7)
    return {"head": list(range(a)), "medium": list(range(a, b)), "tail": list(range(b, C))}


def _to_tensor(raw: RawSplit) -> ImageSet:
    x = torch.from_numpy(np.ascontiguousarray(raw.images.transpose(0, 3, 1, 2)))
    return ImageSet(x, torch.from_numpy(raw.labels))


def load_lt_data(
    dataset: str,
    data_root: str | Path | None = None,
    imbalance: float = 100,
    split_seed: int = 42,
    download: bool = False,
) -> LTData:
    """Load a dataset and apply the long-tailed split to its training set.

    Args:
        dataset: a registered dataset name (``cifar10``, ``cifar100``, ``digits``).
        data_root: folder holding the data in any supported form.
        imbalance: imbalance factor IF = n_max / n_min (1 = balanced).
        split_seed: seed of the per-class ``RandomState`` (42 as in LAD).
        download: fetch CIFAR through torchvision first.
    """
    info = DATASETS.get(dataset)
    root = str(data_root) if data_root is not None else None
    raw_train = info.loader(root, "train", download)
    raw_test = info.loader(root, "test", False)
    if len(raw_train.class_names) != info.num_classes:
        raise DataError(
            f"{dataset} expects {info.num_classes} classes but {raw_train.source} has "
            f"{len(raw_train.class_names)}"
        )
    if raw_test.class_names != raw_train.class_names:
        raise DataError(f"train and test splits of {dataset} list different classes")
    idx = longtail_indices(raw_train.labels, info.num_classes, imbalance, info.n_per_class,
                           split_seed, raw_train.class_names)
    train = _to_tensor(raw_train)
    train = ImageSet(train.images[idx].contiguous(), train.labels[idx].contiguous())
    counts = longtail_counts(info.n_per_class, info.num_classes, imbalance)
    return LTData(
        info=info,
        train=train,
        test=_to_tensor(raw_test),
        class_names=list(raw_train.class_names),
        imbalance=float(imbalance),
        split_seed=int(split_seed),
        class_counts=counts,
        meta={"class_order": raw_train.class_order, "source": raw_train.source},
    )


def holdout_validation(data: LTData, fraction: float = 0.2, seed: int = 0) -> LTData:
    """Carve a validation split out of the long-tailed *training* split (for tuning).

    Per class, ``round(fraction * n_c)`` images (at least one, and at least one
    left for training) are drawn with ``seed`` and moved to the returned data's
    ``test`` split; its ``train`` split holds the rest, so the imbalance profile is
    kept. The balanced test split is never touched: tune on the result, report on
    the original. The validation split is long-tailed too, so compare runs on its
    class-balanced accuracy (the mean of the per-class accuracies).
    """
    if not 0 < fraction < 1:
        raise DataError(f"validation fraction must lie in (0, 1), got {fraction}")
    g = torch.Generator().manual_seed(int(seed))
    keep, held = [], []
    for c in range(data.num_classes):
        idx = data.train.indices_of(c)
        n = len(idx)
        if n < 2:
            raise DataError(f"class {data.class_names[c]!r} has {n} training image(s): too few to hold any out")
        k = min(max(1, round(fraction * n)), n - 1)
        perm = idx[torch.randperm(n, generator=g)]
        held.append(perm[:k])
        keep.append(perm[k:])
    keep_idx, held_idx = torch.cat(keep).sort().values, torch.cat(held).sort().values
    train = ImageSet(data.train.images[keep_idx], data.train.labels[keep_idx])
    val = ImageSet(data.train.images[held_idx], data.train.labels[held_idx])
    counts = torch.bincount(train.labels, minlength=data.num_classes).tolist()
    meta = dict(data.meta, validation_fraction=float(fraction), validation_seed=int(seed), eval_split="validation")
    return dataclasses.replace(data, train=train, test=val, class_counts=counts, meta=meta)
