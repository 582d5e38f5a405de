"""What every method shares: run config, method registry, class sampling and fill.

A method is a small class with a ``Config`` dataclass and a ``run`` that returns
synthetic images (normalised) and labels; :func:`distill` does the rest (data,
seeds, device, the artifact).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from ..artifact import DistilledSet
from ..config import deep_merge, flatten, has_key, set_key, to_dict, valid_keys
from ..data import LTData, load_lt_data
from ..errors import ConfigError, DataError
from ..registry import Registry
from ..utils import configure_threads, provenance, resolve_device


@dataclass
class DataConfig:
    """Which long-tailed split: dataset name + imbalance + split seed identify it."""

    dataset: str = "cifar10"
    data_root: str | None = None
    # None: the dataset's default (100 for cifar10/cifar100/digits; the classes' own counts
    # for imagefolder); a number imposes SPEC §1's rule with that factor.
    imbalance: float | None = None
    split_seed: int = 42
    download: bool = False
    image_size: int | None = None  # imagefolder: resize every image to this square side
    n_per_class: int | None = None  # imagefolder with imbalance: N of the rule (default: the largest class)


@dataclass
class NoOptions:
    """A method without options."""


@dataclass
class DistillConfig:
    """A distillation run. ``options`` holds the method's own config dataclass."""

    data: DataConfig = field(default_factory=DataConfig)
    method: str = "random"
    ipc: int = 10
    seed: int = 0
    device: str = "auto"
    fill: str = "repeat"  # tail classes with fewer images than IPC: repeat cyclically, or error
    threads: int = 0  # CPU threads; 0: all cores on CPU, 2 when computing on a GPU (utils.configure_threads)
    options: Any = field(default_factory=NoOptions)


@dataclass
class RunContext:
    """What a method's ``run`` gets besides the data."""

    ipc: int
    seed: int
    device: torch.device
    fill: str
    options: Any
    show_progress: bool = False
    run_prefix: str | None = None  # long runs write <prefix>.ckpt and <prefix>.loss.jsonl
    tracker: Any = None  # a ltdistill.tracking.Tracker (TensorBoard / W&B) or None
    image_every: int = 0  # iterations between synthetic-image grids sent to the tracker (0: end only)
    dist: Any = None  # a ltdistill.distributed.DistInfo under torch.distributed (classes sharded), else None


class Method:
    """Base class: subclasses set ``name``, ``Config`` and implement :meth:`run`."""

    name: ClassVar[str] = ""
    Config: ClassVar[type] = NoOptions
    description: ClassVar[str] = ""

    def run(self, data: LTData, ctx: RunContext) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """Return (normalised images ``N x C x H x W``, int64 labels ``N``, extra values)."""
        raise NotImplementedError


METHODS: Registry[type[Method]] = Registry("method")


def register_method(cls: type[Method]) -> type[Method]:
    METHODS.add(cls.name, cls)
    return cls


def list_methods() -> list[str]:
    return METHODS.names()


def make_config(method: str, **top: Any) -> DistillConfig:
    """A :class:`DistillConfig` with ``method``'s default options."""
    cls = METHODS.get(method)
    cfg = DistillConfig(method=method, options=cls.Config())
    return dataclasses.replace(cfg, **top) if top else cfg


# Keys of a preset that are not config fields: ``eval`` (for ``ltdistill evaluate``),
# ``method`` (the default method), ``per_method`` (option values for one method only,
# e.g. csdm's loss scale in the second pipeline) and ``reproduces`` (the benchmark
# cells the preset reproduces exactly; checked by the tests).
PRESET_META_KEYS = ("eval", "method", "per_method", "reproduces", "teacher", "chosen_by")


def option_keys_of_any_method() -> set[str]:
    """Every option name some registered method has."""
    keys = {k for name in METHODS.names() for k in valid_keys(METHODS.get(name).Config())}
    return keys | {k.rsplit(".", 1)[-1] for k in keys}  # and their bare names


def config_from_preset(preset: dict, method: str | None = None) -> tuple[DistillConfig, list[str]]:
    """A :class:`DistillConfig` for ``method`` (default: the preset's ``method``, else
    ``random``) with a merged preset applied key by key.

    An option the method lacks but another registered method has (``num_freqs`` of a
    second-pipeline preset used with ``dm``) is skipped and returned in the list; a key
    that no method knows is an error. ``per_method.<name>`` is applied after the rest
    when ``<name>`` is the method.
    """
    method = method or preset.get("method") or "random"
    per_method = preset.get("per_method") or {}
    for name in per_method:
        METHODS.get(name)  # an unknown method name in a preset is an error
    body = {k: v for k, v in preset.items() if k not in PRESET_META_KEYS}
    body = deep_merge(body, per_method.get(method) or {})
    cfg = make_config(method)
    known, skipped = None, []
    for key, value in flatten(body).items():
        if has_key(cfg, key):
            cfg = set_key(cfg, key, value)
            continue
        leaf = key.removeprefix("options.")
        known = option_keys_of_any_method() if known is None else known
        if leaf in known and "." not in leaf:
            skipped.append(leaf)
            continue
        raise ConfigError(f"unknown config key {key!r} in the preset; valid keys for {method}: "
                          f"{', '.join(valid_keys(cfg))}")
    return cfg, skipped


def fill_indices(order: torch.Tensor, ipc: int, fill: str, cname: str) -> torch.Tensor:
    """The first ``ipc`` entries of ``order``; repeat cyclically when the class is short."""
    n = len(order)
    if n == 0:
        raise DataError(f"class {cname!r} has no training images")
    if n >= ipc:
        return order[:ipc]
    if fill != "repeat":
        raise DataError(
            f"class {cname!r} has {n} images but IPC is {ipc}; pass fill=repeat to repeat them cyclically"
        )
    return order[torch.arange(ipc) % n]


def validate(cfg: DistillConfig) -> None:
    if cfg.ipc < 1:
        raise ConfigError(f"ipc must be at least 1, got {cfg.ipc}")
    if cfg.fill not in ("repeat", "error"):
        raise ConfigError(f"fill must be 'repeat' or 'error', got {cfg.fill!r}")
    METHODS.get(cfg.method)


def distill(cfg: DistillConfig, data: LTData | None = None, show_progress: bool = False,
            run_prefix: str | None = None, tracker: Any = None, image_every: int = 0) -> DistilledSet:
    """Run ``cfg.method`` on the long-tailed split and return the distilled set.

    Inside an initialised ``torch.distributed`` group (``torchrun``, or one the caller set
    up) every rank calls this with the same arguments: the DM-family methods share the
    classes out (:mod:`ltdistill.distributed`), and every rank returns the same gathered
    set, equal to one process's; only rank 0 shows progress and talks to ``tracker``.

    ``tracker`` (:func:`ltdistill.tracking.make_tracker`) receives the loss and learning
    rate at every log step and, every ``image_every`` iterations and at the end, the
    synthetic images as a grid (decoded, de-normalised)."""
    from ..distributed import current, device_for

    validate(cfg)
    cls = METHODS.get(cfg.method)
    if not isinstance(cfg.options, cls.Config):
        raise ConfigError(f"options for {cfg.method!r} must be {cls.Config.__name__}")
    rank = current()  # an initialised process group (torchrun, or the user's): shard the classes
    show_progress = show_progress and rank.is_main
    if data is None:
        d = cfg.data
        data = load_lt_data(d.dataset, d.data_root, d.imbalance, d.split_seed, d.download, d.image_size,
                            d.n_per_class, show_progress)
    device = device_for(rank, resolve_device(cfg.device))
    configure_threads(device, cfg.threads)
    tracker = tracker if rank.is_main else None
    ctx = RunContext(cfg.ipc, cfg.seed, device, cfg.fill, cfg.options,
                     show_progress, run_prefix, tracker, image_every, rank)
    origin = provenance()  # the code the run starts with (a checkout may move on during a long run)
    t0 = time.perf_counter()
    images, labels, extra = cls().run(data, ctx)
    extra = dict(extra)
    soft = extra.pop("soft_labels", None)  # a method that learns its labels (lad) returns them here
    extra.setdefault("distill_seconds", time.perf_counter() - t0)
    out = DistilledSet(
        images=images.detach().cpu().float(), labels=labels.cpu().long(),
        class_names=list(data.class_names), mean=list(data.info.mean), std=list(data.info.std),
        dataset=data.split_record(), method=cfg.method, config={**to_dict(cfg), "world_size": rank.world_size},
        seed=cfg.seed,
        extra=extra, factor=int(extra.get("factor", 1)), provenance=origin,
        soft_labels=None if soft is None else soft.float(),
    )
    if tracker:
        from ..artifact import tracker_grid

        x, y = out.training_tensors()
        tracker.image("distill/synthetic", tracker_grid(x, y, out.factor, out.mean, out.std, out.num_classes),
                      int(getattr(cfg.options, "iterations", 0) or 0))
    return out
