"""Dataset registry and the in-memory long-tailed dataset the methods consume.

Real images stay uint8 tensors in memory (CIFAR-10 train is 150 MB) and are
normalised per batch; nothing here uses a DataLoader.
"""

from __future__ import annotations

import dataclasses
import json
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
    # head / medium / tail groups: fixed class-index ranges, count thresholds, or thirds by count
    groups: str = "thirds"  # "cifar10" (0-2/3-6/7-9), "counts" (>100 / 20-100 / <20) or "by-count"


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


# A user's own folder (``data/imagefolder.py``): classes, size and normalisation come from
# the data itself, so this entry only names it; :func:`load_lt_data` builds the real info.
DATASETS.add("imagefolder", DatasetInfo("imagefolder", 0, 0, 0, 0, (), (), None, groups="by-count"))


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
        return self.normalize_float(x_uint8.to(device=device, dtype=torch.float32).div_(255.0))

    def normalize_float(self, x: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] (any float tensor, any device) -> normalised with the dataset's mean/std."""
        mean, std = self._stats(x.device)
        return (x - mean) / std

    def _stats(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """mean/std as ``1 x C x 1 x 1`` tensors on ``device``, made once per device: a
        fresh host-to-GPU copy in every call would make the GPU stream wait."""
        cache = self.__dict__.setdefault("_stats_cache", {})
        key = (str(device), tuple(self.info.mean), tuple(self.info.std))
        if key not in cache:
            cache[key] = (torch.tensor(self.info.mean, device=device).view(1, -1, 1, 1),
                          torch.tensor(self.info.std, device=device).view(1, -1, 1, 1))
        return cache[key]

    @classmethod
    def from_tensors(cls, train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
                     class_names: list[str] | None = None, mean: tuple[float, ...] | list[float] | None = None,
                     std: tuple[float, ...] | list[float] | None = None, name: str = "tensors") -> LTData:
        """A split from tensors in memory, no file on disk: images ``N x C x H x W`` (square),
        uint8 or float in [0, 1]; integer labels ``0..K-1``. The training classes keep their
        own counts; mean/std default to the training images' per-channel statistics."""
        def as_uint8(x: torch.Tensor, what: str) -> torch.Tensor:
            x = torch.as_tensor(x)
            if x.ndim != 4 or x.shape[-1] != x.shape[-2]:
                raise DataError(f"{what} must be N x C x H x W with H == W, got {tuple(x.shape)}")
            if x.dtype == torch.uint8:
                return x.contiguous()
            if not x.is_floating_point():
                raise DataError(f"{what} must be uint8 or float in [0, 1], got {x.dtype}")
            if x.numel() and (float(x.min()) < 0 or float(x.max()) > 1):
                raise DataError(f"float {what} must lie in [0, 1] (got {float(x.min()):.3g}..{float(x.max()):.3g})")
            return (x.float() * 255).round_().to(torch.uint8).contiguous()

        xtr, xte = as_uint8(train_x, "train_x"), as_uint8(test_x, "test_x")
        ytr, yte = torch.as_tensor(train_y).long().flatten(), torch.as_tensor(test_y).long().flatten()
        if len(ytr) != len(xtr) or len(yte) != len(xte):
            raise DataError("each image needs one label (train_x/train_y or test_x/test_y lengths differ)")
        if xtr.shape[1:] != xte.shape[1:]:
            raise DataError(f"train images {tuple(xtr.shape[1:])} and test images {tuple(xte.shape[1:])} differ")
        K = int(max(int(ytr.max()), int(yte.max()))) + 1 if len(ytr) else 0
        names = list(class_names) if class_names is not None else [str(c) for c in range(K)]
        if len(names) < max(K, 2) or (len(ytr) and int(ytr.min()) < 0):
            raise DataError(f"labels must lie in 0..{len(names) - 1} and there must be at least two classes")
        counts = torch.bincount(ytr, minlength=len(names)).tolist()
        if min(counts) == 0:
            raise DataError(f"class {names[counts.index(0)]!r} has no training images")
        stats = channel_stats(xtr)
        mean_t = tuple(float(v) for v in mean) if mean is not None else stats[0]
        std_t = tuple(float(v) for v in std) if std is not None else stats[1]
        if len(mean_t) != xtr.shape[1] or len(std_t) != xtr.shape[1]:
            raise DataError(f"mean and std need one value per channel ({xtr.shape[1]})")
        info = DatasetInfo(name, len(names), max(counts), int(xtr.shape[-1]), int(xtr.shape[1]), mean_t, std_t,
                           None, needs_root=False, groups="by-count")
        return cls(info, ImageSet(xtr, ytr), ImageSet(xte, yte), names, max(counts) / min(counts), 0, counts,
                   {"source": "tensors"})

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
            **({k: self.meta.get(k) for k in ("imposed_imbalance", "resized_to", "n_per_class")}
               if self.info.name == "imagefolder" else {}),
        }

    def groups(self) -> dict[str, list[int]]:
        """Head / medium / tail class indices: given explicitly (an image folder's
        ``groups.json``), else by the dataset's rule (SPEC §7, or thirds by count)."""
        given = self.meta.get("group_classes")
        if given:
            return {g: list(cls) for g, cls in given.items()}
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
    if info.groups == "by-count":  # thirds of the classes ordered by training count (ties: class order)
        order = sorted(range(C), key=lambda c: (-counts[c], c))
        a, b = round(C / 3), round(2 * C / 3)
        return {"head": sorted(order[:a]), "medium": sorted(order[a:b]), "tail": sorted(order[b:])}
    a, b = round(C * 0.3), round(C * 0.7)
    return {"head": list(range(a)), "medium": list(range(a, b)), "tail": list(range(b, C))}


def _to_tensor(raw: RawSplit) -> ImageSet:
    x = torch.from_numpy(np.ascontiguousarray(raw.images.transpose(0, 3, 1, 2)))
    return ImageSet(x, torch.from_numpy(raw.labels))


def load_lt_data(
    dataset: str,
    data_root: str | Path | None = None,
    imbalance: float | None = None,
    split_seed: int = 42,
    download: bool = False,
    image_size: int | None = None,
    n_per_class: int | None = None,
    show_progress: bool = False,
) -> LTData:
    """Load a dataset and apply the long-tailed split to its training set.

    Args:
        dataset: a registered dataset name (``cifar10``, ``cifar100``, ``digits``, ``imagefolder``).
        data_root: folder holding the data in any supported form.
        imbalance: imbalance factor IF = n_max / n_min (1 = balanced). None: 100 for the
            built-in datasets; for ``imagefolder`` the classes keep their own counts.
        split_seed: seed of the per-class ``RandomState`` (42 as in LAD).
        download: fetch CIFAR through torchvision first.
        image_size: ``imagefolder`` only: resize every image to this square side.
        n_per_class: ``imagefolder`` with ``imbalance``: the head count N of the rule
            (default: the largest class).
    """
    if dataset == "imagefolder":
        return load_imagefolder(data_root, imbalance, split_seed, image_size, n_per_class, show_progress)
    if image_size is not None or n_per_class is not None:
        raise DataError(f"image_size and n_per_class are options of dataset imagefolder, not {dataset}")
    imbalance = 100.0 if imbalance is None else imbalance
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
    counts = longtail_counts(info.n_per_class, info.num_classes, imbalance)
    _check_full_training_split(dataset, info, raw_train, counts, imbalance)
    idx = longtail_indices(raw_train.labels, info.num_classes, imbalance, info.n_per_class,
                           split_seed, raw_train.class_names)
    train = _to_tensor(raw_train)
    train = ImageSet(train.images[idx].contiguous(), train.labels[idx].contiguous())
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


def _check_full_training_split(dataset: str, info: DatasetInfo, raw: RawSplit, counts: list[int],
                               imbalance: float) -> None:
    """SPEC §1's rule draws each class's images from the *whole* balanced training set
    (``info.n_per_class`` a class). A copy with fewer images in a class gives the same split
    only when it holds exactly that split (each class ``counts[c]`` images, as
    ``shared/tools/lt_subset_tar.py`` writes for one imbalance factor); any other smaller copy
    would silently give another split, so it is refused, naming the counts and the factor a
    subset copy was made for (a copy with too few images in a class for the split is left to
    :func:`longtail_indices`, which names that class)."""
    have = np.bincount(raw.labels, minlength=info.num_classes)[: info.num_classes].tolist()
    if min(have) >= info.n_per_class or have == counts:
        return
    made_for = ""
    if have[-1] > 0 and have[0] == info.n_per_class:
        guess = info.n_per_class / have[-1]
        if longtail_counts(info.n_per_class, info.num_classes, guess) == have:
            made_for = (f"; they are the long-tailed split at imbalance {guess:g} (a subset copy), which "
                        f"loads only at that factor")
    if not made_for and any(h < c for h, c in zip(have, counts)):
        return  # too few images for the split: longtail_indices names the class
    raise DataError(
        f"the {dataset} training split at {raw.source} holds {have} images per class, not the "
        f"{info.n_per_class} per class that the long-tailed rule draws from, so imbalance {imbalance:g} "
        f"(which needs {counts}) would not give SPEC §1's split{made_for}: use the full copy"
    )


def channel_stats(images: torch.Tensor, chunk: int = 4096) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std (population) of uint8 ``N x C x H x W`` images scaled to [0, 1]."""
    c = images.shape[1]
    s1 = torch.zeros(c, dtype=torch.float64)
    s2 = torch.zeros(c, dtype=torch.float64)
    n = 0
    for i in range(0, len(images), chunk):
        x = images[i : i + chunk].to(torch.float64).div_(255.0).transpose(0, 1).reshape(c, -1)
        s1 += x.sum(1)
        s2 += (x * x).sum(1)
        n += x.shape[1]
    mean = s1 / n
    std = (s2 / n - mean * mean).clamp(min=1e-12).sqrt()
    return tuple(round(float(v), 6) for v in mean), tuple(round(float(v), 6) for v in std)


def load_imagefolder(data_root: str | Path | None, imbalance: float | None = None, split_seed: int = 42,
                     image_size: int | None = None, n_per_class: int | None = None,
                     show_progress: bool = False) -> LTData:
    """A user's image folder (see :mod:`ltdistill.data.imagefolder`) as :class:`LTData`.

    Without ``imbalance`` the training classes keep their own counts (the data as it
    is); with it SPEC §1's rule is imposed on top, N being ``n_per_class`` or the
    largest class. Mean and std come from the training split used.
    """
    from .imagefolder import load_split

    if data_root is None:
        raise DataError("dataset imagefolder needs --data-root DIR (with train/ and test/ or val/ inside)")
    if image_size is not None and image_size < 4:
        raise DataError(f"image size must be at least 4 px, got {image_size}")
    tr = load_split(data_root, "train", image_size, show_progress)
    te = load_split(data_root, "test", image_size, show_progress)
    C = len(tr.class_names)
    if C < 2:
        raise DataError(f"{tr.source} has {C} class: distillation needs at least two classes")
    unknown = sorted(set(te.class_names) - set(tr.class_names))
    if unknown:
        raise DataError(f"test class(es) {unknown} in {te.source} are not training classes")
    if set(te.class_names) != set(tr.class_names):
        missing = [c for c in tr.class_names if c not in te.class_names]
        raise DataError(f"the test split has no folder for training class(es) {missing}")
    remap = np.asarray([tr.class_names.index(c) for c in te.class_names], dtype=np.int64)
    te_labels = remap[te.labels]
    if te.images.shape[1:3] != tr.images.shape[1:3]:
        raise DataError(f"test images are {te.images.shape[1]}x{te.images.shape[2]} but training images "
                        f"{tr.images.shape[1]}x{tr.images.shape[2]}: pass --image-size N")
    te_images = te.images
    if te_images.shape[3] != tr.images.shape[3]:  # one split in colour, the other grey: RGB for both
        if tr.images.shape[3] == 1:
            raise DataError("the training images are greyscale but test images are in colour")
        te_images = np.repeat(te_images, 3, axis=3)
    natural = np.bincount(tr.labels, minlength=C)
    train = _to_tensor(RawSplit(tr.images, tr.labels, tr.class_names, tr.class_order, tr.source))
    if imbalance is not None:
        n = int(n_per_class or natural.max())
        idx = longtail_indices(tr.labels, C, imbalance, n, split_seed, tr.class_names)
        train = ImageSet(train.images[idx].contiguous(), train.labels[idx].contiguous())
        counts = longtail_counts(n, C, imbalance)
    else:
        if n_per_class is not None:
            raise DataError("n_per_class sets N of an imposed split: give --imbalance too")
        counts = [int(v) for v in natural]
    mean, std = channel_stats(train.images)
    size = int(train.images.shape[-1])
    info = DatasetInfo("imagefolder", C, int(max(counts)), size, int(train.images.shape[1]), mean, std, None,
                       groups="by-count")
    effective = max(counts) / max(1, min(counts))
    given = _read_groups(Path(data_root).expanduser(), tr.class_names)
    meta = {"class_order": tr.class_order, "source": tr.source, "imposed_imbalance": imbalance,
            "group_classes": given,
            "resized_to": image_size, "n_per_class": n_per_class, "greyscale_converted": tr.greyscale_converted,
            "test_source": te.source}
    return LTData(info=info, train=train, test=_to_tensor(RawSplit(te_images, te_labels, tr.class_names, "", "")),
                  class_names=list(tr.class_names), imbalance=float(effective), split_seed=int(split_seed),
                  class_counts=counts, meta=meta)


def _read_groups(root: Path, names: list[str]) -> dict[str, list[int]] | None:
    """``root/groups.json``: ``{"head": [class, ...], "medium": [...], "tail": [...]}`` by class
    name; every class in exactly one group. None when the file is absent."""
    f = root / "groups.json"
    if not f.is_file():
        return None
    try:
        given = json.loads(f.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{f} is not valid JSON: {e}") from None
    if not isinstance(given, dict) or set(given) - {"head", "medium", "tail"}:
        raise DataError(f"{f} must map head, medium and tail to lists of class names")
    index = {n: i for i, n in enumerate(names)}
    out, seen = {}, set()
    for g in ("head", "medium", "tail"):
        cls = given.get(g) or []
        unknown = [c for c in cls if c not in index]
        if unknown:
            raise DataError(f"{f}: {g} names unknown class(es) {unknown}")
        out[g] = sorted(index[c] for c in cls)
        seen |= set(cls)
    missing = [n for n in names if n not in seen]
    if missing or sum(len(v) for v in out.values()) != len(seen):
        raise DataError(f"{f}: every class must be in exactly one group (missing or repeated: {missing or 'repeated'})")
    return out


def data_from_record(record: dict, data_root: str | Path | None, show_progress: bool = False) -> LTData:
    """Rebuild the split a set or result was made from (its ``dataset`` record), and
    check that the class counts agree."""
    name = record["name"]
    if name == "tensors":
        raise DataError("this set was distilled from tensors in Python: evaluate it with ltdistill.evaluate_set")
    if name == "imagefolder":
        data = load_imagefolder(data_root, record.get("imposed_imbalance"), record["split_seed"],
                                record.get("resized_to"), record.get("n_per_class"), show_progress)
    else:
        data = load_lt_data(name, data_root, record["imbalance"], record["split_seed"])
    if data.class_counts != list(record["class_counts"]):
        raise DataError("the set's recorded class counts differ from the split rebuilt now (other data?)")
    return data


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
