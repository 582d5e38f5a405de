"""A pool of trained feature extractors with weight interpolation (SPEC §4b, NCFM).

``train_pool`` trains P networks on the long-tailed split (the evaluation
trainer: SGD, DSA) and caches their weights as an asset keyed by everything that
determines them, so runs with the same pool settings reuse it. At each
distillation iteration one is drawn and mixed with a fresh random init:
``theta = l * theta_init + (1 - l) * theta_trained``, ``l ~ U(0, 1)``; ``theta_init`` is a
fresh random trunk (SPEC §4b) or, as NCFM's released code does, the pool model's own saved
initialisation (:func:`pool_inits`: re-derived from the seed it was trained with).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from .data import LTData
from .data.sources import cache_dir
from .evaluate import EvalConfig, train_net
from .progress import progress_bar
from .utils import atomic_torch_save, derive_seed


def pool_path(data: LTData, net: str, size: int, epochs: int, seed: int, root: str | None = None) -> Path:
    key = {"dataset": data.split_record(), "net": net, "size": size, "epochs": epochs, "seed": seed,
           "trainer": "sgd-0.01-dsa-v1"}
    h = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    base = Path(root) if root else cache_dir() / "pools"
    return base / f"pool-{data.info.name}-if{data.imbalance:g}-{net}-{size}x{epochs}ep-{h}.pt"


def train_pool(data: LTData, net: str, size: int, epochs: int, seed: int, device: str = "auto",
               root: str | None = None, show_progress: bool = False) -> list[dict[str, torch.Tensor]]:
    """Trained weights of ``size`` nets (cached; models are added one at a time, so an
    interrupted pool build resumes)."""
    path = pool_path(data, net, size, epochs, seed, root)
    state = torch.load(path, weights_only=True) if path.is_file() else {"models": []}
    models = list(state["models"])
    x = data.normalize(data.train.images)
    with progress_bar(total=size, desc="extractor pool", enabled=show_progress) as bar:
        bar.update(len(models))
        for k in range(len(models), size):
            cfg = EvalConfig(net=net, epochs=epochs, runs=1, device=device, lr_decay_at_half=False)
            trained, _ = train_net(x, data.train.labels, data, cfg, derive_seed(seed, "pool", k))
            models.append({n: t.detach().cpu() for n, t in trained.state_dict().items()})
            atomic_torch_save({"models": models, "net": net, "epochs": epochs, "seed": seed,
                               "dataset": data.split_record()}, path)
            bar.update(1)
    return models[:size]


def pool_inits(data: LTData, net: str, size: int, seed: int) -> list[dict[str, torch.Tensor]]:
    """The initial weights each pool model of :func:`train_pool` started from (model ``k``
    is trained by :func:`~ltdistill.evaluate.train_net` with seed ``derive_seed(seed, "pool",
    k)``, which initialises the net from that seed's ``"init"`` stream): NCFM keeps them as
    ``premodel<k>_init``; here they are derived again, bit for bit, instead of stored."""
    from .nets import init_net

    info = data.info
    return [{n: t.detach().clone() for n, t in init_net(net, info.channels, data.num_classes, info.image_size,
                                                         derive_seed(derive_seed(seed, "pool", k), "init")).state_dict().items()}
            for k in range(size)]


def interpolate(init: dict[str, torch.Tensor], trained: dict[str, torch.Tensor], lam: float) -> dict[str, torch.Tensor]:
    """``lam * init + (1 - lam) * trained`` for floating tensors (integer buffers from ``trained``)."""
    out = {}
    for k, t in trained.items():
        a = init[k].to(t.device)
        out[k] = lam * a + (1 - lam) * t if t.is_floating_point() else t.clone()
    return out


@torch.no_grad()
def interpolate_(net: torch.nn.Module, trained: dict[str, torch.Tensor], lam: float) -> torch.nn.Module:
    """In place: ``net``'s state (a fresh init) becomes :func:`interpolate` of it with ``trained``."""
    for k, t in net.state_dict().items():
        src = trained[k]
        t.copy_(lam * t + (1 - lam) * src if t.is_floating_point() else src)
    return net
