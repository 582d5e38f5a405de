import pytest
import torch

from ltdistill.calibration import adjusted_probs, adsa_search, confidence_spread
from ltdistill.errors import ConfigError

COUNTS = torch.tensor([5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50], dtype=torch.double)
PRIOR = COUNTS / COUNTS.sum()


def biased_logits(seed=0, per_class=10, margin=2.0):
    """Logits whose only class bias is exactly log π: f = z + log π, z class-symmetric."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(10).repeat_interleave(per_class)
    z = torch.randn(len(labels), 10, generator=g, dtype=torch.double) * 0.3
    z[torch.arange(len(labels)), labels] += margin
    # make z exactly symmetric across classes: same noise pattern permuted per class
    base = z[:per_class].clone()
    for c in range(10):
        perm = [(k - c) % 10 for k in range(10)]
        z[c * per_class:(c + 1) * per_class] = base[:, perm]
    return z + torch.log(PRIOR), labels


def test_search_recovers_tau_one():
    logits, labels = biased_logits()
    res = adsa_search(logits, labels, PRIOR)
    assert res.tau == pytest.approx(1.0, abs=0.002)
    assert res.spread < 1e-6 < confidence_spread(logits, labels, PRIOR, 0.0)
    assert len(res.curve) == 61 and res.curve[0][0] == 0.0


def test_tau_zero_leaves_labels_unchanged():
    logits, _ = biased_logits(1)
    assert torch.allclose(adjusted_probs(logits, PRIOR, 0.0), torch.softmax(logits, 1))


def test_calibrated_labels_are_distributions():
    logits, _ = biased_logits(2)
    p = adjusted_probs(logits, PRIOR, 1.7, temperature=2.0)
    assert (p >= 0).all() and torch.allclose(p.sum(1), torch.ones(len(p), dtype=p.dtype))


def test_search_is_deterministic():
    logits, labels = biased_logits(3)
    logits = logits + torch.randn(logits.shape, generator=torch.Generator().manual_seed(0), dtype=torch.double)
    a, b = adsa_search(logits, labels, PRIOR), adsa_search(logits, labels, PRIOR)
    assert a.tau == b.tau and a.curve == b.curve


def test_bad_prior():
    logits, labels = biased_logits()
    with pytest.raises(ConfigError, match="prior"):
        adsa_search(logits, labels, PRIOR[:5])


def test_teacher_label_cli(tmp_path, capsys):
    from ltdistill.artifact import load_set
    from ltdistill.cli import main

    s, t = tmp_path / "s.pt", tmp_path / "t.pt"
    assert main(["distill", "--dataset", "digits", "--imbalance", "10", "--ipc", "3", "--out", str(s), "--quiet"]) == 0
    assert main(["teacher", "--dataset", "digits", "--imbalance", "10", "--epochs", "5", "--out", str(t),
                 "--quiet"]) == 0
    out = tmp_path / "l.pt"
    assert main(["label", str(s), "--teacher", str(t), "--out", str(out), "--calibrate", "adsa"]) == 0
    lab = load_set(out)
    assert lab.soft_labels.shape == (30, 10) and torch.allclose(lab.soft_labels.sum(1), torch.ones(30))
    assert 0 <= lab.extra["tau"] <= 3 and len(lab.extra["tau_curve"]) == 61
    fixed = tmp_path / "f.pt"
    assert main(["label", str(s), "--teacher", str(t), "--out", str(fixed), "--tau", "0"]) == 0
    raw = load_set(fixed)
    assert torch.allclose(raw.soft_labels, torch.softmax(raw.extra["teacher_logits"], 1), atol=1e-6)
    capsys.readouterr()
    # errors: missing set, teacher with a different class count
    assert main(["label", str(tmp_path / "nope.pt"), "--teacher", str(t), "--out", str(out)]) == 2
    assert "no distilled set" in capsys.readouterr().err
    td = torch.load(t, weights_only=True)
    td["class_names"] = td["class_names"][:5]
    torch.save(td, t)
    assert main(["label", str(s), "--teacher", str(t), "--out", str(out)]) == 2
    assert "teacher has 5 classes but the set has 10" in capsys.readouterr().err


def test_multiformation_set_gets_one_soft_label_per_decoded_tile(digits_lt, tmp_path):
    """A factor-2 set trains on 4 decoded tiles per stored image: the teacher labels each tile."""
    from ltdistill.artifact import load_set, save_set
    from ltdistill.config import apply_overrides
    from ltdistill.evaluate import EvalConfig, evaluate_set
    from ltdistill.methods import distill, make_config
    from ltdistill.multiformation import decode
    from ltdistill.teacher import label_set, teacher_logits, train_teacher

    cfg = apply_overrides(make_config("dm", ipc=2, seed=1),
                          ["iterations=1", "batch_real=16", "factor=2", "checkpoint_every=0", "device=cpu"])
    s = distill(cfg, digits_lt)
    assert s.factor == 2
    t = train_teacher(digits_lt, EvalConfig(epochs=2, device="cpu"), seed=0)
    out = label_set(s, t, calibrate="adsa", device="cpu")
    n = len(s.labels)
    assert out.soft_labels.shape == (4 * n, 10)
    tiles = decode(s.images, 2)
    assert torch.allclose(out.extra["teacher_logits"], teacher_logits(t, tiles, "cpu"))
    assert torch.allclose(out.soft_labels.sum(1), torch.ones(4 * n), atol=1e-5)
    save_set(out, tmp_path / "s.pt", grid=False)
    back = load_set(tmp_path / "s.pt")
    x, y = back.training_tensors(soft=True)
    assert x.shape[0] == y.shape[0] == 4 * n
    res = evaluate_set(back, digits_lt, EvalConfig(epochs=1, runs=1, device="cpu"))
    assert res.label_track == "soft"
