"""The one distillation loop every distribution-matching method shares (SPEC §4).

Each iteration: a freshly initialised, frozen ConvNet trunk; for every class a
real batch and one siamese DSA draw shared by that batch and the class's
synthetic images; the method's per-class discrepancy between real and synthetic
features; one optimiser step on the synthetic pixels. A method only supplies a
:class:`Matcher` (its per-class loss); sampling, optimisation, logging,
checkpoint / resume and NaN handling live here, once.

All randomness of iteration ``t`` derives from ``(seed, t)``, so a resumed run
reproduces an uninterrupted one exactly (on CPU).
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..augment import DSAConfig, apply_dsa, sample_dsa
from ..compiling import maybe_compile, should_compile
from ..data import LTData
from ..errors import ConfigError, TrainingError
from ..extractors import interpolate_, train_pool
from ..multiformation import decode, encode
from ..nets import Reinit, has_batchnorm, init_net
from ..progress import progress_bar
from ..utils import atomic_torch_save, atomic_write_bytes, derive_seed, make_generator
from .base import Method, RunContext, fill_indices


@dataclass
class MatchConfig:
    """Options shared by every distribution-matching method.

    ``lr_img`` 1.0 is DM's: the validation search kept it for dm (``tuning.jsonl``: lr 1
    40.6, 3 39.8, 10 39.3) and the benchmark's dm rows use it. The kernel and spectral
    methods override it (:class:`~ltdistill.methods.dm_family.KernelConfig`).
    ``iterations`` / ``batch_real`` are a middle budget; the ``cpu`` preset is the
    benchmark's (1000 / 64), the dataset presets with ``pipeline-ncfm`` the paper's.
    """

    iterations: int = 1000
    batch_real: int = 256
    lr_img: float = 1.0
    momentum: float = 0.5
    optimizer: str = "sgd"  # sgd (DM) or adamw
    weight_decay: float = 0.0
    init: str = "real"  # real images of the class, or noise
    net: str = "convnet"
    dsa: bool = True
    dsa_strategy: str = "color_crop_cutout_flip_scale_rotate"
    normalize_features: bool = False  # L2-normalise features before the discrepancy
    loss_scale: float = 1.0
    checkpoint_every: int = 100  # iterations between atomic checkpoints (0: never)
    log_every: int = 10
    resume: bool = False
    # --- the second pipeline (SPEC §4b, NCFM's); the defaults above are DM's pipeline
    extractor: str = "random"  # random (fresh init each iteration) or pool (trained, interpolated)
    pool_size: int = 20
    pool_epochs: int = 20
    pool_dir: str | None = None  # where trained pools are cached (default: the data cache)
    factor: int = 1  # multi-formation: each stored image holds factor x factor tiles
    calib_weight: float = 0.0  # cross-entropy of the trained extractor on the synthetic images
    pixel_space: str = "normalized"  # normalized, or unit ([0, 1], clamped after each step)
    per_class_steps: bool = False  # one optimiser step per class instead of per iteration
    # --- speed (SPEC §9 / the speed issue): same loss, faster
    # One forward for all classes (falls back per class with batch norm or per-class steps).
    # Off by default: at paper scale on the 2-core CPU, compiled, it measured 0.99x the compiled
    # per-class path's speed for csdm with 2.5x its peak memory (bench/results/throughput.json).
    fast: bool = False
    channels_last: bool = True
    bf16: bool = False  # bfloat16 autocast for the trunk forwards, either path (changes numerics slightly)
    compile: str = "auto"  # torch.compile the trunk: auto (long runs), on or off; eager fallback
    # When NaN/inf is looked for and the loss read back to the host: "step" (every iteration,
    # stops before the bad step), "log" (at log and checkpoint points only, so an iteration
    # never waits for the device; a bad iteration is found there, named, and the images rolled
    # back to the last good check), "auto" (step on CPU, where it is free; log on GPUs).
    sync: str = "auto"


class Matcher:
    """A method's discrepancy. ``begin`` runs once per iteration before the classes."""

    def __init__(self, cfg: Any, data: LTData, ctx: RunContext, dim: int) -> None:
        self.cfg, self.data, self.ctx, self.dim = cfg, data, ctx, dim

    def begin(self, it: int, g: torch.Generator) -> None:
        pass

    def class_loss(self, c: int, real: torch.Tensor, syn: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def after_backward(self) -> None:
        """Hook after the gradients of an iteration exist (e.g. an adversary's ascent step)."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class MatchingMethod(Method):
    """Base of the DM family: subclasses set ``Config`` and ``matcher``."""

    Config = MatchConfig
    matcher: type[Matcher] = Matcher

    def run(self, data: LTData, ctx: RunContext):
        return run_matching(self.matcher, data, ctx)


def _init_images(data: LTData, ctx: RunContext, cfg: MatchConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Stored images (in ``cfg.pixel_space``) and their labels; with factor f each
    stored image starts as a mosaic of f*f downsampled real images of its class."""
    info = data.info
    per = ctx.ipc * cfg.factor**2
    picks, labels = [], []
    for c in range(data.num_classes):
        idx = data.train.indices_of(c)
        perm = torch.randperm(len(idx), generator=make_generator(ctx.seed, "init", c))
        picks.append(idx[fill_indices(perm, per, ctx.fill, data.class_names[c])])
        labels += [c] * ctx.ipc
    if cfg.init == "real":
        x = data.train.images[torch.cat(picks)].float() / 255.0
        x = encode(x, cfg.factor)
        if cfg.pixel_space == "normalized":
            x = _normalize(x, data)
    elif cfg.init == "noise":
        g = make_generator(ctx.seed, "init-noise")
        x = torch.randn(len(labels), info.channels, info.image_size, info.image_size, generator=g)
        if cfg.pixel_space == "unit":
            x = (x * 0.2 + 0.5).clamp(0, 1)
    else:
        raise ConfigError(f"init must be 'real' or 'noise', got {cfg.init!r}")
    return x, torch.tensor(labels, dtype=torch.long)


def _normalize(x: torch.Tensor, data: LTData) -> torch.Tensor:
    mean = torch.tensor(data.info.mean, device=x.device).view(1, -1, 1, 1)
    std = torch.tensor(data.info.std, device=x.device).view(1, -1, 1, 1)
    return (x - mean) / std


def _validate(cfg: MatchConfig) -> None:
    if cfg.iterations < 0 or cfg.batch_real < 1:
        raise ConfigError("iterations must be >= 0 and batch_real >= 1")
    if cfg.extractor not in ("random", "pool"):
        raise ConfigError(f"extractor must be 'random' or 'pool', got {cfg.extractor!r}")
    if cfg.pixel_space not in ("normalized", "unit"):
        raise ConfigError(f"pixel_space must be 'normalized' or 'unit', got {cfg.pixel_space!r}")
    if cfg.calib_weight > 0 and cfg.extractor != "pool":
        raise ConfigError("calib_weight > 0 needs extractor=pool (a trained network to calibrate with)")
    if cfg.sync not in ("auto", "step", "log"):
        raise ConfigError(f"sync must be auto, step or log, got {cfg.sync!r}")
    if cfg.extractor == "pool" and (cfg.pool_size < 1 or cfg.pool_epochs < 1):
        raise ConfigError("pool_size and pool_epochs must be at least 1")


def _optimizer(params: list[torch.Tensor], cfg: MatchConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr_img, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr_img, weight_decay=cfg.weight_decay)
    raise ConfigError(f"optimizer must be 'sgd' or 'adamw', got {cfg.optimizer!r}")


def _track_images(ctx: RunContext, data: LTData, x: torch.Tensor, labels: torch.Tensor, factor: int,
                  step: int) -> None:
    """The current synthetic images (decoded, normalised) as a de-normalised grid."""
    from ..artifact import grid_array

    mean = torch.tensor(data.info.mean).view(1, -1, 1, 1)
    std = torch.tensor(data.info.std).view(1, -1, 1, 1)
    x = (x.float().cpu() * std + mean).clamp(0, 1)
    y = labels.repeat_interleave(factor**2) if factor > 1 else labels
    ctx.tracker.image("distill/synthetic", grid_array(x, y, data.num_classes), step)


def run_matching(matcher_cls: type[Matcher], data: LTData, ctx: RunContext):
    cfg: MatchConfig = ctx.options
    _validate(cfg)
    dev = ctx.device
    info = data.info
    syn_init, labels = _init_images(data, ctx, cfg)
    syn = syn_init.to(dev).requires_grad_(True)
    opt = _optimizer([syn], cfg)
    probe = init_net(cfg.net, info.channels, data.num_classes, info.image_size, 0)
    matcher = matcher_cls(cfg, data, ctx, probe.feature_dim)
    dsa_cfg = DSAConfig(strategy=cfg.dsa_strategy if cfg.dsa else "none")
    class_idx = [data.train.indices_of(c) for c in range(data.num_classes)]
    # The split lives on the run's device (uint8, normalised there per batch): a real batch is
    # gathered where it is used, never assembled on the host and copied.
    real_images = data.train.images.to(dev)
    ipc = ctx.ipc
    pool = []
    if cfg.extractor == "pool":
        pool = train_pool(data, cfg.net, cfg.pool_size, cfg.pool_epochs, derive_seed(ctx.seed, "pool"),
                          str(dev), cfg.pool_dir, ctx.show_progress)
        pool = [{k: v.to(dev) for k, v in m.items()} for m in pool]
    trained = init_net(cfg.net, info.channels, data.num_classes, info.image_size, 0).to(dev).requires_grad_(False)

    def to_net(x: torch.Tensor) -> torch.Tensor:
        """Stored synthetic pixels -> decoded, normalised network input."""
        x = decode(x, cfg.factor)
        return _normalize(x, data) if cfg.pixel_space == "unit" else x

    deferred = cfg.sync == "log" or (cfg.sync == "auto" and dev.type != "cpu")
    finite = None  # deferred mode: a device flag, false once this iteration saw NaN/inf

    def step() -> None:
        nonlocal finite
        if deferred:
            if syn.grad is not None:
                finite = finite & torch.isfinite(syn.grad).all()
        elif syn.grad is not None and not torch.isfinite(syn.grad).all():
            raise TrainingError(f"gradient is NaN/inf at iteration {it}; last good checkpoint {ckpt} kept")
        opt.step()
        opt.zero_grad(set_to_none=True)
        if cfg.pixel_space == "unit":
            with torch.no_grad():
                syn.clamp_(0, 1)

    prefix = Path(ctx.run_prefix) if ctx.run_prefix else None
    ckpt = prefix.with_name(prefix.name + ".ckpt") if prefix else None
    log_path = prefix.with_name(prefix.name + ".loss.jsonl") if prefix else None
    identity = {"dataset": data.split_record(), "ipc": ipc, "seed": ctx.seed,
                "options": {k: v for k, v in vars(cfg).items() if k not in ("iterations", "resume",
                                                                             "checkpoint_every", "log_every", "sync")}}
    start, history = 0, []
    if cfg.resume and ckpt is not None and ckpt.is_file():
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
        if state.get("identity") != identity:
            raise ConfigError(f"checkpoint {ckpt} belongs to a different run (data, IPC, seed or options differ)")
        with torch.no_grad():
            syn.copy_(state["images"].to(dev))
        opt.load_state_dict(state["optimizer"])
        matcher.load_state_dict(state["matcher"])
        start, history = int(state["iteration"]), list(state["history"])
    if log_path is not None:
        atomic_write_bytes(log_path, "".join(json.dumps(h) + "\n" for h in history).encode())

    def save_ckpt(iteration: int) -> None:
        if ckpt is None:
            return
        atomic_torch_save({"iteration": iteration, "images": syn.detach().cpu(), "optimizer": opt.state_dict(),
                           "matcher": matcher.state_dict(), "history": history, "identity": identity}, ckpt)

    fast = cfg.fast and not cfg.per_class_steps and not has_batchnorm(probe)
    # One trunk module for the whole run, re-initialised in place each iteration, so a
    # compiled embed is compiled once (its weights are graph inputs, not constants).
    trunk = init_net(cfg.net, info.channels, data.num_classes, info.image_size, 0).to(dev)
    trunk.requires_grad_(False)
    reinit = Reinit(trunk)
    work = cfg.iterations * data.num_classes * (cfg.batch_real + ipc * cfg.factor**2) * info.image_size**2
    embed = maybe_compile(trunk.embed, should_compile(cfg.compile, work), f"{cfg.net}.embed")
    mem = torch.channels_last if cfg.channels_last else torch.contiguous_format
    amp = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=cfg.bf16)

    def class_loss(c: int, fr: torch.Tensor, fs: torch.Tensor, xs: torch.Tensor) -> torch.Tensor:
        fr, fs = fr.float(), fs.float()
        if cfg.normalize_features:
            fr, fs = F.normalize(fr, dim=1), F.normalize(fs, dim=1)
        loss = matcher.class_loss(c, fr, fs) * cfg.loss_scale
        if cfg.calib_weight > 0:
            target = torch.full((len(xs),), c, dtype=torch.long, device=dev)
            loss = loss + cfg.calib_weight * F.cross_entropy(trained(xs), target)
        if not deferred and not torch.isfinite(loss):
            raise TrainingError(
                f"loss is {loss.item()} at iteration {it} (class {data.class_names[c]!r}); "
                f"stopped before the step; the last good checkpoint ({ckpt}) is kept"
            )
        return loss

    def _fast_step(draws: list) -> float:
        """All classes' real images through one forward pass (no autograd graph), all
        synthetic images through another; each class keeps its own siamese DSA draw.
        Per-sample (instance) norm makes this equal to the per-class forward."""
        xr = torch.cat([apply_dsa(data.normalize(real_images[pick.to(dev)], dev), p) for pick, p in draws])
        xs_list = [apply_dsa(to_net(syn[c * ipc : (c + 1) * ipc]), p) for c, (_, p) in enumerate(draws)]
        xs = torch.cat(xs_list)
        trunk.to(memory_format=mem)
        with torch.no_grad(), amp:
            fr = embed(xr.contiguous(memory_format=mem))
        with amp:
            fs = embed(xs.contiguous(memory_format=mem))
        sizes_r = [len(pick) for pick, _ in draws]
        frs, fss = fr.split(sizes_r), fs.split([len(x) for x in xs_list])
        losses = [class_loss(c, frs[c], fss[c], xs_list[c]) for c in range(len(draws))]
        total = torch.stack(losses).sum()
        total.backward()
        return total.detach() if deferred else float(total.detach())

    def snapshot(iteration: int) -> tuple:
        return iteration, syn.detach().clone(), copy.deepcopy(opt.state_dict())

    def restore(snap: tuple) -> None:
        with torch.no_grad():
            syn.copy_(snap[1])
        opt.load_state_dict(snap[2])

    bad_at = torch.full((), -1, dtype=torch.long, device=dev) if deferred else None
    good = snapshot(start) if deferred else None
    t0 = time.perf_counter()
    with progress_bar(total=cfg.iterations, desc=f"distill {ctx.options.__class__.__name__}",
                      enabled=ctx.show_progress) as bar:
        bar.update(start)
        for it in range(start, cfg.iterations):
            g = make_generator(ctx.seed, "iter", it)
            reinit(derive_seed(ctx.seed, "trunk", it))  # in place: no module built, no dummy forward
            if pool:
                k = int(torch.randint(len(pool), (1,), generator=g))
                lam = float(torch.rand(1, generator=g))
                interpolate_(trunk, pool[k], lam)
                trained.load_state_dict(pool[k])
            matcher.begin(it, g)
            opt.zero_grad(set_to_none=True)
            if deferred:
                finite = torch.ones((), dtype=torch.bool, device=dev)
            # Draw every class's real batch and DSA parameters first, in a fixed order,
            # so both paths below consume the generator identically.
            draws = []
            for c in range(data.num_classes):
                idx = class_idx[c]
                pick = idx[torch.randperm(len(idx), generator=g)[: cfg.batch_real]]
                draws.append((pick, sample_dsa(1, info.image_size, g, dsa_cfg, siamese=True)))
            if fast:
                total = _fast_step(draws)
            else:
                total = torch.zeros((), device=dev) if deferred else 0.0
                for c, (pick, p) in enumerate(draws):
                    xr = apply_dsa(data.normalize(real_images[pick.to(dev)], dev), p)
                    xs = apply_dsa(to_net(syn[c * ipc : (c + 1) * ipc]), p)
                    with torch.no_grad(), amp:
                        fr = embed(xr)
                    with amp:
                        fs = embed(xs)
                    loss = class_loss(c, fr, fs, xs)
                    loss.backward()  # per class: the graph of one class at a time
                    total = total + loss.detach() if deferred else total + loss.item()
                    if cfg.per_class_steps:
                        step()
            matcher.after_backward()
            if not cfg.per_class_steps:
                step()
            last = it + 1 == cfg.iterations
            logs = (it + 1) % cfg.log_every == 0 or last
            if deferred:
                finite = finite & torch.isfinite(total)
                bad_at = torch.where((bad_at < 0) & ~finite, torch.full_like(bad_at, it), bad_at)
                if logs or last or (cfg.checkpoint_every and (it + 1) % cfg.checkpoint_every == 0):
                    first_bad = int(bad_at)  # the one host synchronisation, at check points only
                    if first_bad >= 0:
                        restore(good)
                        raise TrainingError(
                            f"loss or gradient is NaN/inf at iteration {first_bad} (found at the check after "
                            f"iteration {it + 1}); the images were rolled back to iteration {good[0]}, nothing "
                            f"later is saved, and the last good checkpoint ({ckpt}) is kept")
                    good = snapshot(it + 1)
                    total = float(total)
            bar.update(1)
            if not isinstance(total, torch.Tensor):
                bar.set_postfix(loss=f"{total:.4g}")
            if logs:
                rec = {"iteration": it + 1, "loss": total, "seconds": round(time.perf_counter() - t0, 3)}
                history.append(rec)
                if log_path is not None:
                    with open(log_path, "a") as f:
                        f.write(json.dumps(rec) + "\n")
                if ctx.tracker:
                    ctx.tracker.scalar("distill/loss", total, it + 1)
                    ctx.tracker.scalar("distill/lr_img", opt.param_groups[0]["lr"], it + 1)
            if ctx.tracker and ctx.image_every and (it + 1) % ctx.image_every == 0 and it + 1 < cfg.iterations:
                _track_images(ctx, data, to_net(syn.detach()), labels, cfg.factor, it + 1)
            if cfg.checkpoint_every and (it + 1) % cfg.checkpoint_every == 0:
                save_ckpt(it + 1)
    if ckpt is not None and cfg.iterations > start:
        save_ckpt(cfg.iterations)
    images = syn.detach().cpu()
    if cfg.pixel_space == "unit":
        images = _normalize(images, data)  # artifacts always hold normalised images
    return images, labels, {"final_loss": history[-1]["loss"] if history else None,
                            "iterations_run": cfg.iterations - start, "factor": cfg.factor}
