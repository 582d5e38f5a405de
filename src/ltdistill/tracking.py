"""Experiment tracking: TensorBoard and Weights & Biases, both optional extras.

A :class:`Tracker` takes scalars, images and a final summary; :func:`make_tracker`
builds one from ``--tensorboard DIR`` / ``--wandb PROJECT`` and checks the extra is
installed before any work starts. Without either flag nothing is imported and
nothing changes. W&B works offline (``WANDB_MODE=offline``) with no network.

Tags: ``distill/loss``, ``distill/lr_img``, ``distill/synthetic`` (image grid, one row
per class, decoded and de-normalised); ``eval/train_loss``, ``eval/lr`` (per epoch of
each run group), ``eval/acc`` and ``eval/head|medium|tail`` (per run, step = run
index), ``eval/acc_mean`` and the group means in the summary.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .errors import ConfigError


class Tracker:
    """Fans calls out to its backends; every method is a no-op without backends."""

    def __init__(self, backends: list | None = None) -> None:
        self.backends = list(backends or [])

    def __bool__(self) -> bool:
        return bool(self.backends)

    def scalar(self, tag: str, value: float, step: int) -> None:
        for b in self.backends:
            b.scalar(tag, float(value), int(step))

    def image(self, tag: str, hwc_uint8: np.ndarray, step: int) -> None:
        for b in self.backends:
            b.image(tag, hwc_uint8, int(step))

    def summary(self, values: dict[str, float]) -> None:
        for b in self.backends:
            b.summary({k: float(v) for k, v in values.items()})

    def close(self) -> None:
        for b in self.backends:
            b.close()


class _TensorBoard:
    def __init__(self, log_dir: str) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.w = SummaryWriter(log_dir)

    def scalar(self, tag, value, step):
        self.w.add_scalar(tag, value, step)

    def image(self, tag, img, step):
        self.w.add_image(tag, img, step, dataformats="HWC")

    def summary(self, values):
        for k, v in values.items():
            self.w.add_scalar(k, v, 0)

    def close(self):
        self.w.close()


class _WandB:
    def __init__(self, project: str, config: dict, name: str | None, job: str) -> None:
        import wandb

        self.wandb = wandb
        self.run = wandb.init(project=project, config=config, name=name, job_type=job, reinit="finish_previous")
        self.run.define_metric("step")
        self.run.define_metric("*", step_metric="step")

    def scalar(self, tag, value, step):
        self.run.log({tag: value, "step": step})

    def image(self, tag, img, step):
        self.run.log({tag: self.wandb.Image(img), "step": step})

    def summary(self, values):
        for k, v in values.items():
            self.run.summary[k] = v

    def close(self):
        self.run.finish()


def _need(module: str, extra: str, flag: str) -> None:
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise ConfigError(f"{flag} needs the {extra} extra: pip install 'ltdistill[{extra}]'")


def check_extras(tensorboard: str | None, wandb: str | None) -> None:
    """A one-line error naming the missing extra, before any work starts."""
    if tensorboard:
        _need("tensorboard", "tensorboard", "--tensorboard")
    if wandb:
        _need("wandb", "wandb", "--wandb")


def make_tracker(tensorboard: str | None = None, wandb: str | None = None, config: dict | None = None,
                 name: str | None = None, job: str = "distill") -> Tracker:
    """A :class:`Tracker` writing to TensorBoard (``tensorboard``: a log folder) and/or
    W&B (``wandb``: a project name); an empty one when both are None."""
    check_extras(tensorboard, wandb)
    backends: list[Any] = []
    if tensorboard:
        backends.append(_TensorBoard(tensorboard))
    if wandb:
        backends.append(_WandB(wandb, config or {}, name, job))
    return Tracker(backends)
