r"""Distribution discrepancies as pure tensor functions (SPEC §3).

Notation: ``x`` is an ``n x d`` sample (real features of one class), ``y`` an
``m x d`` sample (synthetic features). Frequencies ``w`` are rows of an ``M x d``
matrix ``W``; one product ``x @ W.T`` gives every projection, so characteristic-
function losses cost O((n + m) d M): linear in the number of samples, unlike the
closed-form kernel MMD, O((n + m)^2 d).
"""

from __future__ import annotations

import math

import torch

from .errors import ConfigError


def linear_mmd(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    r"""DM's discrepancy: :math:`\lVert \bar x - \bar y \rVert^2` (first moment only)."""
    return ((x.mean(0) - y.mean(0)) ** 2).sum()


def _kernel(a: torch.Tensor, b: torch.Tensor, kernel: str, sigma: float) -> torch.Tensor:
    if kernel == "rbf":
        return torch.exp(-torch.cdist(a, b).pow(2) / (2 * sigma**2))
    if kernel == "laplace":
        return torch.exp(-torch.cdist(a, b, p=1) / sigma)
    raise ConfigError(f"unknown kernel {kernel!r}; choose rbf or laplace")


def kernel_mmd2(x: torch.Tensor, y: torch.Tensor, sigma: float = 1.0, kernel: str = "rbf") -> torch.Tensor:
    r"""Closed-form (biased, V-statistic) MMD²:
    :math:`\operatorname{mean} k(X,X) + \operatorname{mean} k(Y,Y) - 2 \operatorname{mean} k(X,Y)`.

    RBF: :math:`k(a,b) = \exp(-\lVert a-b\rVert_2^2 / 2\sigma^2)`;
    Laplace: :math:`k(a,b) = \exp(-\lVert a-b\rVert_1 / \sigma)`. Cost O((n+m)² d).
    """
    return (_kernel(x, x, kernel, sigma).mean() + _kernel(y, y, kernel, sigma).mean()
            - 2 * _kernel(x, y, kernel, sigma).mean())


def sample_frequencies(
    num: int, dim: int, sigma: float = 1.0, kernel: str = "rbf",
    generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    r"""Draw ``num`` frequencies from the kernel's normalised spectral measure (Bochner).

    RBF with bandwidth σ: :math:`w \sim \mathcal N(0, \sigma^{-2} I)`.
    Laplace (L1) with scale σ: i.i.d. :math:`\mathrm{Cauchy}(0, 1/\sigma)` per coordinate,
    drawn as :math:`\tan(\pi(u - 1/2)) / \sigma`, :math:`u \sim U(0, 1)`.
    """
    if kernel == "rbf":
        return torch.randn(num, dim, generator=generator, dtype=dtype, device=device) / sigma
    if kernel == "laplace":
        u = torch.rand(num, dim, generator=generator, dtype=torch.float64, device=device)
        return (torch.tan(math.pi * (u - 0.5)) / sigma).to(dtype)
    raise ConfigError(f"unknown kernel {kernel!r}; choose rbf or laplace")


def ecf(x: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Empirical characteristic function at every row of ``w``:
    :math:`\varphi_X(w) = \operatorname{mean}_i e^{i w\cdot x_i}`, returned as
    (real part :math:`\operatorname{mean}\cos(w\cdot x_i)`, imaginary part :math:`\operatorname{mean}\sin(w\cdot x_i)`),
    each of length M.
    """
    proj = x @ w.T
    return torch.cos(proj).mean(0), torch.sin(proj).mean(0)


def sdd(x: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    r"""Spectral Distribution Distance, Monte-Carlo over the rows of ``w``:
    :math:`\operatorname{mean}_w |\varphi_X(w) - \varphi_Y(w)|^2`.

    With ``w`` drawn by :func:`sample_frequencies` this is an unbiased estimate of
    :func:`kernel_mmd2` with the same kernel and σ (equal as M → ∞).
    """
    rx, ix = ecf(x, w)
    ry, iy = ecf(y, w)
    return ((rx - ry) ** 2 + (ix - iy) ** 2).mean()


def amplitude_phase(
    rx: torch.Tensor, ix: torch.Tensor, ry: torch.Tensor, iy: torch.Tensor, eps: float = 1e-8
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Split :math:`|a - b|^2` into amplitude and phase terms, per frequency.

    With :math:`a = \varphi_X(w)`, :math:`b = \varphi_Y(w)`:
    amplitude :math:`(|a| - |b|)^2` (diversity) and phase
    :math:`2(|a||b| - \operatorname{Re}a\operatorname{Re}b - \operatorname{Im}a\operatorname{Im}b)
    = 2|a||b|(1 - \cos\Delta\theta)` (realism). Computed from real and imaginary
    parts, never ``atan2`` (whose gradient explodes near :math:`|\varphi| = 0`);
    :math:`|\cdot| = \sqrt{\operatorname{Re}^2 + \operatorname{Im}^2 + \epsilon}`.
    With ``eps = 0`` the two terms sum to :math:`|a - b|^2` exactly.
    """
    na = torch.sqrt(rx * rx + ix * ix + eps)
    nb = torch.sqrt(ry * ry + iy * iy + eps)
    amp = (na - nb) ** 2
    pha = 2 * (na * nb - rx * ry - ix * iy)
    return amp, pha


def csdm_class_loss(
    x: torch.Tensor, y: torch.Tensor, w: torch.Tensor, alpha: float | torch.Tensor, eps: float = 1e-8
) -> torch.Tensor:
    r"""CSDM loss of one class: :math:`\operatorname{mean}_w[\alpha\,\mathrm{amp}(w) + (1-\alpha)\,\mathrm{pha}(w)]`.

    α = ½ gives ½·SDD (up to ε). α ∈ (0, 1) keeps the loss a metric.
    """
    amp, pha = amplitude_phase(*ecf(x, w), *ecf(y, w), eps=eps)
    return (alpha * amp + (1 - alpha) * pha).mean()


def cfd_class_loss(
    x: torch.Tensor, y: torch.Tensor, w: torch.Tensor, alpha: float = 0.5, eps: float = 1e-8
) -> torch.Tensor:
    r"""NCFM-style characteristic function distance:
    :math:`\operatorname{mean}_w \sqrt{\alpha\,\mathrm{amp}(w) + (1-\alpha)\,\mathrm{pha}(w) + \epsilon}`.
    """
    amp, pha = amplitude_phase(*ecf(x, w), *ecf(y, w), eps=eps)
    return torch.sqrt((alpha * amp + (1 - alpha) * pha).clamp_min(0) + eps).mean()


def alpha_map(counts: list[int], alpha_head: float, alpha_tail: float, constant: float | None = None) -> list[float]:
    r"""Class-aware α (ours; the paper does not publish its map):
    :math:`\alpha_c = \alpha_{tail} + (\alpha_{head} - \alpha_{tail})
    \frac{\log n_c - \log n_{min}}{\log n_{max} - \log n_{min}}`.

    Head classes (many images) get α near ``alpha_head`` (amplitude: diversity),
    tail classes near ``alpha_tail`` (phase: realism). Balanced data, or
    ``constant`` given, gives one α for every class.
    """
    for a in (alpha_head, alpha_tail) + ((constant,) if constant is not None else ()):
        if not 0 < a < 1:
            raise ConfigError(f"alpha must lie in (0, 1) to keep the loss a metric, got {a}")
    if constant is not None:
        return [float(constant)] * len(counts)
    lo, hi = math.log(min(counts)), math.log(max(counts))
    if hi - lo < 1e-12:
        return [0.5 * (alpha_head + alpha_tail)] * len(counts)
    return [alpha_tail + (alpha_head - alpha_tail) * (math.log(n) - lo) / (hi - lo) for n in counts]
