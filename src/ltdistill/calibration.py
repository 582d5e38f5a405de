r"""Post-hoc soft-label calibration (ADSA, SPEC §6) as pure functions.

For teacher logits :math:`f(x)` and long-tailed class frequencies :math:`\pi`:
:math:`p(y \mid x; \tau) = \operatorname{softmax}_y\big((f_y(x) - \tau \log \pi_y) / T\big)`.
ADSA picks the scalar τ that minimises the spread (standard deviation over
classes) of the class-mean confidence
:math:`\bar p_i(\tau) = \operatorname{mean}_{x \in i}\, p(y = i \mid x; \tau)`, measured on
the distilled images themselves. No retraining, no image change.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch

from .errors import ConfigError


def adjusted_probs(logits: torch.Tensor, prior: torch.Tensor, tau: float, temperature: float = 1.0) -> torch.Tensor:
    r""":math:`\operatorname{softmax}((f - \tau \log \pi) / T)` row-wise."""
    if temperature <= 0:
        raise ConfigError(f"temperature must be positive, got {temperature}")
    return torch.softmax((logits.double() - tau * torch.log(prior.double())) / temperature, dim=1).to(logits.dtype)


def confidence_spread(logits: torch.Tensor, labels: torch.Tensor, prior: torch.Tensor, tau: float,
                      temperature: float = 1.0) -> float:
    """Std over classes (population std) of the class-mean confidence in the true class."""
    p = adjusted_probs(logits.double(), prior, tau, temperature)
    conf = p[torch.arange(len(labels)), labels]
    classes = torch.unique(labels)
    means = torch.stack([conf[labels == c].mean() for c in classes])
    return float(means.std(unbiased=False))


@dataclass
class ADSAResult:
    tau: float
    spread: float
    curve: list[tuple[float, float]]  # (tau, spread) over the coarse grid
    at_edge: bool = False  # τ is an end of the grid: the minimum may lie outside it


def adsa_search(logits: torch.Tensor, labels: torch.Tensor, prior: torch.Tensor, temperature: float = 1.0,
                lo: float = 0.0, hi: float = 3.0, step: float = 0.05, refine_step: float = 0.001) -> ADSAResult:
    """Grid search of τ over ``[lo, hi]`` (``step``), then a finer grid (``refine_step``)
    within one coarse step of the best point. Deterministic; ties go to the smaller τ."""
    if prior.numel() != logits.shape[1] or (prior <= 0).any():
        raise ConfigError("the class prior must have one positive entry per logit column")
    n = int(round((hi - lo) / step))
    grid = [lo + k * step for k in range(n + 1)]
    curve = [(t, confidence_spread(logits, labels, prior, t, temperature)) for t in grid]
    best = min(curve, key=lambda ts: ts[1])[0]
    m = int(round(2 * step / refine_step))
    fine = [max(lo, best - step) + k * refine_step for k in range(m + 1)]
    fine = [t for t in fine if t <= hi]
    scored = [(t, confidence_spread(logits, labels, prior, t, temperature)) for t in fine]
    tau, spread = min(scored, key=lambda ts: ts[1])
    at_edge = abs(tau - lo) < refine_step / 2 or abs(tau - hi) < refine_step / 2
    if at_edge:
        warnings.warn(f"ADSA: tau = {tau:g} is on the edge of its search grid [{lo:g}, {hi:g}]; the spread "
                      f"may keep falling beyond it (widen the grid, or fix tau)", stacklevel=2)
    return ADSAResult(round(tau, 6), spread, curve, at_edge)
