"""torch.compile where it pays, eager where it does not or cannot."""

import pytest
import torch

from ltdistill import compiling
from ltdistill.config import apply_overrides
from ltdistill.errors import ConfigError
from ltdistill.evaluate import EvalConfig, train_net
from ltdistill.methods import distill, make_config


def test_should_compile_modes():
    assert not compiling.should_compile("off", 1e12)
    assert compiling.should_compile("on", 0)
    assert compiling.should_compile("auto", compiling.AUTO_MIN_WORK)
    assert not compiling.should_compile("auto", compiling.AUTO_MIN_WORK - 1)
    assert compiling.should_compile(True, 0) and not compiling.should_compile(False, 1e12)
    with pytest.raises(ConfigError, match="compile must be one of"):
        compiling.should_compile("fast", 0)


def test_auto_keeps_short_runs_eager_and_compiles_the_benchmark_scale():
    # the 8x8 demo's distillation (200 it, 10 classes, 128 real + 5 syn) stays eager ...
    assert not compiling.should_compile("auto", 200 * 10 * (128 + 5) * 8 * 8)
    # ... the CPU benchmark's (1000 it, 10 classes, 64 real + 10 syn, 32x32) compiles
    assert compiling.should_compile("auto", 1000 * 10 * (64 + 10) * 32 * 32)


def test_failed_compilation_falls_back_to_eager_with_a_warning(monkeypatch):
    def broken_compile(fn):
        def fail(*a, **k):
            raise RuntimeError("no C++ compiler")
        return fail

    monkeypatch.setattr(torch, "compile", broken_compile)
    f = compiling.maybe_compile(lambda x: x * 2, True, "double")
    with pytest.warns(RuntimeWarning, match="torch.compile of double failed.*running eager"):
        assert f(torch.ones(2)).tolist() == [2.0, 2.0]
    assert f(torch.ones(1)).tolist() == [2.0]  # later calls go straight to eager


def test_compiled_distillation_matches_eager(digits_lt):
    """Compiled trunk, same loss and images as eager (fp32; tolerance: float reassociation)."""
    base = ["iterations=3", "batch_real=32", "checkpoint_every=0", "device=cpu", "lr_img=1"]
    eager = distill(apply_overrides(make_config("csdm", ipc=2, seed=3), [*base, "compile=off"]), digits_lt)
    comp = distill(apply_overrides(make_config("csdm", ipc=2, seed=3), [*base, "compile=on"]), digits_lt)
    assert comp.extra["final_loss"] == pytest.approx(eager.extra["final_loss"], rel=1e-4)
    assert torch.allclose(comp.images, eager.images, atol=1e-4)


def test_compiled_evaluation_training_matches_eager(digits_lt):
    d = digits_lt
    x, y = d.normalize(d.train.images[:64]), d.train.labels[:64]
    runs = {}
    for mode in ("off", "on"):
        net, loss = train_net(x, y, d, EvalConfig(epochs=3, batch_size=32, device="cpu", compile=mode), seed=1)
        runs[mode] = (net(x[:8]).detach(), loss)
    assert runs["on"][1] == pytest.approx(runs["off"][1], rel=1e-4)
    assert torch.allclose(runs["on"][0], runs["off"][0], atol=1e-3)
