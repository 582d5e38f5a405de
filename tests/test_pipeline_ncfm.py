"""The second pipeline (SPEC §4b): multi-formation, extractor pool, evaluation profile."""

import pytest
import torch
import torch.nn.functional as F

from ltdistill.artifact import load_set, save_set
from ltdistill.config import apply_overrides
from ltdistill.errors import ConfigError
from ltdistill.evaluate import EvalConfig, cutmix, evaluate_set, random_resized_crop
from ltdistill.extractors import interpolate, pool_path, train_pool
from ltdistill.methods import distill, make_config
from ltdistill.multiformation import decode, encode


def test_decode_tiles_in_row_major_order():
    x = torch.zeros(1, 1, 4, 4)
    x[0, 0, :2, :2], x[0, 0, :2, 2:], x[0, 0, 2:, :2], x[0, 0, 2:, 2:] = 1, 2, 3, 4
    out = decode(x, 2)
    assert out.shape == (4, 1, 4, 4)
    assert [float(t.mean()) for t in out] == [1, 2, 3, 4]  # constant tiles upsample to constants


def test_encode_inverts_decode_on_tile_content():
    g = torch.Generator().manual_seed(0)
    imgs = torch.rand(8, 3, 8, 8, generator=g)
    mosaics = encode(imgs, 2)
    assert mosaics.shape == (2, 3, 8, 8)
    small = F.avg_pool2d(imgs, 2)
    assert torch.allclose(mosaics[0, :, :4, 4:], small[1]) and torch.allclose(mosaics[1, :, 4:, 4:], small[7])
    # decode(encode(x)) recovers exactly the bilinear upsampling of the downsampled images
    assert torch.allclose(decode(mosaics, 2), F.interpolate(small, size=(8, 8), mode="bilinear"), atol=1e-6)
    assert torch.equal(encode(imgs, 1), imgs) and torch.equal(decode(imgs, 1), imgs)
    with pytest.raises(ConfigError, match="divide"):
        decode(torch.zeros(1, 1, 5, 5), 2)


def test_decode_is_differentiable():
    x = torch.rand(1, 1, 4, 4, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: decode(t, 2), (x,))


def test_interpolate_weights():
    init = {"w": torch.zeros(3), "n": torch.tensor(1)}
    trained = {"w": torch.ones(3) * 4, "n": torch.tensor(7)}
    out = interpolate(init, trained, 0.25)
    assert torch.allclose(out["w"], torch.full((3,), 3.0)) and int(out["n"]) == 7
    assert torch.equal(interpolate(init, trained, 0.0)["w"], trained["w"])
    assert torch.equal(interpolate(init, trained, 1.0)["w"], init["w"])


def test_pool_is_cached_and_reused(tmp_path, digits_lt, monkeypatch):
    a = train_pool(digits_lt, "convnet", 2, 1, seed=3, device="cpu", root=str(tmp_path))
    assert pool_path(digits_lt, "convnet", 2, 1, 3, str(tmp_path)).is_file()
    import ltdistill.extractors as ex

    monkeypatch.setattr(ex, "train_net", lambda *a, **k: (_ for _ in ()).throw(AssertionError("retrained")))
    b = train_pool(digits_lt, "convnet", 2, 1, seed=3, device="cpu", root=str(tmp_path))
    assert all(torch.equal(a[0][k], b[0][k]) for k in a[0])


@pytest.mark.parametrize("method", ["csdm", "ncfm"])
def test_second_pipeline_end_to_end(method, tmp_path, digits_lt):
    cfg = apply_overrides(make_config(method, ipc=2, seed=1), [
        "iterations=3", "batch_real=32", "checkpoint_every=0", "device=cpu", "extractor=pool", "pool_size=2",
        "pool_epochs=1", f"pool_dir={tmp_path}", "factor=2", "calib_weight=1", "pixel_space=unit",
        "optimizer=adamw", "lr_img=0.01", "per_class_steps=true"])
    s = distill(cfg, digits_lt)
    assert s.images.shape == (20, 1, 8, 8) and s.factor == 2
    pix = s.denormalized()
    raw = s.images * torch.tensor(s.std).view(1, -1, 1, 1) + torch.tensor(s.mean).view(1, -1, 1, 1)
    assert raw.min() >= -1e-5 and raw.max() <= 1 + 1e-5 and torch.allclose(pix, raw.clamp(0, 1))
    back = load_set(save_set(s, tmp_path / "s.pt"))
    x, y = back.training_tensors()
    assert back.factor == 2 and x.shape == (80, 1, 8, 8) and torch.bincount(y).tolist() == [8] * 10
    ecfg = apply_overrides(EvalConfig(), ["epochs=3", "runs=1", "device=cpu", "optimizer=adamw", "lr=0.001",
                                          "schedule=multistep", "batch_size=32", "cutmix_p=0.5", "rrc=true"])
    assert evaluate_set(back, digits_lt, ecfg).acc_mean > 0


def test_calibration_needs_a_pool(digits_lt):
    cfg = apply_overrides(make_config("csdm", ipc=1), ["iterations=1", "calib_weight=1"])
    with pytest.raises(ConfigError, match="extractor=pool"):
        distill(cfg, digits_lt)


def test_cutmix_and_rrc():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, 3, 16, 16)
    y = F.one_hot(torch.arange(6), 6).float()
    xm, ym = cutmix(x, y, g)
    assert xm.shape == x.shape and torch.allclose(ym.sum(1), torch.ones(6))
    assert random_resized_crop(x, g).shape == x.shape


# ---------------------------------------------------------------- NCFM's code (SPEC §4c)
CODE = ["iterations=1", "batch_real=16", "checkpoint_every=0", "device=cpu", "extractor=pool", "pool_size=2",
        "pool_epochs=1", "calib_weight=1", "pixel_space=unit", "optimizer=adamw", "lr_img=0.01",
        "per_class_steps=true"]


def _record_steps(monkeypatch):
    """Every image-optimiser step: which class rows (2 images per class) had a gradient."""
    steps = []
    real_step = torch.optim.AdamW.step

    def step(self, *a, **k):
        g = self.param_groups[0]["params"][0].grad
        steps.append(sorted({i // 2 for i in g.flatten(1).abs().sum(1).nonzero().flatten().tolist()}))
        return real_step(self, *a, **k)

    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    return steps


def test_calibration_step_is_its_own_optimiser_step(tmp_path, digits_lt, monkeypatch):
    """calib_mode=step: the matching loss's gradients and the calibration loss's reach the
    images in separate optimiser steps (matching first, class by class, then calibration);
    fused: one step per class carries both."""
    steps = _record_steps(monkeypatch)
    base = [*CODE, f"pool_dir={tmp_path}"]
    distill(apply_overrides(make_config("dm", ipc=2, seed=1), [*base, "calib_mode=step", "loss_scale=0"]), digits_lt)
    assert steps == [[]] * 10 + [[c] for c in range(10)]  # zero matching gradient, then calibration only
    steps.clear()
    distill(apply_overrides(make_config("dm", ipc=2, seed=1), [*base, "calib_mode=step", "calib_weight=1e-30"]),
            digits_lt)
    assert steps[:10] == [[c] for c in range(10)] and len(steps) == 20  # matching steps, then calibration steps
    steps.clear()
    distill(apply_overrides(make_config("dm", ipc=2, seed=1), [*base, "calib_mode=fused", "loss_scale=0"]), digits_lt)
    assert steps == [[c] for c in range(10)]  # fused: the calibration gradient rides in the class's one step
    steps.clear()
    distill(apply_overrides(make_config("dm", ipc=2, seed=1), [*base, "calib_mode=step", "loss_scale=0",
                                                               "per_class_steps=false"]), digits_lt)
    assert steps == [[], list(range(10))]  # joint: one matching step, then one calibration step


def test_pool_inits_are_the_pool_models_starting_points(digits_lt):
    """pool_inits re-derives what train_net starts pool model k from: with lr 0 training
    leaves the weights there."""
    from ltdistill.evaluate import train_net
    from ltdistill.extractors import pool_inits
    from ltdistill.utils import derive_seed

    inits = pool_inits(digits_lt, "convnet", 2, seed=5)
    cfg = EvalConfig(epochs=1, runs=1, device="cpu", lr=0.0, weight_decay=0.0, lr_decay_at_half=False)
    for k in range(2):
        net, _ = train_net(digits_lt.normalize(digits_lt.train.images[:64]), digits_lt.train.labels[:64], digits_lt,
                           cfg, derive_seed(5, "pool", k))
        assert all(torch.equal(t.cpu(), inits[k][n]) for n, t in net.state_dict().items())
    assert not torch.equal(inits[0]["classifier.weight"], inits[1]["classifier.weight"])


@pytest.mark.parametrize("interp_init", ["fresh", "saved"])
def test_interpolation_endpoints(interp_init, tmp_path, digits_lt, monkeypatch):
    """The drawn trunk is l * init + (1 - l) * pool[k]: with l forced to 1 it is the init
    (a fresh trunk, or pool model k's own saved init), with l = 0 pool model k itself."""
    from types import SimpleNamespace

    from ltdistill.extractors import pool_inits
    from ltdistill.methods.parts import PoolExtractor
    from ltdistill.utils import derive_seed

    cfg = apply_overrides(make_config("dm", ipc=1, seed=2), [*CODE, f"pool_dir={tmp_path}",
                                                             f"interp_init={interp_init}"]).options
    ctx = SimpleNamespace(seed=2, device=torch.device("cpu"), show_progress=False, dist=None)
    ex = PoolExtractor(cfg, digits_lt, ctx)
    inits = pool_inits(digits_lt, "convnet", 2, derive_seed(2, "pool"))
    real_rand = torch.rand
    for lam in (1.0, 0.0):
        monkeypatch.setattr(torch, "rand", lambda *a, _lam=lam, **k: torch.full((1,), _lam))
        g = torch.Generator().manual_seed(0)
        k = int(torch.randint(2, (1,), generator=torch.Generator().manual_seed(0)))
        ex.draw(3, g)
        monkeypatch.setattr(torch, "rand", real_rand)
        state = ex.trunk.state_dict()
        if lam == 0.0:
            assert all(torch.equal(state[n], ex.pool[k][n]) for n in state)
        elif interp_init == "saved":
            assert all(torch.equal(state[n], inits[k][n]) for n in state)
        else:  # a fresh trunk: not the saved init, not the pool model
            assert not torch.equal(state["classifier.weight"], inits[k]["classifier.weight"])
            assert not torch.equal(state["classifier.weight"], ex.pool[k]["classifier.weight"])


def test_nearest_init_and_plateau_schedule_resume(tmp_path, digits_lt):
    """init_resize=nearest takes every f-th pixel; the plateau schedule lowers the image lr
    and its state is checkpointed, so a resumed run is the uninterrupted one."""
    imgs = torch.rand(4, 1, 8, 8)
    assert torch.equal(encode(imgs, 2, "nearest")[0, :, :4, 4:], imgs[1, :, ::2, ::2])
    with pytest.raises(ConfigError, match="resize"):
        encode(imgs, 2, "bicubic")
    over = [*CODE, f"pool_dir={tmp_path}", "iterations=6", "factor=2", "init_resize=nearest", "calib_mode=step",
            "interp_init=saved", "lr_schedule=plateau", "plateau_patience=0", "plateau_factor=0.5",
            "checkpoint_every=3", "log_every=1", "lr_img=0.3"]
    cfg = apply_overrides(make_config("dm", ipc=1, seed=4), over)
    a = distill(cfg, digits_lt, run_prefix=str(tmp_path / "a"))
    ck = torch.load(tmp_path / "a.ckpt", weights_only=True)
    # the same schedule replayed on the logged losses (mean over the 10 classes) gives the same lr
    ref = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.3)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(ref, factor=0.5, patience=0)
    for h in ck["history"]:
        sched.step(h["loss"] / 10)
    assert ck["scheduler"]["_last_lr"] == sched.get_last_lr() and sched.get_last_lr()[0] < 0.3  # it did lower it
    distill(apply_overrides(cfg, ["iterations=3"]), digits_lt, run_prefix=str(tmp_path / "h"))
    b = distill(apply_overrides(cfg, ["resume=true"]), digits_lt, run_prefix=str(tmp_path / "h"))
    assert b.extra["iterations_run"] == 3 and torch.equal(a.images, b.images)
    with pytest.raises(ConfigError, match="calib_mode"):
        distill(apply_overrides(cfg, ["calib_mode=later"]), digits_lt)
