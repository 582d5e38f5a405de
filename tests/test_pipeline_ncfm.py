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
