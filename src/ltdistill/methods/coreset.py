"""Coreset baselines: random real images, K-Center greedy and herding.

K-Center and herding select in the feature space of a ConvNet trunk (by default a
frozen random-init ConvNet as in DM's feature extractor; ``embed_epochs > 0``
first trains it on the long-tailed split with the evaluation trainer).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..data import LTData
from ..evaluate import EvalConfig, train_net
from ..nets import init_net
from ..utils import derive_seed, make_generator
from .base import Method, RunContext, fill_indices, register_method


def _gather(data: LTData, picks: list[torch.Tensor], ctx: RunContext):
    idx = torch.cat(picks)
    return data.normalize(data.train.images[idx]), data.train.labels[idx].clone()


@register_method
class RandomReal(Method):
    name = "random"
    description = "random real images per class (repeated cyclically when a class is short)"

    def run(self, data: LTData, ctx: RunContext):
        picks = []
        for c in range(data.num_classes):
            idx = data.train.indices_of(c)
            perm = torch.randperm(len(idx), generator=make_generator(ctx.seed, "random", c))
            picks.append(idx[fill_indices(perm, ctx.ipc, ctx.fill, data.class_names[c])])
        x, y = _gather(data, picks, ctx)
        return x, y, {}


@dataclass
class FeatureConfig:
    """Feature space for K-Center / herding."""

    net: str = "convnet"
    embed_epochs: int = 0  # 0: frozen random-init trunk; >0: train it on the LT split first
    batch_size: int = 512


@torch.no_grad()
def class_features(data: LTData, ctx: RunContext, cfg: FeatureConfig) -> list[torch.Tensor]:
    """Features of every training image, one tensor per class (on the run's device)."""
    info = data.info
    if cfg.embed_epochs > 0:
        with torch.enable_grad():
            ecfg = EvalConfig(net=cfg.net, epochs=cfg.embed_epochs, runs=1, device=str(ctx.device))
            net, _ = train_net(data.normalize(data.train.images), data.train.labels, data, ecfg,
                               derive_seed(ctx.seed, "embed"))
    else:
        net = init_net(cfg.net, info.channels, data.num_classes, info.image_size,
                       derive_seed(ctx.seed, "embed")).to(ctx.device)
    net.eval()
    out = []
    for c in range(data.num_classes):
        idx = data.train.indices_of(c)
        feats = [net.embed(data.normalize(data.train.images[idx[i : i + cfg.batch_size]], ctx.device))
                 for i in range(0, len(idx), cfg.batch_size)]
        out.append(torch.cat(feats).double())
    return out


def kcenter_order(f: torch.Tensor, k: int, first: int) -> torch.Tensor:
    """Greedy K-Center: start at ``first``, then repeatedly add the point farthest from the chosen ones."""
    k = min(k, len(f))
    chosen = [first]
    dist = torch.cdist(f, f[first : first + 1]).squeeze(1)
    for _ in range(k - 1):
        nxt = int(torch.argmax(dist))
        chosen.append(nxt)
        dist = torch.minimum(dist, torch.cdist(f, f[nxt : nxt + 1]).squeeze(1))
    return torch.tensor(chosen, dtype=torch.long)


def herding_order(f: torch.Tensor, k: int) -> torch.Tensor:
    """Herding (Welling 2009): greedily pick the point that keeps the running mean closest to the class mean."""
    k = min(k, len(f))
    mu = f.mean(0)
    total = torch.zeros_like(mu)
    avail = torch.ones(len(f), dtype=torch.bool)
    chosen = []
    for t in range(1, k + 1):
        d = ((mu - (total + f) / t) ** 2).sum(1)
        d[~avail] = float("inf")
        i = int(torch.argmin(d))
        chosen.append(i)
        avail[i] = False
        total += f[i]
    return torch.tensor(chosen, dtype=torch.long)


def _select_in_feature_space(data: LTData, ctx: RunContext, order_fn):
    """Per class, ``order_fn(c, features)`` ranks the class's images; take (and fill) IPC of them."""
    picks = []
    for c, f in enumerate(class_features(data, ctx, ctx.options)):
        order = order_fn(c, f.cpu())
        picks.append(data.train.indices_of(c)[fill_indices(order, ctx.ipc, ctx.fill, data.class_names[c])])
    x, y = _gather(data, picks, ctx)
    return x, y, {}


@register_method
class KCenter(Method):
    name = "kcenter"
    Config = FeatureConfig
    description = "K-Center greedy in ConvNet feature space (random first centre from the seed)"

    def run(self, data: LTData, ctx: RunContext):
        def order(c: int, f: torch.Tensor) -> torch.Tensor:
            first = int(torch.randint(len(f), (1,), generator=make_generator(ctx.seed, "kcenter", c)))
            return kcenter_order(f, ctx.ipc, first)

        return _select_in_feature_space(data, ctx, order)


@register_method
class Herding(Method):
    name = "herding"
    Config = FeatureConfig
    description = "herding in ConvNet feature space"

    def run(self, data: LTData, ctx: RunContext):
        return _select_in_feature_space(data, ctx, lambda c, f: herding_order(f, ctx.ipc))
