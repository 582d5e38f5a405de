"""Teachers and soft labels: train a net on the long-tailed split, label a set with it,
optionally calibrated by ADSA (SPEC §6)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from .artifact import DistilledSet
from .calibration import adjusted_probs, adsa_search
from .config import to_dict
from .data import LTData
from .errors import ArtifactError, ConfigError
from .evaluate import EvalConfig
from .nets import create_net
from .utils import atomic_torch_save, resolve_device

TEACHER_FORMAT = "ltdistill-teacher"


def train_teacher(data: LTData, cfg: EvalConfig, seed: int = 0, show_progress: bool = False,
                  tracker: Any = None, checkpoint: Any = None) -> dict[str, Any]:
    """Train ``cfg.net`` on the whole long-tailed split (cross-entropy, DSA, seeded).
    A tracker gets ``teacher/train_loss`` and ``teacher/lr`` per epoch.

    ``checkpoint`` (a file path) makes the training resumable: the whole state is written
    atomically there every twentieth of the epochs, a later call with the same path, data and
    settings continues from it to the teacher the uninterrupted call returns, and the file is
    removed at the end; a checkpoint of another training is refused."""
    from .evaluate import _checkpoint_key, _load_checkpoint, train_nets
    from .progress import progress_bar

    def on_epoch(ep, losses, lr):
        tracker.scalar("teacher/train_loss", losses[0], ep)
        tracker.scalar("teacher/lr", lr, ep)

    x, y = data.normalize(data.train.images), data.train.labels
    resume = on_checkpoint = None
    if checkpoint:
        ck, key = Path(checkpoint), f"teacher-{seed}-" + _checkpoint_key(x, y, cfg)
        state = _load_checkpoint(ck, key, "teacher training")
        resume = state["train"] if state is not None else None

        def on_checkpoint(train):
            atomic_torch_save({"key": key, "train": train}, ck)

    with progress_bar(total=cfg.epochs, desc=f"teacher {cfg.net}", enabled=show_progress) as bar:
        if resume and bar is not None:
            bar.update(int(resume["epoch"]))
        nets, losses = train_nets(x, y, data, cfg, [seed], bar, on_epoch if tracker else None,
                                  on_checkpoint=on_checkpoint, checkpoint_every=max(1, cfg.epochs // 20),
                                  resume=resume)
        net, loss = nets[0], losses[0]
    if checkpoint:
        Path(checkpoint).unlink(missing_ok=True)
    return {
        "format": TEACHER_FORMAT, "format_version": 1, "net": cfg.net,
        "state_dict": {k: v.detach().cpu() for k, v in net.state_dict().items()},
        "class_names": list(data.class_names), "class_counts": list(data.class_counts),
        "dataset": data.split_record(), "config": to_dict(cfg), "seed": seed, "final_loss": loss,
        "mean": list(data.info.mean), "std": list(data.info.std),
    }


def save_teacher(t: dict[str, Any], path: str | Path) -> None:
    atomic_torch_save(t, path)


def load_teacher(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"no teacher at {path}")
    try:
        t = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        raise ArtifactError(f"cannot read teacher {path}: {e}") from None
    if not isinstance(t, dict) or t.get("format") != TEACHER_FORMAT:
        raise ArtifactError(f"{path} is not an ltdistill teacher")
    if t.get("format_version") != 1:
        raise ArtifactError(f"{path} has teacher format version {t.get('format_version')!r}; this reads 1")
    return t


@torch.no_grad()
def teacher_logits(t: dict[str, Any], images: torch.Tensor, device: str = "auto", batch: int = 500) -> torch.Tensor:
    dev = resolve_device(device)
    c, h = images.shape[1], images.shape[-1]
    net = create_net(t["net"], c, len(t["class_names"]), h)
    net.load_state_dict(t["state_dict"])
    net.to(dev).eval()
    return torch.cat([net(images[i : i + batch].to(dev)).cpu() for i in range(0, len(images), batch)])


def label_set(s: DistilledSet, t: dict[str, Any], calibrate: str = "none", tau: float | None = None,
              temperature: float = 1.0, device: str = "auto") -> DistilledSet:
    """A copy of ``s`` carrying the teacher's soft labels, optionally logit-adjusted.

    For a multi-formation set (factor f) the labels are per decoded image (``N f² x C``).

    ``calibrate='adsa'`` searches τ (SPEC §6); ``tau`` fixes it instead. The logits,
    temperature, τ and the search curve are stored in ``extra``.
    """
    if len(t["class_names"]) != s.num_classes:
        raise ConfigError(f"the teacher has {len(t['class_names'])} classes but the set has {s.num_classes}")
    if list(t["class_names"]) != list(s.class_names):
        raise ConfigError("the teacher's classes differ from the set's (different dataset?)")
    if [float(v) for v in t["mean"]] != [float(v) for v in s.mean]:
        raise ConfigError("the teacher was trained with a different normalisation than the set's")
    if calibrate not in ("none", "adsa"):
        raise ConfigError(f"calibrate must be 'none' or 'adsa', got {calibrate!r}")
    # A multi-formation set is trained on its decoded tiles: the teacher labels each tile.
    images, labels = s.training_tensors()
    logits = teacher_logits(t, images, device)
    counts = torch.tensor(t["class_counts"], dtype=torch.double)
    prior = counts / counts.sum()
    extra = dict(s.extra, teacher_logits=logits, temperature=float(temperature),
                 teacher_class_counts=list(t["class_counts"]), calibration=calibrate)
    if tau is None and calibrate == "adsa":
        res = adsa_search(logits, labels, prior, temperature)
        tau = res.tau
        extra["tau_curve"] = [[a, b] for a, b in res.curve]
        extra["tau_at_grid_edge"] = res.at_edge
    tau = 0.0 if tau is None else float(tau)
    extra["tau"] = tau
    soft = adjusted_probs(logits.double(), prior, tau, temperature).float()
    return dataclasses.replace(s, soft_labels=soft, extra=extra)
