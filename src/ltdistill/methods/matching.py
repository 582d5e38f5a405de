"""The one distillation loop every distribution-matching method shares (SPEC §4).

Each iteration: a freshly initialised, frozen ConvNet trunk; for every class a
real batch and one siamese DSA draw shared by that batch and the class's
synthetic images; the method's per-class discrepancy between real and synthetic
features; one optimiser step on the synthetic pixels. A method only supplies a
:class:`Matcher` (its per-class loss); the extractor, the synthetic parameterisation,
the step policy, the NaN guard and the recorder (log, tracker, checkpoint / resume) are
named parts in :mod:`.parts`, and :func:`run_matching` is the short loop over them.

All randomness of iteration ``t`` derives from ``(seed, t)``, so a resumed run
reproduces an uninterrupted one exactly (on CPU).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from ..augment import apply_dsa, sample_dsa
from ..compiling import maybe_compile, should_compile
from ..data import LTData
from ..errors import ConfigError
from ..multiformation import encode
from ..progress import progress_bar
from ..registry import Registry
from ..utils import make_generator, resolve_bf16
from .base import Method, RunContext, fill_indices
from .parts import (
    EXTRACTORS,
    Guard,
    Recorder,
    StepPolicy,
    Synthetic,
    make_draws,
    make_image_optimizer,
    uses_device_draws,
)


@dataclass
class ExtractionOptions:
    """The extractor part (``options.extraction``): whose features are matched."""

    extractor: str = "random"  # random (a fresh trunk each iteration, DM's) or pool (trained, interpolated: NCFM's)
    pool_size: int = 20
    pool_epochs: int = 20
    pool_dir: str | None = None  # where trained pools are cached (default: the data cache)
    calib_weight: float = 0.0  # cross-entropy of the trained extractor on the synthetic images (pool only)
    # How the calibration reaches the images: "fused" (a term of each class's matching loss:
    # one backward and one step; ltdistill's default, measured in the cpu-v1 benchmark) or
    # "step" (NCFM's released code, ``iter_calib``: after the matching steps, its own optimiser
    # step per class — one joint step without per-class steps — on DSA-augmented images).
    calib_mode: str = "fused"
    # What a pool model is interpolated with: "fresh" (a new random trunk each iteration,
    # SPEC §4b) or "saved" (that model's own initialisation, as NCFM's code does).
    interp_init: str = "fresh"


@dataclass
class SyntheticOptions:
    """The synthetic images and their optimiser (``options.synthetic``).

    ``lr_img`` 1.0 is DM's: the validation search kept it for dm (``tuning.jsonl``: lr 1
    40.6, 3 39.8, 10 39.3) and the benchmark's dm rows use it. The kernel and spectral
    methods default to 10 (:class:`~ltdistill.methods.dm_family.KernelConfig`)."""

    init: str = "real"  # real images of the class, or noise
    pixel_space: str = "normalized"  # normalized, or unit ([0, 1], clamped after each step)
    factor: int = 1  # multi-formation: each stored image holds factor x factor tiles
    optimizer: str = "sgd"  # sgd (DM) or adamw
    lr_img: float = 1.0
    momentum: float = 0.5
    weight_decay: float = 0.0
    # How real images shrink into the tiles of a mosaic at init (factor > 1): "area" (the mean
    # of each f x f block) or "nearest" (every f-th pixel: NCFM's "mix" initialisation).
    init_resize: str = "area"
    # The image learning rate's schedule: "none", or "plateau" (NCFM's code: x plateau_factor
    # once the iteration's mean class loss has not improved for plateau_patience iterations;
    # reads the loss every iteration, so a GPU run waits for it each step).
    lr_schedule: str = "none"
    plateau_factor: float = 0.5
    plateau_patience: int = 500


@dataclass
class StepOptions:
    """The step policy (``options.steps``)."""

    per_class_steps: bool = False  # one optimiser step per class instead of one per iteration


@dataclass
class SpeedOptions:
    """Same loss, faster (``options.speed``; SPEC §9, the GPU-grade loop)."""

    # One forward for all classes (falls back per class with batch norm or per-class steps).
    # Off by default: at paper scale on the 2-core CPU, compiled, it measured 0.99x the compiled
    # per-class path's speed for csdm with 2.5x its peak memory (bench/results/throughput.json).
    fast: bool = False
    channels_last: bool = True
    bf16: bool | str = False  # bfloat16 autocast for the trunk forwards (true, false or auto = where native; changes numerics slightly)
    compile: str = "auto"  # torch.compile the trunk: auto (long runs), on or off; eager fallback
    # When NaN/inf is looked for and the loss read back to the host: "step" (every iteration,
    # stops before the bad step), "log" (at log and checkpoint points only, so an iteration
    # never waits for the device; a bad iteration is found there, named, and the images rolled
    # back to the last good check), "auto" (step on CPU, where it is free; log on GPUs).
    sync: str = "auto"
    # Where real batches, DSA parameters, trunk weights and frequencies are drawn: "host"
    # (the iteration's CPU generator, class by class: the CPU sets of every release),
    # "device" (all classes in one call each on the run's device, no copies), "auto" (host
    # on CPU, device elsewhere). Same seed and device: same set, either way.
    draws: str = "auto"


@dataclass
class RecordOptions:
    """The recorder (``options.record``): loss log, checkpoints, resume."""

    checkpoint_every: int = 100  # iterations between atomic checkpoints (0: never)
    log_every: int = 10
    resume: bool = False


@dataclass
class MatchConfig:
    """Options shared by every distribution-matching method: the loop's budget and
    discrepancy settings at the top, one nested section per part of the loop
    (``extraction``, ``synthetic``, ``steps``, ``speed``, ``record``). A key's bare name
    still addresses it when unique (``-s lr_img=10``, ``options.lr_img: 10`` in YAML).

    ``iterations`` / ``batch_real`` are a middle budget; the ``cpu`` preset is the
    benchmark's (1000 / 64), the dataset presets with ``pipeline-ncfm`` the paper's.
    """

    iterations: int = 1000
    batch_real: int = 256
    net: str = "convnet"
    dsa: bool = True
    dsa_strategy: str = "color_crop_cutout_flip_scale_rotate"
    normalize_features: bool = False  # L2-normalise features before the discrepancy
    loss_scale: float = 1.0
    extraction: ExtractionOptions = field(default_factory=ExtractionOptions)
    synthetic: SyntheticOptions = field(default_factory=SyntheticOptions)
    steps: StepOptions = field(default_factory=StepOptions)
    speed: SpeedOptions = field(default_factory=SpeedOptions)
    record: RecordOptions = field(default_factory=RecordOptions)


class Matcher:
    """A method's discrepancy. ``begin`` runs once per iteration before the classes."""

    def __init__(self, cfg: Any, data: LTData, ctx: RunContext, dim: int) -> None:
        self.cfg, self.data, self.ctx, self.dim = cfg, data, ctx, dim

    def begin(self, it: int, g: torch.Generator) -> None:
        pass

    def class_loss(self, c: int, real: torch.Tensor, syn: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    shardable = True  # per-class losses independent given the iteration's draws (classes may live on ranks)

    def after_backward(self) -> None:
        """Hook after the gradients of an iteration exist (e.g. an adversary's ascent step)."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


DISCREPANCIES: Registry[type[Matcher]] = Registry("discrepancy")
"""The per-class discrepancies (``linear``, ``kernel``, ``sdd``, ``csdm``, ``cfd``): a
:class:`Matcher` each, wrapping a pure function of :mod:`ltdistill.discrepancy`."""


def list_discrepancies() -> list[str]:
    return DISCREPANCIES.names()


class MatchingMethod(Method):
    """Base of the DM family. A method is a name, a ``Config`` (its defaults) and the name
    of a registered discrepancy; the loop is shared."""

    Config = MatchConfig
    discrepancy: str = ""

    def run(self, data: LTData, ctx: RunContext):
        return run_matching(DISCREPANCIES.get(self.discrepancy), data, ctx)


def _init_images(data: LTData, ctx: RunContext, cfg: MatchConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Stored images (in ``cfg.synthetic.pixel_space``) and their labels; with factor f each
    stored image starts as a mosaic of f*f downsampled real images of its class."""
    info = data.info
    per = ctx.ipc * cfg.synthetic.factor**2
    picks, labels = [], []
    for c in range(data.num_classes):
        idx = data.train.indices_of(c)
        perm = torch.randperm(len(idx), generator=make_generator(ctx.seed, "init", c))
        picks.append(idx[fill_indices(perm, per, ctx.fill, data.class_names[c])])
        labels += [c] * ctx.ipc
    if cfg.synthetic.init == "real":
        x = data.train.images[torch.cat(picks)].float() / 255.0
        x = encode(x, cfg.synthetic.factor, cfg.synthetic.init_resize)
        if cfg.synthetic.pixel_space == "normalized":
            x = data.normalize_float(x)
    elif cfg.synthetic.init == "noise":
        g = make_generator(ctx.seed, "init-noise")
        x = torch.randn(len(labels), info.channels, info.image_size, info.image_size, generator=g)
        if cfg.synthetic.pixel_space == "unit":
            x = (x * 0.2 + 0.5).clamp(0, 1)
    else:
        raise ConfigError(f"init must be 'real' or 'noise', got {cfg.synthetic.init!r}")
    return x, torch.tensor(labels, dtype=torch.long)


def _validate(cfg: MatchConfig) -> None:
    if cfg.iterations < 0 or cfg.batch_real < 1:
        raise ConfigError("iterations must be >= 0 and batch_real >= 1")
    EXTRACTORS.get(cfg.extraction.extractor)
    if cfg.synthetic.pixel_space not in ("normalized", "unit"):
        raise ConfigError(f"pixel_space must be 'normalized' or 'unit', got {cfg.synthetic.pixel_space!r}")
    if cfg.extraction.calib_weight > 0 and cfg.extraction.extractor != "pool":
        raise ConfigError("calib_weight > 0 needs extractor=pool (a trained network to calibrate with)")
    for name, value, allowed in (("calib_mode", cfg.extraction.calib_mode, ("fused", "step")),
                                 ("interp_init", cfg.extraction.interp_init, ("fresh", "saved")),
                                 ("init_resize", cfg.synthetic.init_resize, ("area", "nearest")),
                                 ("lr_schedule", cfg.synthetic.lr_schedule, ("none", "plateau"))):
        if value not in allowed:
            raise ConfigError(f"{name} must be {' or '.join(map(repr, allowed))}, got {value!r}")
    if cfg.synthetic.lr_schedule == "plateau" and not (0 < cfg.synthetic.plateau_factor < 1
                                                       and cfg.synthetic.plateau_patience >= 0):
        raise ConfigError("plateau_factor must be in (0, 1) and plateau_patience >= 0")
    if cfg.speed.sync not in ("auto", "step", "log"):
        raise ConfigError(f"sync must be auto, step or log, got {cfg.speed.sync!r}")
    if cfg.synthetic.optimizer not in ("sgd", "adamw"):
        raise ConfigError(f"optimizer must be 'sgd' or 'adamw', got {cfg.synthetic.optimizer!r}")
    uses_device_draws(cfg, torch.device("cpu"))  # validates options.draws


def run_matching(matcher_cls: type[Matcher], data: LTData, ctx: RunContext):
    """The loop: per iteration, draw the extractor, draw every class's real batch and DSA,
    compute the discrepancy per class (one forward per class, or all in one), step, then
    log / check / checkpoint. All randomness of iteration ``t`` comes from ``(seed, t)``."""
    from ..distributed import DistInfo, all_gather_objects, all_reduce_sum

    cfg: MatchConfig = ctx.options
    _validate(cfg)
    dev, info, ipc = ctx.device, data.info, ctx.ipc
    rank = getattr(ctx, "dist", None) or DistInfo()
    mine = rank.classes(data.num_classes)  # every class in one process; this rank's share under torchrun
    x0, labels = _init_images(data, ctx, cfg)
    syn = Synthetic(x0, labels, data, cfg, ipc, dev, mine)
    opt = make_image_optimizer([syn.x], cfg)
    extractor = EXTRACTORS.get(cfg.extraction.extractor)(cfg, data, ctx)
    matcher = matcher_cls(cfg, data, ctx, extractor.feature_dim)
    if rank.enabled and not matcher.shardable:
        raise ConfigError(f"{matcher_cls.__name__} couples the classes (e.g. ncfm's adversarial sampler): "
                          "it cannot be sharded across processes; run it in one process")
    scheduler = None
    if cfg.synthetic.lr_schedule == "plateau":
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            opt, mode="min", factor=cfg.synthetic.plateau_factor, patience=cfg.synthetic.plateau_patience)
    rec = Recorder(ctx, cfg, data, syn, opt, matcher, scheduler)
    start = rec.resume()
    deferred = cfg.speed.sync == "log" or (cfg.speed.sync == "auto" and dev.type != "cpu")
    guard = Guard(deferred, syn, opt, dev, start, rec.ckpt, data.class_names)
    policy = StepPolicy(cfg.steps.per_class_steps, syn, opt, guard)
    draw = make_draws(data, cfg, ctx)
    # The split lives on the run's device (uint8, normalised there per batch): a real batch is
    # gathered where it is used, never assembled on the host and copied.
    real_images = data.train.images.to(dev)
    work = cfg.iterations * data.num_classes * (cfg.batch_real + ipc * cfg.synthetic.factor**2) * info.image_size**2
    embed = maybe_compile(extractor.trunk.embed, should_compile(cfg.speed.compile, work), f"{cfg.net}.embed")
    mem = torch.channels_last if cfg.speed.channels_last else torch.contiguous_format
    amp = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=resolve_bf16(cfg.speed.bf16, dev))
    one_forward = cfg.speed.fast and not cfg.steps.per_class_steps and not extractor.batchnorm
    fused_calibration = cfg.extraction.calib_weight > 0 and cfg.extraction.calib_mode == "fused"
    step_calibration = cfg.extraction.calib_weight > 0 and cfg.extraction.calib_mode == "step"

    def real_batch(pick: torch.Tensor, p) -> torch.Tensor:
        return apply_dsa(data.normalize(real_images[pick.to(dev)], dev), p)

    def class_loss(c: int, fr: torch.Tensor, fs: torch.Tensor, xs: torch.Tensor) -> torch.Tensor:
        fr, fs = fr.float(), fs.float()
        if cfg.normalize_features:
            fr, fs = F.normalize(fr, dim=1), F.normalize(fs, dim=1)
        loss = matcher.class_loss(c, fr, fs) * cfg.loss_scale
        if fused_calibration:
            target = torch.full((len(xs),), c, dtype=torch.long, device=dev)
            loss = loss + cfg.extraction.calib_weight * F.cross_entropy(extractor.calibration(xs), target)
        guard.loss(loss, c)
        return loss

    def per_class(draws: list) -> Any:
        """One forward per class (the DM reference structure); the graph of one class at a time."""
        total = torch.zeros((), device=dev) if deferred else 0.0
        for c, (pick, p) in enumerate(draws):
            if c not in syn.pos:  # another rank's class
                policy.idle_class()
                continue
            xs = apply_dsa(syn.of_class(c), p)
            with torch.no_grad(), amp:
                fr = embed(real_batch(pick, p))
            with amp:
                fs = embed(xs)
            loss = class_loss(c, fr, fs, xs)
            loss.backward()
            total = total + loss.detach() if deferred else total + loss.item()
            policy.after_class()
        return total

    def all_at_once(draws: list) -> Any:
        """All classes' real images through one forward pass (no autograd graph), all
        synthetic images through another; each class keeps its own siamese DSA draw.
        Per-sample (instance) norm makes this equal to the per-class forward."""
        draws = [(c, *draws[c]) for c in syn.classes]
        xr = torch.cat([real_batch(pick, p) for _, pick, p in draws])
        xs_list = [apply_dsa(syn.of_class(c), p) for c, _, p in draws]
        extractor.trunk.to(memory_format=mem)
        with torch.no_grad(), amp:
            fr = embed(xr.contiguous(memory_format=mem))
        with amp:
            fs = embed(torch.cat(xs_list).contiguous(memory_format=mem))
        frs, fss = fr.split([len(pick) for _, pick, _ in draws]), fs.split([len(x) for x in xs_list])
        total = torch.stack([class_loss(c, frs[i], fss[i], xs_list[i]) for i, (c, _, _) in enumerate(draws)]).sum()
        total.backward()
        return total.detach() if deferred else float(total.detach())

    def calibrate(it: int) -> Any:
        """NCFM's calibration step (``calib_mode=step``): cross-entropy of the iteration's
        trained model on each class's augmented synthetic images, its own optimiser step per
        class (one for all classes without per-class steps). Its augmentation comes from its
        own ``(seed, "calib", it)`` stream, drawn for every class on every rank."""
        gc = make_generator(ctx.seed, "calib", it)
        total = torch.zeros((), device=dev) if deferred else 0.0
        n = ipc * cfg.synthetic.factor**2  # decoded images per class
        for c in range(data.num_classes):
            p = sample_dsa(n, info.image_size, gc, draw.dsa)  # the draws' DSA settings
            if c not in syn.pos:  # another rank's class
                policy.idle_class()
                continue
            xs = apply_dsa(syn.of_class(c), p)
            with amp:
                out = extractor.calibration(xs)
            target = torch.full((len(xs),), c, dtype=torch.long, device=dev)
            loss = cfg.extraction.calib_weight * F.cross_entropy(out.float(), target)
            guard.loss(loss, c)
            loss.backward()
            total = total + loss.detach() if deferred else total + loss.item()
            policy.after_class()
        policy.after_iteration()
        return total

    forward = all_at_once if one_forward else per_class
    with progress_bar(total=cfg.iterations, desc=f"distill {ctx.options.__class__.__name__}",
                      enabled=ctx.show_progress) as bar:
        bar.update(start)
        for it in range(start, cfg.iterations):
            g = make_generator(ctx.seed, "iter", it)
            extractor.draw(it, g)
            matcher.begin(it, g)
            opt.zero_grad(set_to_none=True)
            guard.begin(it)
            # Every class's real batch and DSA parameters first, in a fixed order, so both
            # forward paths consume the generators identically.
            total = forward(draw(it, g))
            matcher.after_backward()
            policy.after_iteration()
            if step_calibration:
                total = total + calibrate(it)
            if scheduler is not None:  # on the mean class loss of every class, read every iteration
                mean = float(all_reduce_sum(float(total)) if rank.enabled else total) / data.num_classes
                scheduler.step(mean)
            guard.end(total)
            done = it + 1
            logs = done % cfg.record.log_every == 0 or done == cfg.iterations
            saves = bool(cfg.record.checkpoint_every) and done % cfg.record.checkpoint_every == 0
            if deferred and (logs or saves):
                guard.check(done)  # the one host synchronisation, at check points only
                total = float(total)
            if logs and rank.enabled:
                total = float(all_reduce_sum(total))  # the loss of every class, not this rank's share
            bar.update(1)
            if not isinstance(total, torch.Tensor):
                bar.set_postfix(loss=f"{total:.4g}")
            if logs:
                rec.log(done, total)
            rec.images(done)
            if saves:
                rec.save(done)
    if rec.ckpt is not None and cfg.iterations > start:
        rec.save(cfg.iterations)
    images = syn.export()
    if rank.enabled:  # the shards, gathered on every rank, in class order
        rows = {}
        for classes, x in all_gather_objects((syn.classes, images)):
            rows.update({c: x[i * ipc : (i + 1) * ipc] for i, c in enumerate(classes)})
        images = torch.cat([rows[c] for c in range(data.num_classes)])
    return images, labels, {"final_loss": rec.history[-1]["loss"] if rec.history else None,
                                  "iterations_run": cfg.iterations - start, "factor": cfg.synthetic.factor}
