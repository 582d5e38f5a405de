"""The shared distribution-matching loop: gradients, resume, NaN handling, logs."""

import json

import pytest
import torch

from ltdistill.config import apply_overrides
from ltdistill.errors import ConfigError, TrainingError
from ltdistill.methods import distill, dm_family, list_methods, make_config
from ltdistill.methods.matching import MatchConfig

MATCHING = [m for m in list_methods() if isinstance(make_config(m).options, MatchConfig)]
SMALL = ["batch_real=32", "checkpoint_every=0", "device=cpu"]


def cfg_for(method, *extra, ipc=2):
    return apply_overrides(make_config(method, ipc=ipc, seed=7), SMALL + list(extra))


def test_family_is_registered():
    assert {"dm", "mmd", "sdd", "csdm", "ncfm"} <= set(MATCHING)


@pytest.mark.parametrize("method", MATCHING + ["ncfm-adv"])
def test_gradients_reach_pixels_and_change_images(method, digits_lt):
    extra = ["adversarial=true"] if method == "ncfm-adv" else []
    m = "ncfm" if method == "ncfm-adv" else method
    before = distill(cfg_for(m, "iterations=0", *extra), digits_lt)
    after = distill(cfg_for(m, "iterations=2", "lr_img=0.1", *extra), digits_lt)
    assert torch.equal(before.labels, after.labels)
    diff = (after.images - before.images).abs().flatten(1).sum(1)
    assert (diff > 0).all()  # every synthetic image of every class got a gradient


def test_resume_equals_uninterrupted(tmp_path, digits_lt, monkeypatch):
    full = distill(cfg_for("csdm", "iterations=6", "checkpoint_every=2"), digits_lt, run_prefix=str(tmp_path / "a"))
    original = dm_family._CSDM.class_loss
    calls = {"n": 0}

    def crash_in_iteration_4(self, c, real, syn):
        calls["n"] += 1
        if calls["n"] > 3 * 10 + 5:  # part-way through iteration index 3
            raise KeyboardInterrupt
        return original(self, c, real, syn)

    monkeypatch.setattr(dm_family._CSDM, "class_loss", crash_in_iteration_4)
    with pytest.raises(KeyboardInterrupt):
        distill(cfg_for("csdm", "iterations=6", "checkpoint_every=2"), digits_lt, run_prefix=str(tmp_path / "b"))
    state = torch.load(tmp_path / "b.ckpt", weights_only=True)
    assert state["iteration"] == 2  # at most the work since the last checkpoint is lost
    monkeypatch.setattr(dm_family._CSDM, "class_loss", original)
    resumed = distill(cfg_for("csdm", "iterations=6", "checkpoint_every=2", "resume=true"), digits_lt,
                      run_prefix=str(tmp_path / "b"))
    assert resumed.extra["iterations_run"] == 4
    assert torch.equal(full.images, resumed.images)
    log = [json.loads(line) for line in (tmp_path / "b.loss.jsonl").read_text().splitlines()]
    ref = [json.loads(line) for line in (tmp_path / "a.loss.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in log] == [r["iteration"] for r in ref] == [6]
    assert log[-1]["loss"] == ref[-1]["loss"]


def test_resume_refuses_another_runs_checkpoint(tmp_path, digits_lt):
    distill(cfg_for("dm", "iterations=2", "checkpoint_every=1"), digits_lt, run_prefix=str(tmp_path / "r"))
    with pytest.raises(ConfigError, match="different run"):
        distill(cfg_for("dm", "iterations=4", "resume=true", "lr_img=5"), digits_lt, run_prefix=str(tmp_path / "r"))


def nan_from_iteration_3(monkeypatch) -> None:
    """Make dm's per-class loss NaN from iteration 3 on (10 classes: from the 31st call)."""
    original = dm_family._LinearMMD.class_loss
    calls = {"n": 0}

    def nan_in_iteration_3(self, c, real, syn):
        calls["n"] += 1
        out = original(self, c, real, syn)
        return out * float("nan") if calls["n"] > 30 else out

    monkeypatch.setattr(dm_family._LinearMMD, "class_loss", nan_in_iteration_3)


def test_nan_loss_stops_with_iteration_and_keeps_checkpoint(tmp_path, digits_lt, monkeypatch):
    nan_from_iteration_3(monkeypatch)
    with pytest.raises(TrainingError, match="loss is nan at iteration 3"):
        distill(cfg_for("dm", "iterations=5", "checkpoint_every=2"), digits_lt, run_prefix=str(tmp_path / "n"))
    state = torch.load(tmp_path / "n.ckpt", weights_only=True)
    assert state["iteration"] == 2 and torch.isfinite(state["images"]).all()


def test_loss_log_and_same_seed_same_set(tmp_path, digits_lt):
    a = distill(cfg_for("sdd", "iterations=4", "log_every=1"), digits_lt, run_prefix=str(tmp_path / "s"))
    b = distill(cfg_for("sdd", "iterations=4", "log_every=1"), digits_lt)
    assert torch.equal(a.images, b.images)
    rows = [json.loads(line) for line in (tmp_path / "s.loss.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [1, 2, 3, 4] and all(r["loss"] > 0 for r in rows)


def test_bad_options(digits_lt):
    with pytest.raises(ConfigError, match="optimizer"):
        distill(cfg_for("dm", "iterations=1", "optimizer=lbfgs"), digits_lt)
    with pytest.raises(ConfigError, match="init"):
        distill(cfg_for("dm", "iterations=1", "init=zeros"), digits_lt)
    with pytest.raises(ConfigError, match=r"\(0, 1\)"):
        distill(cfg_for("csdm", "iterations=1", "alpha_head=1.5"), digits_lt)


@pytest.mark.parametrize("method", MATCHING)
def test_fast_path_computes_the_straightforward_loss(method, digits_lt):
    """One iteration, fp32: the batched channels-last path gives the per-class path's loss
    (relative 1e-5) and the same update (relative difference of the pixel updates < 1e-3)."""
    init = distill(cfg_for(method, "iterations=0", ipc=3), digits_lt)
    fast = distill(cfg_for(method, "iterations=1", "fast=true", ipc=3), digits_lt)
    slow = distill(cfg_for(method, "iterations=1", "fast=false", "channels_last=false", ipc=3), digits_lt)
    assert fast.extra["final_loss"] == pytest.approx(slow.extra["final_loss"], rel=1e-5)
    du_fast, du_slow = fast.images - init.images, slow.images - init.images
    assert float((du_fast - du_slow).norm() / du_slow.norm()) < 1e-3


@pytest.mark.parametrize("fast", ["false", "true"])
def test_bf16_option_is_applied_on_either_path(fast, digits_lt):
    """bf16 really changes the arithmetic (different images from fp32) on both paths, while the
    loss stays close to fp32's (relative 5 %)."""
    bf = distill(cfg_for("csdm", "iterations=2", "bf16=true", f"fast={fast}"), digits_lt)
    fp = distill(cfg_for("csdm", "iterations=2", f"fast={fast}"), digits_lt)
    assert torch.isfinite(bf.images).all()
    assert not torch.equal(bf.images, fp.images)
    assert bf.extra["final_loss"] == pytest.approx(fp.extra["final_loss"], rel=0.05)


def test_mix_matches_head_classes_with_dm_and_the_rest_with_csdm(digits_lt):
    """mix's per-class loss is dm's linear MMD on the dm_groups classes (at dm's weight) and
    csdm's loss on the others (same α map, same frequencies)."""
    from types import SimpleNamespace

    from ltdistill.discrepancy import csdm_class_loss, linear_mmd
    from ltdistill.methods.matching import DISCREPANCIES

    cfg = make_config("mix", ipc=2).options
    ctx = SimpleNamespace(device=torch.device("cpu"), seed=0)
    m = DISCREPANCIES.get("mix")(cfg, digits_lt, ctx, 16)
    ref = DISCREPANCIES.get("csdm")(make_config("csdm", ipc=2).options, digits_lt, ctx, 16)
    g = torch.Generator().manual_seed(1)
    m.begin(0, torch.Generator().manual_seed(2))
    real, syn = torch.randn(8, 16, generator=g), torch.randn(4, 16, generator=g)
    head = digits_lt.groups()["head"]
    assert m.dm_classes == set(head)
    for c in range(10):
        got = m.class_loss(c, real, syn) * cfg.loss_scale  # the loop multiplies by loss_scale
        want = (linear_mmd(real, syn) if c in head
                else csdm_class_loss(real, syn, m.w, ref.alphas[c], cfg.eps) * cfg.loss_scale)
        assert torch.allclose(got, want)
    with pytest.raises(ConfigError, match="dm_groups"):
        DISCREPANCIES.get("mix")(apply_overrides(make_config("mix", ipc=2), ["dm_groups=heads"]).options,
                                 digits_lt, ctx, 16)
