"""The GPU-grade parts of the loop, checked on CPU: the in-place trunk re-initialisation
equals a freshly built net, the deferred-synchronisation mode gives the same set and
still catches NaN (naming the iteration and rolling back), threads and generators."""

from __future__ import annotations

import pytest
import torch

import ltdistill as ld
from ltdistill.errors import ConfigError, TrainingError
from ltdistill.nets import Reinit, init_net
from ltdistill.utils import configure_threads, device_generator

from .test_matching import cfg_for, nan_from_iteration_3


@pytest.mark.parametrize("name", ["convnet", "convnet_bn", "resnet18", "vgg11", "alexnet"])
def test_in_place_reinit_equals_a_fresh_net(name):
    net = init_net(name, 3, 10, 32, 0).to(memory_format=torch.channels_last)
    r = Reinit(net)
    for seed in (1, 2**40 + 7):
        r(seed)
        fresh = init_net(name, 3, 10, 32, seed)
        for a, b in zip(net.parameters(), fresh.parameters()):
            assert torch.equal(a, b)


def test_reinit_refuses_modules_it_cannot_reset():
    class Odd(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.p = torch.nn.Parameter(torch.zeros(3))

    with pytest.raises(ConfigError, match="no reset_parameters"):
        Reinit(torch.nn.Sequential(torch.nn.Linear(2, 2), Odd()))


def test_init_net_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    init_net("convnet", 3, 10, 32, 7)
    assert torch.equal(torch.rand(3), before)


@pytest.mark.parametrize("method", ["dm", "csdm"])
def test_deferred_sync_gives_the_same_set(digits_lt, method):
    a = ld.distill(cfg_for(method, "iterations=6", "sync=step"), digits_lt)
    b = ld.distill(cfg_for(method, "iterations=6", "sync=log", "log_every=4"), digits_lt)
    assert torch.equal(a.images, b.images)


def test_deferred_sync_finds_nan_names_it_and_rolls_back(tmp_path, digits_lt, monkeypatch):
    nan_from_iteration_3(monkeypatch)
    with pytest.raises(TrainingError, match="NaN/inf at iteration 3 \\(found at the check after iteration 4\\); "
                                            "the images were rolled back to iteration 2"):
        ld.distill(cfg_for("dm", "iterations=8", "checkpoint_every=2", "log_every=4", "sync=log"), digits_lt,
                   run_prefix=str(tmp_path / "n"))
    state = torch.load(tmp_path / "n.ckpt", weights_only=True)
    assert state["iteration"] == 2 and torch.isfinite(state["images"]).all()


def test_sync_option_is_validated(digits_lt):
    with pytest.raises(ConfigError, match="sync must be"):
        ld.distill(cfg_for("dm", "iterations=1", "sync=sometimes"), digits_lt)


def test_threads():
    before = torch.get_num_threads()
    try:
        assert configure_threads(torch.device("cpu"), 0) == before  # CPU, auto: untouched
        assert configure_threads(torch.device("cpu"), 1) == 1
        with pytest.raises(ConfigError):
            configure_threads(torch.device("cpu"), -1)
    finally:
        torch.set_num_threads(before)


def test_device_generator_is_seeded():
    a = torch.rand(4, generator=device_generator("cpu", 3, "freqs", 0))
    b = torch.rand(4, generator=device_generator("cpu", 3, "freqs", 0))
    c = torch.rand(4, generator=device_generator("cpu", 3, "freqs", 1))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_gpu_bench_without_a_gpu_writes_nothing(tmp_path, capsys):
    from .test_bench_tools import _bench

    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the script would measure")
    gpu = _bench("gpu")
    assert gpu.main(["--data-root", str(tmp_path), "--out", str(tmp_path / "gpu.json")]) == 0
    assert "no CUDA GPU" in capsys.readouterr().out and not (tmp_path / "gpu.json").exists()


def test_eval_training_is_unchanged_on_cpu(digits_lt):
    """The per-epoch read-back is a GPU path; on CPU the trained nets and losses are as before."""
    from ltdistill.evaluate import train_nets

    x = digits_lt.normalize(digits_lt.train.images[:64])
    y = digits_lt.train.labels[:64]
    cfg = ld.EvalConfig(epochs=2, runs=1, device="cpu", batch_size=32)
    seen = []
    nets, last = train_nets(x, y, digits_lt, cfg, [1], on_epoch=lambda ep, losses, lr: seen.append((ep, lr)))
    assert len(last) == 1 and last[0] > 0 and seen == [(1, 0.01), (2, 0.001)]
