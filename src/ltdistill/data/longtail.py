"""The long-tailed split, exactly as the LAD code builds it (SPEC §1)."""

from __future__ import annotations

import numpy as np

from ..errors import DataError


def longtail_counts(n_per_class: int, num_classes: int, imbalance: float) -> list[int]:
    """Per-class image counts of the exponential long-tailed profile.

    ``n_c = int(n_per_class * r ** (c / (C - 1)))`` with ``r = 1 / imbalance``, float64
    and Python ``int()`` truncation; class 0 is the head. ``imbalance == 1`` is balanced.
    """
    if imbalance < 1:
        raise DataError(f"imbalance factor must be >= 1, got {imbalance}")
    if num_classes < 1 or n_per_class < 1:
        raise DataError("need at least one class and one image per class")
    if num_classes == 1:
        return [n_per_class]
    r = 1.0 / float(imbalance)
    return [int(n_per_class * r ** (c / (num_classes - 1))) for c in range(num_classes)]


def longtail_indices(
    labels: np.ndarray,
    num_classes: int,
    imbalance: float,
    n_per_class: int,
    split_seed: int = 42,
    class_names: list[str] | None = None,
) -> np.ndarray:
    """Indices into ``labels`` of the long-tailed subset.

    For every class a *fresh* ``numpy.random.RandomState(split_seed)`` draws
    ``choice(n_available, n_c, replace=False)`` among that class's images in their
    original order. The returned indices are grouped by class and sorted within it.
    """
    labels = np.asarray(labels)
    counts = longtail_counts(n_per_class, num_classes, imbalance)
    out = []
    for c, n_c in enumerate(counts):
        idx_c = np.flatnonzero(labels == c)
        if len(idx_c) < n_c:
            name = class_names[c] if class_names else str(c)
            raise DataError(
                f"class {name!r} has {len(idx_c)} training images but the long-tailed split "
                f"at imbalance {imbalance:g} needs {n_c}"
            )
        pick = np.random.RandomState(split_seed).choice(len(idx_c), n_c, replace=False)
        out.append(idx_c[np.sort(pick)])
    return np.concatenate(out).astype(np.int64)
