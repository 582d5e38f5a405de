import numpy as np
import pytest

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
