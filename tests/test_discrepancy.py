"""Discrepancies against slow, obvious references."""

import math

import numpy as np
import pytest
import torch

from ltdistill.discrepancy import (
    alpha_map,
    amplitude_phase,
    cfd_class_loss,
    csdm_class_loss,
    ecf,
    kernel_mmd2,
    linear_mmd,
    sample_frequencies,
    sdd,
)
from ltdistill.errors import ConfigError


def samples(seed=0, n=24, m=9, d=5, shift=0.6):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.double) * 0.7
    y = torch.randn(m, d, generator=g, dtype=torch.double) * 0.5 + shift
    return x, y


def mmd_numpy(x, y, k):
    """Double loops: the textbook biased MMD²."""
    x, y = x.numpy(), y.numpy()
    kxx = np.mean([[k(a, b) for b in x] for a in x])
    kyy = np.mean([[k(a, b) for b in y] for a in y])
    kxy = np.mean([[k(a, b) for b in y] for a in x])
    return kxx + kyy - 2 * kxy


@pytest.mark.parametrize("kernel", ["rbf", "laplace"])
def test_closed_form_mmd_matches_double_loop(kernel):
    x, y = samples()
    s = 1.3
    k = ((lambda a, b: math.exp(-np.sum((a - b) ** 2) / (2 * s * s))) if kernel == "rbf"
         else (lambda a, b: math.exp(-np.sum(np.abs(a - b)) / s)))
    assert float(kernel_mmd2(x, y, s, kernel)) == pytest.approx(mmd_numpy(x, y, k), rel=1e-10)


@pytest.mark.parametrize("kernel", ["rbf", "laplace"])
def test_sdd_converges_to_closed_form_mmd(kernel):
    """M = 400 000 frequencies; tolerance = 5 Monte-Carlo standard errors of the per-frequency terms."""
    x, y = samples(1)
    sigma, M = 1.3, 400_000
    w = sample_frequencies(M, x.shape[1], sigma, kernel, torch.Generator().manual_seed(2), torch.double)
    rx, ix = ecf(x, w)
    ry, iy = ecf(y, w)
    terms = (rx - ry) ** 2 + (ix - iy) ** 2
    se = float(terms.std()) / math.sqrt(M)
    exact = float(kernel_mmd2(x, y, sigma, kernel))
    assert abs(float(terms.mean()) - exact) < 5 * se
    assert se < 0.01 * exact  # the check is tight: the standard error is under 1 % of the value
    assert float(sdd(x, y, w)) == pytest.approx(float(terms.mean()), rel=1e-12)


def test_ecf_matches_definition():
    x, _ = samples()
    w = torch.randn(7, 5, dtype=torch.double)
    re, im = ecf(x, w)
    ref = [np.mean(np.exp(1j * (x.numpy() @ w[k].numpy()))) for k in range(7)]
    assert np.allclose(re.numpy(), np.real(ref)) and np.allclose(im.numpy(), np.imag(ref))


def test_amplitude_plus_phase_is_exact():
    g = torch.Generator().manual_seed(3)
    rx, ix, ry, iy = (torch.rand(100, generator=g, dtype=torch.double) * 2 - 1 for _ in range(4))
    amp, pha = amplitude_phase(rx, ix, ry, iy, eps=0.0)
    assert torch.allclose(amp + pha, (rx - ry) ** 2 + (ix - iy) ** 2, atol=1e-14, rtol=0)
    assert (amp >= 0).all() and (pha >= -1e-14).all()
    # phase = 2|a||b|(1 - cos Δθ)
    dtheta = torch.atan2(ix, rx) - torch.atan2(iy, ry)
    ref = 2 * torch.hypot(rx, ix) * torch.hypot(ry, iy) * (1 - torch.cos(dtheta))
    assert torch.allclose(pha, ref, atol=1e-12)


def test_csdm_half_is_half_sdd():
    x, y = samples(4)
    w = torch.randn(256, 5, dtype=torch.double)
    assert float(csdm_class_loss(x, y, w, 0.5, eps=0.0)) == pytest.approx(0.5 * float(sdd(x, y, w)), rel=1e-12)


@pytest.mark.parametrize("fn", [
    lambda x, y, w: linear_mmd(x, y), lambda x, y, w: kernel_mmd2(x, y), sdd,
    lambda x, y, w: csdm_class_loss(x, y, w, 0.8), lambda x, y, w: cfd_class_loss(x, y, w, 0.5, eps=0.0),
])
def test_nonnegative_and_zero_for_identical_sets(fn):
    x, y = samples(5)
    w = torch.randn(128, 5, dtype=torch.double)
    assert float(fn(x, y, w)) > 0
    assert abs(float(fn(x, x.clone(), w))) < 1e-6


def test_gradient_is_finite_at_zero_characteristic_function():
    """The ε inside |·| keeps gradients finite where φ vanishes (where atan2 would explode)."""
    y = torch.tensor([[0.0], [math.pi]], dtype=torch.double, requires_grad=True)  # φ_Y(1) = 0
    x = torch.tensor([[0.3], [0.1]], dtype=torch.double)
    loss = csdm_class_loss(x, y, torch.ones(1, 1, dtype=torch.double), 0.3)
    loss.backward()
    assert torch.isfinite(y.grad).all()


def test_alpha_map_direction_and_range():
    counts = [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
    a = alpha_map(counts, alpha_head=0.9, alpha_tail=0.3)
    assert a[0] == pytest.approx(0.9) and a[-1] == pytest.approx(0.3)
    assert all(a[i] > a[i + 1] for i in range(9))  # more images -> larger alpha (amplitude)
    assert alpha_map([100] * 4, 0.9, 0.3) == [pytest.approx(0.6)] * 4
    assert alpha_map(counts, 0.9, 0.3, constant=0.7) == [0.7] * 10
    with pytest.raises(ConfigError, match=r"\(0, 1\)"):
        alpha_map(counts, 1.0, 0.3)


def test_laplace_frequencies_are_cauchy():
    w = sample_frequencies(200_000, 1, sigma=2.0, kernel="laplace", generator=torch.Generator().manual_seed(0))
    # Cauchy(0, 1/2): median of |w| is the scale 0.5
    assert float(w.abs().median()) == pytest.approx(0.5, rel=0.02)


def test_unknown_kernel():
    with pytest.raises(ConfigError, match="unknown kernel"):
        sample_frequencies(3, 2, kernel="poly")
