import pytest
import torch

from ltdistill.config import apply_overrides
from ltdistill.errors import ConfigError, DataError
from ltdistill.methods import distill, list_methods, make_config
from ltdistill.methods.coreset import herding_order, kcenter_order
from ltdistill.methods.matching import MatchConfig


@pytest.mark.parametrize("method", list_methods())
def test_every_method_gives_a_balanced_reproducible_set(method, digits_lt, tmp_path):
    cfg = make_config(method, ipc=4, seed=3, device="cpu")
    if isinstance(cfg.options, MatchConfig):  # a few iterations of the iterative methods
        cfg = apply_overrides(cfg, ["iterations=3", "batch_real=32", "checkpoint_every=0"])
    if method == "lad":  # tiny experts and a short matching
        cfg = apply_overrides(cfg, ["iterations=2", "syn_steps=2", "experts.epochs=3", "experts.cls_epochs=2",
                                    "max_start_epoch=1", "experts.num_experts=1", f"expert_dir={tmp_path}"])
    a, b = distill(cfg, digits_lt), distill(cfg, digits_lt)
    assert a.images.shape == (40, 1, 8, 8)
    assert torch.bincount(a.labels).tolist() == [4] * 10
    assert torch.isfinite(a.images).all()
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)


def test_seed_changes_random_set(digits_lt):
    a = distill(make_config("random", ipc=4, seed=0), digits_lt)
    b = distill(make_config("random", ipc=4, seed=1), digits_lt)
    assert not torch.equal(a.images, b.images)


def test_random_repeats_short_classes_cyclically(digits_lt):
    n_tail = digits_lt.class_counts[-1]  # 12 images at IF 10
    s = distill(make_config("random", ipc=n_tail + 5), digits_lt)
    tail = s.images[s.labels == 9]
    assert torch.equal(tail[n_tail:], tail[:5])
    assert len({tuple(t.flatten().tolist()) for t in tail}) == n_tail


def test_fill_error(digits_lt):
    with pytest.raises(DataError, match="class '9' has 12 images but IPC is 14"):
        distill(make_config("random", ipc=14, fill="error"), digits_lt)


def test_ipc_zero_and_unknown_method(digits_lt):
    with pytest.raises(ConfigError, match="ipc must be at least 1"):
        distill(make_config("random", ipc=0), digits_lt)
    with pytest.raises(ConfigError, match="unknown method 'dmx'"):
        make_config("dmx")


def test_selected_images_are_real_training_images(digits_lt):
    s = distill(make_config("herding", ipc=3), digits_lt)
    real = digits_lt.normalize(digits_lt.train.images)
    for img, y in zip(s.images, s.labels):
        pool = real[digits_lt.train.labels == y]
        assert (pool - img).abs().flatten(1).max(1).values.min() < 1e-6


def test_kcenter_against_brute_force():
    g = torch.Generator().manual_seed(0)
    f = torch.randn(30, 4, generator=g, dtype=torch.double)
    order = kcenter_order(f, 5, first=2).tolist()
    chosen = [2]
    while len(chosen) < 5:
        d = [min(float((f[i] - f[j]).norm()) for j in chosen) for i in range(30)]
        chosen.append(max(range(30), key=lambda i: d[i]))
    assert order == chosen


def test_herding_against_brute_force():
    g = torch.Generator().manual_seed(1)
    f = torch.randn(20, 3, generator=g, dtype=torch.double)
    mu = f.mean(0)
    chosen = []
    for t in range(1, 6):
        rest = [i for i in range(20) if i not in chosen]
        chosen.append(min(rest, key=lambda i: float(((mu - (f[chosen].sum(0) + f[i]) / t) ** 2).sum())))
    assert herding_order(f, 5).tolist() == chosen
