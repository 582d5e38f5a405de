import pytest
import torch

from ltdistill.augment import OPS, DSAConfig, apply_dsa, dsa, sample_dsa
from ltdistill.errors import ConfigError


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("op", OPS)
def test_siamese_same_transform_for_real_and_synthetic(op):
    cfg = DSAConfig(strategy=op)
    real, syn = torch.randn(6, 3, 16, 16), torch.randn(2, 3, 16, 16)
    p = sample_dsa(0, 16, gen(3), cfg, siamese=True)
    both = apply_dsa(torch.cat([real, syn]), p)
    assert torch.allclose(both, torch.cat([apply_dsa(real, p), apply_dsa(syn, p)]), atol=1e-6)
    # identical inputs in different batches come out identical
    img = torch.randn(1, 3, 16, 16)
    a = apply_dsa(torch.cat([img, real[:3]]), p)[0]
    b = apply_dsa(torch.cat([syn, img]), p)[-1]
    assert torch.allclose(a, b, atol=1e-6)


@pytest.mark.parametrize("op", ["color", "crop", "scale", "rotate"])
def test_per_sample_mode_differs_across_samples(op):
    x = torch.randn(1, 3, 16, 16).expand(8, 3, 16, 16).contiguous()
    y = apply_dsa(x, sample_dsa(8, 16, gen(1), DSAConfig(strategy=op)))
    assert not all(torch.allclose(y[0], y[i]) for i in range(1, 8))


@pytest.mark.parametrize("op", OPS)
def test_gradients_match_finite_differences(op):
    x = torch.randn(2, 2, 6, 6, dtype=torch.double, requires_grad=True)
    p = sample_dsa(2, 6, gen(7), DSAConfig(strategy=op, crop_ratio=0.25))
    assert torch.autograd.gradcheck(lambda t: apply_dsa(t, p), (x,), eps=1e-6, atol=1e-5)


def test_never_touches_global_rng_and_is_reproducible():
    state = torch.get_rng_state()
    x = torch.randn(4, 3, 8, 8)
    state = torch.get_rng_state()
    outs = [dsa(x, gen(11)) for _ in range(2)]
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(outs[0], outs[1])


def test_ops_drawn_from_strategy():
    g = gen(0)
    seen = {sample_dsa(1, 8, g, DSAConfig()).op for _ in range(200)}
    assert seen == set(OPS)


def test_ranges():
    g = gen(0)
    cfg = DSAConfig(strategy="scale")
    s = torch.cat([sample_dsa(100, 32, g, cfg).values["scale"] for _ in range(5)])
    assert s.min() >= 1 / 1.2 and s.max() <= 1.2
    sh = sample_dsa(500, 32, g, DSAConfig(strategy="crop")).values["shift"]
    assert sh.abs().max() == 4
    a = sample_dsa(500, 32, g, DSAConfig(strategy="rotate")).values["angle"]
    assert a.abs().max() <= 15 * torch.pi / 180


def test_cutout_zeros_a_square():
    x = torch.ones(1, 1, 32, 32)
    p = sample_dsa(1, 32, gen(0), DSAConfig(strategy="cutout"))
    p.values["center"] = torch.tensor([[16, 16]])
    y = apply_dsa(x, p)
    assert (y == 0).sum() == 16 * 16


def test_unknown_op():
    with pytest.raises(ConfigError, match="unknown DSA operation"):
        sample_dsa(1, 8, gen(), DSAConfig(strategy="color_blur"))
