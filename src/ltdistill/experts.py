"""LAD's experts (SPEC §5, Expert Decoupling): trajectories of networks trained on the
long-tailed split, cached as a self-describing buffer.

- **Stage 1 (representation):** a fresh net trained with SGD, cross-entropy, per-sample DSA
  and weight decay on the long-tailed split; its parameters after every epoch (and at
  initialisation) form the *representation* trajectory.
- **Stage 2 (classifier):** the stage-1 backbone frozen, the classifier re-initialised
  (classifier re-training, as in decoupled long-tailed learning; ``cls_reinit=false``
  continues from the stage-1 classifier) and trained alone on class-balanced resampling:
  each batch draws classes uniformly and takes ``cls_per_class`` consecutive images of each
  drawn class from that class's shuffled cycle. Its classifier after every epoch forms the
  *classifier* trajectory.

The buffer is a folder holding ``meta.json`` (the split record, net, configuration, seeds,
format) and ``expert_<k>.pt`` per expert (``rep``: ``(epochs + 1) x P`` flat parameters;
``cls``: ``(cls_epochs + 1) x P_cls`` flat classifier parameters; per-epoch training
accuracy). Every file is written atomically; an expert in progress keeps a
``expert_<k>.partial.pt`` after every epoch, so a killed build resumes where it stopped
with the same numbers (each epoch's draws derive from the seed, the expert and the epoch).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from .augment import DSAConfig, apply_dsa, sample_dsa
from .compiling import maybe_compile, should_compile
from .data import LTData
from .errors import ConfigError, DataError
from .nets import init_net
from .progress import progress_bar
from .trajectory import FlatNet, flat_params
from .utils import (
    atomic_torch_save,
    atomic_write_bytes,
    derive_seed,
    device_generator,
    make_generator,
    resolve_bf16,
    resolve_device,
)

FORMAT = "ltdistill-experts-v1"


@dataclass
class ExpertConfig:
    """Expert training. Defaults are the CPU preset's scale; the reference (SPEC §5) is
    100 experts x 100 epochs (stage 1) with lr 0.01 and weight decay 5e-3."""

    num_experts: int = 3
    epochs: int = 15
    cls_epochs: int = 4
    lr: float = 0.01
    cls_lr: float = 0.01
    momentum: float = 0.0  # MTT's experts: plain SGD
    weight_decay: float = 5e-3
    batch_size: int = 256
    cls_per_class: int = 4
    cls_reinit: bool = True
    dsa: bool = True
    net: str = "convnet"
    seed: int = 0
    device: str = "auto"
    # bfloat16 autocast for the expert forwards: auto = where it is native (a GPU, an AVX-512 or
    # AMX CPU: measured 1.7x faster on the 2-core Zen 4), float32 elsewhere (an AVX2-only CPU:
    # 10x slower emulated; bench/bf16.py). The buffer records (and is keyed by) what it ran.
    bf16: bool | str = "auto"
    # torch.compile the training forward (stage 1: the net; stage 2: the frozen backbone's
    # embedding): auto = for runs long enough to repay the compile (compiling.AUTO_MIN_WORK:
    # CIFAR experts yes, the digits tests no), on, off. A speed setting like ``device``: not
    # part of the buffer's key; the buffer's meta.json records what ran (``compiled``).
    compile: str = "auto"


def resolved(cfg: ExpertConfig, device: torch.device | str | None = None) -> ExpertConfig:
    """``cfg`` with ``bf16: auto`` resolved for the device it trains on."""
    from dataclasses import replace

    return replace(cfg, bf16=resolve_bf16(cfg.bf16, device or resolve_device(cfg.device), "experts.bf16"))


def buffer_dir(data: LTData, cfg: ExpertConfig, root: str | Path | None = None) -> Path:
    """Where a buffer for ``data`` and ``cfg`` lives: keyed by everything that determines it."""
    from .data.sources import cache_dir

    cfg = resolved(cfg) if isinstance(cfg.bf16, str) else cfg  # keyed by the precision it trains in
    key = {"dataset": data.split_record(), "config": {k: v for k, v in asdict(cfg).items()
                                                      if k not in ("device", "num_experts", "compile")}, "format": FORMAT}
    h = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    base = Path(root) if root else cache_dir() / "experts"
    return base / f"experts-{data.info.name}-if{data.imbalance:g}-{cfg.net}-{h}"


def _meta(data: LTData, cfg: ExpertConfig) -> dict:
    return {"format": FORMAT, "dataset": data.split_record(), "config": asdict(cfg),
            "seeds": [derive_seed(cfg.seed, "expert", k) for k in range(cfg.num_experts)]}


def check_buffer(path: Path, data: LTData, net: str) -> dict:
    """``meta.json`` of the buffer at ``path``, checked against the split and net."""
    meta_file = path / "meta.json"
    if not meta_file.is_file():
        raise DataError(f"{path} is not an expert buffer (no meta.json); build one with `ltdistill experts`")
    try:
        meta = json.loads(meta_file.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"cannot read {meta_file}: {e}") from None
    if meta.get("format") != FORMAT:
        raise DataError(f"{path} holds format {meta.get('format')!r}, expected {FORMAT}")
    if meta["dataset"] != data.split_record():
        raise DataError(f"expert buffer {path} was trained on another split ({meta['dataset'].get('name')} "
                        f"IF {meta['dataset'].get('imbalance')}, counts {meta['dataset'].get('class_counts')}), "
                        f"not this one ({data.info.name} IF {data.imbalance:g})")
    if meta["config"]["net"] != net:
        raise DataError(f"expert buffer {path} holds {meta['config']['net']!r} experts, but the run uses {net!r}")
    return meta


def load_expert(path: Path, k: int) -> dict[str, torch.Tensor]:
    f = path / f"expert_{k:03d}.pt"
    try:
        return torch.load(f, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise DataError(f"expert {k} is missing from {path}; rebuild with `ltdistill experts`") from None
    except Exception as e:  # truncated or corrupt
        raise DataError(f"expert file {f} is unreadable (truncated or corrupt: {type(e).__name__}); delete it "
                        f"and run `ltdistill experts` again to rebuild it") from None


def _balanced_batches(labels: torch.Tensor, C: int, batch: int, per_class: int, steps: int,
                      g: torch.Generator) -> list[torch.Tensor]:
    """Class-aware sampling: each batch draws ``batch // per_class`` classes uniformly (with
    replacement) and takes ``per_class`` consecutive images of each from its shuffled cycle."""
    pools = [torch.nonzero(labels == c).flatten() for c in range(C)]
    order = [p[torch.randperm(len(p), generator=g)] for p in pools]
    pos = [0] * C
    out = []
    for _ in range(steps):
        picks = []
        for c in torch.randint(C, (max(batch // per_class, 1),), generator=g).tolist():
            p = order[c]
            idx = [(pos[c] + j) % len(p) for j in range(per_class)]
            pos[c] = (pos[c] + per_class) % len(p)
            picks.append(p[idx])
        out.append(torch.cat(picks))
    return out


def _epoch(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
           batches: list[torch.Tensor], opt: torch.optim.Optimizer, dsa_cfg: DSAConfig, g: torch.Generator,
           gv: torch.Generator, bf16: bool, frozen_backbone: bool, forward: Any = None) -> float:
    """One epoch over ``batches``; the training accuracy (percent). ``forward``: what runs
    ``net`` (stage 1) or its embedding (stage 2, ``frozen_backbone``), e.g. compiled."""
    forward = forward or (net.embed if frozen_backbone else net)
    correct, seen = torch.zeros((), device=x.device), 0
    for idx in batches:
        idx = idx.to(x.device)
        xb = apply_dsa(x[idx], sample_dsa(len(idx), tuple(x.shape[-2:]), g, dsa_cfg, values_generator=gv))
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
            if frozen_backbone:
                with torch.no_grad():
                    feats = forward(xb)
                out = net.classifier(feats)
            else:
                out = forward(xb)
        loss = F.cross_entropy(out.float(), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        correct += (out.detach().argmax(1) == y[idx]).sum()
        seen += len(idx)
    return float(correct) / max(seen, 1) * 100


def train_experts(data: LTData, cfg: ExpertConfig, root: str | Path | None = None,
                  show_progress: bool = False, tracker: Any = None) -> Path:
    """Build (or finish) the expert buffer for ``data`` and return its folder. ``tracker``
    (:func:`ltdistill.tracking.make_tracker`) gets each epoch's training accuracy, per expert
    and stage (``experts/<k>/stage1_acc``, step = epoch)."""
    if cfg.num_experts < 1 or cfg.epochs < 1 or cfg.cls_epochs < 1:
        raise ConfigError("num_experts, epochs and cls_epochs must be at least 1")
    if cfg.batch_size < 1 or cfg.cls_per_class < 1:
        raise ConfigError("batch_size and cls_per_class must be at least 1")
    # the image-pixels stage 1 pushes through the net; a bad mode fails here, before any file
    compiled = should_compile(cfg.compile, cfg.epochs * data.train.images[0, 0].numel() * len(data.train.labels))
    device = resolve_device(cfg.device)
    cfg = resolved(cfg, device)
    path = buffer_dir(data, cfg, root)
    path.mkdir(parents=True, exist_ok=True)
    meta = _meta(data, cfg)
    meta["compiled"] = compiled
    atomic_write_bytes(path / "meta.json", json.dumps(meta, indent=1).encode())
    x = data.normalize(data.train.images.to(device), device)
    y = data.train.labels.to(device)
    dsa_cfg = DSAConfig(strategy="color_crop_cutout_flip_scale_rotate" if cfg.dsa else "none")
    steps = max(1, -(-len(y) // cfg.batch_size))
    total = cfg.num_experts * (cfg.epochs + cfg.cls_epochs)
    with progress_bar(total=total, desc="experts", enabled=show_progress) as bar:
        for k in range(cfg.num_experts):
            if (path / f"expert_{k:03d}.pt").is_file():
                load_expert(path, k)  # a truncated file is an error, not silently reused
                bar.update(cfg.epochs + cfg.cls_epochs)
                continue
            _train_one(k, data, cfg, path, x, y, dsa_cfg, steps, device, bar, tracker, compiled)
    return path


def _train_one(k: int, data: LTData, cfg: ExpertConfig, path: Path, x: torch.Tensor, y: torch.Tensor,
               dsa_cfg: DSAConfig, steps: int, device: torch.device, bar: Any, tracker: Any,
               compiled: bool = False) -> None:
    """Expert ``k``: both stages, resumed from its partial file when there is one."""
    info, C = data.info, data.num_classes
    done_file, part_file = path / f"expert_{k:03d}.pt", path / f"expert_{k:03d}.partial.pt"
    seed = derive_seed(cfg.seed, "expert", k)
    net = init_net(cfg.net, info.channels, C, info.image_size, seed).to(device)
    flat = FlatNet(net)
    state = torch.load(part_file, map_location="cpu", weights_only=True) if part_file.is_file() else None
    rep = list(state["rep"]) if state else [flat_params(net).cpu()]
    cls = list(state["cls"]) if state else []
    acc = list(state["acc"]) if state else []
    if state:
        _load_flat(net, state["current"].to(device))

    def done(stage: int, ep: int, a: float, opt: torch.optim.Optimizer) -> None:
        """After an epoch: accuracy, tracker, the atomic partial file, the bar."""
        acc.append(round(a, 2))
        if tracker:
            tracker.scalar(f"experts/{k}/stage{stage}_acc", a, ep + 1)
        _partial(part_file, rep, cls, acc, net, stage, opt)
        bar.update(1)
        bar.set_postfix(expert=k, stage=stage, epoch=ep + 1, acc=f"{a:.1f}")

    # one graph per batch shape (the full batch and the epoch's last), not a dynamic one
    fwd = maybe_compile(net, compiled, f"expert {cfg.net} training", dynamic=False)
    embed = maybe_compile(net.embed, compiled, f"expert {cfg.net} embedding", dynamic=False)
    # stage 1: the whole net on the long-tailed split
    opt = torch.optim.SGD(net.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if state and state.get("stage") == 1 and state.get("opt"):
        opt.load_state_dict(state["opt"])
    bar.update(len(rep) - 1 + max(len(cls) - 1, 0))
    for ep in range(len(rep) - 1, cfg.epochs):
        g = make_generator(seed, "stage1", ep)
        batches = list(torch.randperm(len(y), generator=g).split(cfg.batch_size))
        a = _epoch(net, x, y, batches, opt, dsa_cfg, g,
                   _values_gen(device, g, seed, "stage1", ep), cfg.bf16, False, fwd)
        rep.append(flat_params(net).cpu())
        done(1, ep, a, opt)
    # stage 2: frozen backbone, the classifier alone on class-balanced batches
    if not cls:
        _load_flat(net, rep[-1].to(device))
        if cfg.cls_reinit:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(derive_seed(seed, "classifier"))
                net.classifier.reset_parameters()
        cls = [flat_params(net)[flat.is_classifier.to(device)].cpu()]
    else:
        _load_flat(net, state["current"].to(device))
    opt = torch.optim.SGD(net.classifier.parameters(), lr=cfg.cls_lr, momentum=cfg.momentum,
                          weight_decay=cfg.weight_decay)
    if state and state.get("stage") == 2 and state.get("opt"):
        opt.load_state_dict(state["opt"])
    for ep in range(len(cls) - 1, cfg.cls_epochs):
        g = make_generator(seed, "stage2", ep)
        batches = _balanced_batches(data.train.labels, C, cfg.batch_size, cfg.cls_per_class, steps, g)
        a = _epoch(net, x, y, batches, opt, dsa_cfg, g,
                   _values_gen(device, g, seed, "stage2", ep), cfg.bf16, True, embed)
        cls.append(flat_params(net)[flat.is_classifier.to(device)].cpu())
        done(2, ep, a, opt)
    atomic_torch_save({"rep": torch.stack(rep), "cls": torch.stack(cls), "train_acc": acc, "seed": seed,
                       "format": FORMAT}, done_file)
    part_file.unlink(missing_ok=True)


def _values_gen(device: torch.device, g: torch.Generator, seed: int, *keys: Any) -> torch.Generator:
    return g if device.type == "cpu" else device_generator(device, seed, *keys, "values")


def _load_flat(net: torch.nn.Module, theta: torch.Tensor) -> None:
    with torch.no_grad():
        for p, t in zip(net.parameters(), theta.split([q.numel() for q in net.parameters()])):
            p.copy_(t.view_as(p))


def _partial(path: Path, rep: list, cls: list, acc: list, net: torch.nn.Module, stage: int,
             opt: torch.optim.Optimizer) -> None:
    atomic_torch_save({"rep": rep, "cls": cls, "acc": acc, "current": flat_params(net).cpu(), "stage": stage,
                       "opt": opt.state_dict()}, path)
