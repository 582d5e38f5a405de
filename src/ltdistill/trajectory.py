"""Trajectory matching's numerical core (LAD, SPEC §5): the student's inner losses (plain
soft cross-entropy and both forms of Distribution-agnostic Matching), the normalised
parameter-distance matching loss, and the unrolled student whose gradient reaches the
synthetic images, soft labels and learnable step size with memory that does not hold
N steps of activations.

All functions are pure: tensors in, tensors out; randomness only through the callables
the caller passes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from .errors import ConfigError

DAM_FORMS = ("paper", "code", "none")


def soft_ce(logits: torch.Tensor, targets: torch.Tensor, class_weights: torch.Tensor | None = None) -> torch.Tensor:
    """``-(1/n) sum_i sum_k w_k t_ik log softmax(L_i)_k`` (``w`` = 1 without weights)."""
    logp = F.log_softmax(logits.float(), dim=1)
    if class_weights is not None:
        logp = logp * class_weights.view(1, -1)
    return -(targets * logp).sum(1).mean()


def dam_weights(counts: Sequence[int] | torch.Tensor, device: torch.device | str = "cpu") -> torch.Tensor:
    """``g(s)``: the long-tailed class counts normalised to sum to 1 (``w_k = n_k / sum n``)."""
    s = torch.as_tensor(counts, dtype=torch.float32, device=device)
    if (s <= 0).any():
        raise ConfigError("DAM needs every class count to be positive")
    return s / s.sum()


def dam_loss(logits: torch.Tensor, targets: torch.Tensor, labels: torch.Tensor, counts: torch.Tensor,
             form: str = "paper", lam: float = 1.0) -> torch.Tensor:
    """The student's inner loss under Distribution-agnostic Matching.

    Args:
        logits: ``n x C`` student logits ``L``.
        targets: ``n x C`` soft targets (rows sum to 1; one-hot for hard labels).
        labels: ``n`` class of each synthetic image (``y_i``).
        counts: ``C`` long-tailed training counts ``s`` (float tensor).
        form: ``paper`` (Eq. 4-5): ``-(1/n) sum_i g(s_{y_i}) sum_k t_ik log P_ik`` with
            ``P_i = softmax(L_i - lam log s)``, ``g(s) = s / sum s``; ``code`` (the released
            code's default, ``BFLoss False``): soft CE with class column ``k`` weighted by
            ``g(s_k)``, no logit shift; ``none``: plain soft CE (DAM off).
        lam: the paper's smoothing ``lambda`` (``paper`` form only).
    """
    g = counts / counts.sum()
    if form == "none":
        return soft_ce(logits, targets)
    if form == "code":
        return soft_ce(logits, targets, g)
    if form == "paper":
        shifted = logits.float() - lam * torch.log(counts).view(1, -1)
        per_sample = -(targets * F.log_softmax(shifted, dim=1)).sum(1)
        return (g[labels] * per_sample).mean()
    raise ConfigError(f"dam must be one of {', '.join(DAM_FORMS)}, got {form!r}")


def match_loss(end: torch.Tensor, start: torch.Tensor, target: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """MTT's normalised parameter distance ``||end - target||^2 / ||start - target||^2``."""
    return (end - target).pow(2).sum() / ((start - target).pow(2).sum() + eps)


StepLoss = Callable[[torch.Tensor, int, Sequence[torch.Tensor]], torch.Tensor]


def unroll(step_loss: StepLoss, theta0: torch.Tensor, lr: torch.Tensor, steps: int,
           outer: Callable[[torch.Tensor], torch.Tensor], leaves: Sequence[torch.Tensor],
           mask: torch.Tensor | None = None, memory: str = "bounded") -> torch.Tensor:
    """Run ``steps`` SGD steps ``theta <- theta - lr * mask * grad step_loss(theta, k)`` from
    ``theta0``, evaluate ``outer(theta_N)``, and add its gradient to ``leaves[i].grad``
    and ``lr.grad``. Returns the outer loss (detached).

    ``step_loss(theta, k, leaves)`` must be a deterministic function of its arguments
    (draw step ``k``'s augmentation from a generator seeded by ``k``): the ``bounded``
    memory mode replays it. Modes:

    - ``bounded``: the forward pass keeps only the N+1 parameter vectors (what the
      matching needs); the backward pass walks the steps in reverse, recomputing one
      step's graph at a time and taking one Hessian-vector product through it
      (``a_k = a_{k+1} - lr * H_k (mask * a_{k+1})``). Peak memory: N parameter vectors
      plus one step's activations, whatever N.
    - ``graph``: the textbook unroll (``create_graph`` through every step, one backward):
      memory grows with N's activations. The reference the tests compare against.
    """
    if steps < 1:
        raise ConfigError(f"the student needs at least one step, got {steps}")
    m = torch.ones_like(theta0) if mask is None else mask.to(theta0)
    if memory == "graph":
        theta = theta0.detach().requires_grad_(True)
        cur = theta
        for k in range(steps):
            g, = torch.autograd.grad(step_loss(cur, k, leaves), cur, create_graph=True)
            cur = cur - lr * m * g
        loss = outer(cur)
        targets = [t for t in (*leaves, lr) if t.requires_grad]
        grads = torch.autograd.grad(loss, targets, allow_unused=True)
        for t, gr in zip(targets, grads):
            if gr is not None:
                t.grad = gr if t.grad is None else t.grad + gr
        return loss.detach()
    if memory != "bounded":
        raise ConfigError(f"memory must be bounded or graph, got {memory!r}")
    lr_v = lr.detach()
    frozen = [t.detach() for t in leaves]
    thetas = [theta0.detach()]
    for k in range(steps):
        th = thetas[-1].clone().requires_grad_(True)
        g, = torch.autograd.grad(step_loss(th, k, frozen), th)
        thetas.append((thetas[-1] - lr_v * m * g).detach())
    end = thetas[-1].clone().requires_grad_(True)
    loss = outer(end)
    a, = torch.autograd.grad(loss, end)
    live = [t for t in leaves if t.requires_grad]
    acc = [torch.zeros_like(t) for t in live]
    lr_grad = torch.zeros((), dtype=lr_v.dtype, device=lr_v.device)
    for k in reversed(range(steps)):
        th = thetas[k].clone().requires_grad_(True)
        g, = torch.autograd.grad(step_loss(th, k, leaves), th, create_graph=True)
        dot = (m * g * a).sum()
        grads = torch.autograd.grad(dot, [th, *live], allow_unused=True)
        lr_grad = lr_grad - dot.detach()
        for i, gr in enumerate(grads[1:]):
            if gr is not None:
                acc[i] = acc[i] - lr_v * gr
        a = a - lr_v * grads[0] if grads[0] is not None else a
    for t, gr in zip(live, acc):
        t.grad = gr if t.grad is None else t.grad + gr
    if lr.requires_grad:
        lr.grad = lr_grad.reshape(lr.shape) if lr.grad is None else lr.grad + lr_grad.reshape(lr.shape)
    return loss.detach()


def flat_params(net: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in net.parameters()])


class FlatNet:
    """A module called with a flat parameter vector (``torch.func.functional_call``), and
    which entries of that vector are the classifier."""

    def __init__(self, net: torch.nn.Module, classifier_prefix: str = "classifier.") -> None:
        from torch.func import functional_call

        self.net, self.call = net, functional_call
        self.names = [n for n, _ in net.named_parameters()]
        self.shapes = [p.shape for p in net.parameters()]
        self.sizes = [p.numel() for p in net.parameters()]
        self.buffers = dict(net.named_buffers())
        cls = torch.cat([torch.full((s,), n.startswith(classifier_prefix), dtype=torch.bool)
                         for n, s in zip(self.names, self.sizes)])
        if not cls.any() or cls.all():
            raise ConfigError(f"trajectory matching needs a net with a '{classifier_prefix}*' layer and a backbone")
        self.is_classifier = cls

    @property
    def numel(self) -> int:
        return sum(self.sizes)

    def __call__(self, theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        params = {n: t.view(s) for n, t, s in zip(self.names, theta.split(self.sizes), self.shapes)}
        return self.call(self.net, {**params, **self.buffers}, (x,))
