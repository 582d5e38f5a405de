import numpy as np
import pytest
import torch

from ltdistill.data import longtail_counts, longtail_indices
from ltdistill.errors import DataError

SPEC = {
    10: [5000, 3871, 2997, 2320, 1796, 1391, 1077, 834, 645, 500],
    100: [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50],
    200: [5000, 2775, 1540, 854, 474, 263, 146, 81, 45, 25],
}


@pytest.mark.parametrize("imb", sorted(SPEC))
def test_cifar10_counts_match_spec(imb):
    assert longtail_counts(5000, 10, imb) == SPEC[imb]


def test_cifar10_if50_and_totals():
    c = longtail_counts(5000, 10, 50)
    assert c[0] == 5000 and c[-1] == 100 and sum(c) == 13996
    assert sum(SPEC[10]) == 20431 and sum(SPEC[100]) == 12406 and sum(SPEC[200]) == 11203


def test_cifar100_if100():
    c = longtail_counts(500, 100, 100)
    assert sum(c) == 10847 and c[-1] == 5 and c[0] == 500


def test_balanced():
    assert longtail_counts(5000, 10, 1) == [5000] * 10


def test_indices_follow_lad_rule():
    rng = np.random.RandomState(0)
    labels = rng.randint(0, 3, size=600)
    idx = longtail_indices(labels, 3, 4, 150, split_seed=42)
    for c, n_c in enumerate(longtail_counts(150, 3, 4)):
        pool = np.flatnonzero(labels == c)
        expect = np.sort(pool[np.random.RandomState(42).choice(len(pool), n_c, replace=False)])
        got = idx[labels[idx] == c]
        assert np.array_equal(got, expect)


def test_short_class_is_a_clear_error():
    labels = np.array([0] * 10 + [1] * 2)
    with pytest.raises(DataError, match="class '1' has 2 training images"):
        longtail_indices(labels, 2, 2, 10)


def test_imbalance_below_one_rejected():
    with pytest.raises(DataError, match="imbalance"):
        longtail_counts(10, 2, 0.5)


def test_holdout_validation_is_a_disjoint_per_class_carve(digits_lt):
    from ltdistill.data import holdout_validation

    d = digits_lt
    v = holdout_validation(d, 0.2, seed=3)
    assert len(v.train) + len(v.test) == len(d.train)
    for c, n in enumerate(d.class_counts):
        k = len(v.test.indices_of(c))
        assert k == min(max(1, round(0.2 * n)), n - 1)
        assert v.class_counts[c] == n - k == len(v.train.indices_of(c))
    # disjoint and drawn from the training images only (rows compared as bytes)
    rows = lambda s: {bytes(x.numpy().tobytes()) + bytes([int(y)]) for x, y in zip(s.images, s.labels)}  # noqa: E731
    tr, va, full = rows(v.train), rows(v.test), rows(d.train)
    assert not (tr & va) and (tr | va) <= full
    assert not (va & rows(d.test))
    # deterministic in the seed, different across seeds; the original data is untouched
    assert torch.equal(holdout_validation(d, 0.2, seed=3).test.images, v.test.images)
    assert not torch.equal(holdout_validation(d, 0.2, seed=4).test.images, v.test.images)
    assert v.meta["eval_split"] == "validation" and d.meta.get("eval_split") is None


@pytest.mark.parametrize("frac", [0, 1, -0.5, 1.5])
def test_holdout_validation_rejects_bad_fraction(digits_lt, frac):
    from ltdistill.data import holdout_validation

    with pytest.raises(DataError, match="fraction"):
        holdout_validation(digits_lt, frac)
