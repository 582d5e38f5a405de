"""The evaluation protocol (SPEC §7): train a fresh net on a set, test once at the end.

Defaults are the paper protocol: SGD lr 0.01, momentum 0.9, weight decay 5e-4,
batch 256, 1000 epochs, lr x0.1 at half with the optimiser reset, DSA drawn per
sample on every batch, hard-label cross-entropy (soft cross-entropy when the set
carries soft labels). Only the final epoch is tested: never the best over test.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from .augment import DSAConfig, apply_dsa, sample_dsa
from .compiling import maybe_compile, should_compile
from .data import LTData
from .errors import ConfigError, TrainingError
from .nets import has_batchnorm, init_net
from .utils import (
    atomic_torch_save,
    configure_threads,
    derive_seed,
    device_generator,
    draws_on_device,
    make_generator,
    make_optimizer,
    resolve_bf16,
    resolve_device,
)


@dataclass
class EvalConfig:
    """Evaluation hyper-parameters (paper values by default)."""

    profile: str = "dm"  # the paper whose recipe these settings start from: dm (SPEC §7) or ncfm (preset eval-ncfm)
    net: str = "convnet"
    epochs: int = 1000
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 256
    runs: int = 5
    dsa: bool = True
    dsa_strategy: str = "color_crop_cutout_flip_scale_rotate"
    lr_decay_at_half: bool = True
    test_batch_size: int = 1000
    seed: int = 0
    device: str = "auto"
    labels: str = "auto"  # auto (soft if the set has soft labels), hard or soft
    # The "ncfm" profile (SPEC §4b) sets: optimizer=adamw lr=0.001 schedule=multistep
    # batch_size=128 cutmix_p=0.5 rrc=true epochs=2000 (preset eval-ncfm).
    optimizer: str = "sgd"  # sgd or adamw
    schedule: str = "half"  # half (x0.1 at half, optimiser reset: DM) or multistep (x0.5 at 1/5..4/5)
    cutmix_p: float = 0.0  # probability of CutMix (beta 1) per batch
    rrc: bool = False  # random-resized crop (scale 0.5-1, ratio 3/4-4/3) per sample
    # Train the R runs together through torch.func.vmap (same result as one by one). Off by
    # default: on the 2-core CPU it measured ~3x slower (145 s vs 50 s, 3 runs x 20 epochs, IPC 10).
    batched_runs: bool = False
    # torch.compile each net's training and test forward: auto (long trainings: the paper
    # protocol measured 2.1x faster than eager on the 2-core CPU), on or off; falls back to eager if compilation fails.
    compile: str = "auto"
    # bfloat16 autocast for the training and test forwards (weights and optimiser stay fp32).
    bf16: bool | str = False  # bfloat16 autocast: true, false or auto (where native: GPU, AVX-512/AMX CPU)
    threads: int = 0  # CPU threads; 0: all cores on CPU, 2 when training on a GPU
    # Where batch orders and augmentation parameters are drawn: "host" (each run's CPU
    # generator: the CPU results of every release), "device" (a generator on the training
    # device per run: no copies, no waits; the augmentation's operation choice stays on the
    # host), "auto" (host on CPU, device elsewhere).
    draws: str = "auto"
    # A set that learned its training step size (lad: ``extra.syn_lr``) is evaluated with it,
    # as trajectory matching's protocol does; false: the protocol's own ``lr``. Recorded in
    # the result (``config.lr`` and ``config.lr_source``).
    lr_from_set: bool = True
    # "final" (the protocol: the last epoch's test accuracy, always recorded) or "best-test"
    # (opt-in, never the default): additionally test every ``selection_every`` epochs and
    # record the best test accuracy seen — selection on the test set, as NCFM's released
    # code reports it, labelled so wherever it appears; the final-epoch number is unchanged.
    selection: str = "final"
    selection_every: int = 0  # epochs between test checkpoints for best-test (0: a tenth of the epochs)
    # Online teacher soft labels (NCFM's ``--softlabel``): a teacher file from ``ltdistill
    # teacher``; every augmented training batch is labelled by the teacher's softmax instead of
    # the set's labels, except in the last ``teacher_hard_epochs`` epochs (NCFM: its test
    # interval, 20), which use the set's own labels. "" (default): no teacher.
    teacher: str = ""
    teacher_hard_epochs: int = 0
    # A class-aware mix of the teacher's labels and the set's own (issue 22's follow-up): a
    # sample of class c is trained on λ_c·teacher + (1 − λ_c)·its set label, with
    # λ_c = (n_c / n_max) ** teacher_mix and n_c the class's long-tailed training count, so the
    # head learns from the teacher and the rarest classes more from their own labels (a teacher
    # trained on long-tailed data labels the tail worst). With CutMix a sample's λ is its mixed
    # label's average. 0 (default): the teacher's labels alone.
    teacher_mix: float = 0.0
    # The logit-adjusted training loss (Menon et al. 2021; 1 = balanced softmax, Ren et al.
    # 2020): cross-entropy of ``logits + logit_adjust * log(prior)``, the prior being the class
    # frequencies of the labels trained on; the net is tested on its raw logits. For training on
    # long-tailed data (a teacher, the whole-LT reference); on a balanced set it changes nothing.
    # 0 (default): plain cross-entropy.
    logit_adjust: float = 0.0


SELECTION_LABEL = "best-test (selected on the test set: not a final-epoch result)"


@dataclass
class RunResult:
    acc: float  # percent, final epoch
    per_class: list[float]  # percent, final epoch
    seconds: float
    final_loss: float
    best_test_acc: float | None = None  # selection=best-test only: the best over test checkpoints
    test_curve: list[list[float]] | None = None  # selection=best-test only: [epoch, test acc] per checkpoint


@dataclass
class EvalResult:
    """Mean / std over runs, per class and per head/medium/tail group (all percent)."""

    acc_mean: float
    acc_std: float
    per_class_mean: list[float]
    groups: dict[str, float]
    groups_std: dict[str, float]
    runs: list[RunResult]
    label_track: str
    config: dict[str, Any] = field(default_factory=dict)
    group_classes: dict[str, list[int]] = field(default_factory=dict)  # class indices of each group

    @property
    def best_test_acc(self) -> float | None:
        """Mean over runs of the best test accuracy over checkpoints (selection=best-test only)."""
        best = [r.best_test_acc for r in self.runs]
        return None if any(b is None for b in best) or not best else sum(best) / len(best)

    def to_dict(self) -> dict[str, Any]:
        out = {
            "acc_mean": self.acc_mean, "acc_std": self.acc_std,
            "per_class": self.per_class_mean, "groups": self.groups, "groups_std": self.groups_std,
            "labels": self.label_track,
            "runs": [{"acc": r.acc, "per_class": r.per_class, "seconds": r.seconds,
                      "final_loss": r.final_loss, **({"best_test_acc": r.best_test_acc, "test_curve": r.test_curve}
                                                     if r.best_test_acc is not None else {})} for r in self.runs],
            "config": self.config, "group_classes": self.group_classes,
        }
        if self.best_test_acc is not None:
            out["best_test_acc"] = self.best_test_acc
            out["best_test_selection"] = SELECTION_LABEL
        return out


def _std(xs: list[float]) -> float:
    if len(xs) < 2:
        return 0.0
    m = sum(xs) / len(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


@torch.no_grad()
def test_accuracy(
    net: torch.nn.Module, data: LTData, device: torch.device, batch_size: int = 1000, compile: str = "off",
    bf16: bool = False,
) -> tuple[float, list[float]]:
    """Top-1 accuracy and per-class accuracy (percent) on the balanced test split."""
    net.eval()
    h = data.test.images.shape[-1]
    forward = maybe_compile(net, should_compile(compile, len(data.test) * h * h), "test forward")
    C = data.num_classes
    correct = torch.zeros(C, dtype=torch.long)
    total = torch.zeros(C, dtype=torch.long)
    for i in range(0, len(data.test), batch_size):
        x = data.normalize(data.test.images[i : i + batch_size], device)
        y = data.test.labels[i : i + batch_size]
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            pred = forward(x).argmax(1).cpu()
        total += torch.bincount(y, minlength=C)
        correct += torch.bincount(y[pred == y], minlength=C)
    per_class = (correct.double() / total.clamp(min=1).double() * 100).tolist()
    return float(correct.sum() / total.sum() * 100), per_class


def train_net(
    x: torch.Tensor,
    y: torch.Tensor,
    data: LTData,
    cfg: EvalConfig,
    seed: int,
    progress: Any = None,
) -> tuple[torch.nn.Module, float]:
    """Train a fresh ``cfg.net`` on normalised images ``x`` with hard (``N``) or soft (``N x C``) labels.

    All randomness (init, batch order, DSA) derives from ``seed``. Returns the
    trained net and the last epoch's mean loss.
    """
    nets, losses = train_nets(x, y, data, cfg, [seed], progress)
    return nets[0], losses[0]


def train_nets(
    x: torch.Tensor,
    y: torch.Tensor,
    data: LTData,
    cfg: EvalConfig,
    seeds: list[int],
    progress: Any = None,
    on_epoch: Any = None,
    test_every: int = 0,
    on_test: Any = None,
    teacher: torch.nn.Module | None = None,
    on_checkpoint: Any = None,
    checkpoint_every: int = 0,
    resume: dict | None = None,
) -> tuple[list[torch.nn.Module], list[float]]:
    """Train one fresh net per seed on the same data, together.

    Net r draws its init, batch order and augmentation only from ``seeds[r]``, in the
    same order as when trained alone, so training R nets together gives the nets
    training them one by one gives (up to float summation order). Without batch
    norm the R forwards run as one ``torch.func.vmap`` call over stacked weights
    (measured slower than separate forwards on a 2-core CPU; meant for GPUs).
    ``on_epoch(epoch, losses, lr)`` is called after every epoch (1-based) when given.
    A ``teacher`` net relabels every augmented batch with its softmax (all but the last
    ``cfg.teacher_hard_epochs`` epochs), mixed with the set's labels per class by
    ``cfg.teacher_mix`` (:func:`teacher_mix_weights`).

    ``on_checkpoint(state)`` gets the whole training state (weights, optimiser, every
    generator, the epoch) every ``checkpoint_every`` epochs; ``resume`` (such a state)
    continues from it and gives the nets the uninterrupted training gives.
    """
    from torch.func import functional_call, stack_module_state

    device = resolve_device(cfg.device)
    info = data.info
    nets = [init_net(cfg.net, info.channels, data.num_classes, x.shape[-1], derive_seed(s, "init")).to(device)
            for s in seeds]
    x, y = x.to(device), y.to(device)
    soft = y.ndim == 2
    log_prior = label_log_prior(y, data.num_classes).to(device) if cfg.logit_adjust else None
    gens = [make_generator(s, "train") for s in seeds]
    on_device = draws_on_device(cfg.draws, device)
    # The values' generators: the host ones, or one per run on the device.
    vgens = [device_generator(device, s, "train-device") for s in seeds] if on_device else gens
    dsa_cfg = DSAConfig(strategy=cfg.dsa_strategy if cfg.dsa else "none")
    mix_w = (teacher_mix_weights(data.class_counts, cfg.teacher_mix).to(device)
             if teacher is not None and cfg.teacher_mix else None)
    R = len(nets)
    batched = R > 1 and not has_batchnorm(nets[0])
    if batched:
        params, buffers = stack_module_state(nets)
        base = copy.deepcopy(nets[0]).to("meta")
        forward = torch.func.vmap(lambda p, b, xb: functional_call(base, (p, b), (xb,)))
        trainable = list(params.values())
    else:
        trainable = [p for net in nets for p in net.parameters()]
        work = cfg.epochs * len(x) * R * x.shape[-1] * x.shape[-2]
        compiled = [maybe_compile(net, should_compile(cfg.compile, work), f"{cfg.net} training") for net in nets]

    # One optimiser over disjoint parameters equals one optimiser per net (all updates are elementwise).
    def make_opt(lr: float) -> torch.optim.Optimizer:
        return make_optimizer(trainable, cfg.optimizer, lr, cfg.momentum, cfg.weight_decay)

    if cfg.schedule not in ("half", "multistep"):
        raise ConfigError(f"schedule must be half or multistep, got {cfg.schedule!r}")
    opt = make_opt(cfg.lr)
    milestones = {cfg.epochs * k // 5 for k in range(1, 5)} - {0}
    n = len(x)
    last = [float("nan")] * R
    # The loss is read back (and checked for NaN/inf) every batch on CPU, where that is free,
    # and once per epoch on a GPU, so the device never waits for the host inside an epoch.
    per_batch = device.type == "cpu"
    start = 0
    if resume is not None:
        start, last = int(resume["epoch"]), list(resume["last"])
        with torch.no_grad():
            if batched:
                for k, v in resume["params"].items():
                    params[k].copy_(v)
                for k, v in resume["buffers"].items():
                    buffers[k].copy_(v)
            else:
                for net, sd in zip(nets, resume["nets"]):
                    net.load_state_dict(sd)
        if start > cfg.epochs // 2 and cfg.schedule == "half" and cfg.lr_decay_at_half:
            opt = make_opt(cfg.lr * 0.1)  # the optimiser the reset made (its state is loaded next)
        opt.load_state_dict(resume["optimizer"])
        for gen, st in zip(gens, resume["gens"]):
            gen.set_state(st)
        for gen, st in zip(vgens, resume["vgens"]):
            gen.set_state(st)

    def train_state(epoch: int) -> dict:
        st = {"epoch": epoch, "last": list(last), "optimizer": opt.state_dict(),
              "gens": [g.get_state() for g in gens], "vgens": [g.get_state() for g in vgens]}
        if batched:
            st |= {"params": {k: v.detach().clone() for k, v in params.items()},
                   "buffers": {k: v.detach().clone() for k, v in buffers.items()}}
        else:
            st["nets"] = [copy.deepcopy(net.state_dict()) for net in nets]
        return st

    for ep in range(start, cfg.epochs):
        if cfg.schedule == "half" and cfg.lr_decay_at_half and ep == cfg.epochs // 2 and ep > 0:
            opt = make_opt(cfg.lr * 0.1)  # DM's protocol: decay and a fresh optimiser
        if cfg.schedule == "multistep" and ep in milestones:
            for group in opt.param_groups:
                group["lr"] *= 0.5
        for net in nets:
            net.train()
        perms = [torch.randperm(n, generator=gv, device=gv.device).to(device) for gv in vgens]
        tot, cnt = [0.0] * R, 0
        tot_t = torch.zeros(R, device=device)
        finite = torch.ones((), dtype=torch.bool, device=device)
        taught = teacher is not None and ep < cfg.epochs - cfg.teacher_hard_epochs
        for i in range(0, n, cfg.batch_size):
            xbs, ybs = [], []
            for r, (g, gv) in enumerate(zip(gens, vgens)):
                idx = perms[r][i : i + cfg.batch_size]
                xb = x[idx]
                if cfg.dsa:
                    xb = apply_dsa(xb, sample_dsa(len(xb), tuple(xb.shape[-2:]), g, dsa_cfg, values_generator=gv))
                yb = y[idx] if soft else F.one_hot(y[idx], data.num_classes).to(xb.dtype)
                if cfg.rrc:
                    xb = random_resized_crop(xb, gv)
                if cfg.cutmix_p > 0 and float(torch.rand(1, generator=g)) < cfg.cutmix_p:
                    xb, yb = cutmix(xb, yb, g, gv)
                if taught:
                    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
                        probs = F.softmax(teacher(xb).float(), 1)
                    yb = probs if mix_w is None else mix_teacher_labels(probs, yb, mix_w)
                xbs.append(xb)
                ybs.append(yb)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
                outs = (forward(params, buffers, torch.stack(xbs)) if batched
                        else [f(xb) for f, xb in zip(compiled, xbs)])
            losses = [training_loss(out.float(), yb, log_prior, cfg.logit_adjust) for out, yb in zip(outs, ybs)]
            total = torch.stack(losses).sum()
            if per_batch and not torch.isfinite(total):
                raise TrainingError(f"evaluation training diverged: loss {total.item()} at epoch {ep}")
            opt.zero_grad(set_to_none=True)
            total.backward()
            opt.step()
            bsz = len(xbs[0])
            if per_batch:
                for r, loss in enumerate(losses):
                    tot[r] += loss.item() * bsz
            else:
                tot_t += torch.stack([loss.detach() for loss in losses]) * bsz
                finite &= torch.isfinite(total)
            cnt += bsz
        if not per_batch:
            if not bool(finite):
                raise TrainingError(f"evaluation training diverged: loss NaN/inf in epoch {ep}")
            tot = tot_t.tolist()
        last = [t / max(cnt, 1) for t in tot]
        if progress is not None:
            progress.update(1)
            progress.set_postfix(loss=f"{sum(last) / R:.3f}")
        if on_epoch is not None:
            on_epoch(ep + 1, last, opt.param_groups[0]["lr"])
        if on_test is not None and test_every and (ep + 1) % test_every == 0 and ep + 1 < cfg.epochs:
            if batched:
                _unstack(nets, params, buffers)
            on_test(ep + 1, nets)  # a test checkpoint (selection=best-test); training continues unchanged
            for net in nets:
                net.train()
        if on_checkpoint is not None and checkpoint_every and (ep + 1) % checkpoint_every == 0 \
                and ep + 1 < cfg.epochs:
            on_checkpoint(train_state(ep + 1))
    if batched:
        _unstack(nets, params, buffers)
    return nets, last


def teacher_mix_weights(counts: list[int], gamma: float) -> torch.Tensor:
    """The teacher's weight per class, ``(n_c / n_max) ** gamma``: 1 on the largest class,
    falling toward the tail (``gamma`` 0: 1 everywhere)."""
    n = torch.tensor(counts, dtype=torch.float64)
    return (n / n.max()).pow(gamma).float()


def mix_teacher_labels(teacher_probs: torch.Tensor, set_targets: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``λ·teacher + (1 − λ)·set label`` per sample, λ the class weights averaged under the
    sample's set label (one-hot: its class's weight; CutMix-mixed: the area-weighted mean)."""
    lam = (set_targets @ weights).unsqueeze(1)
    return lam * teacher_probs + (1 - lam) * set_targets


def label_log_prior(y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """log of the class frequencies of hard (``N``) or soft (``N x C``) labels (floored at 1e-12)."""
    freq = y.float().mean(0) if y.ndim == 2 else torch.bincount(y, minlength=num_classes).float() / len(y)
    return freq.clamp(min=1e-12).log()


def training_loss(logits: torch.Tensor, targets: torch.Tensor, log_prior: torch.Tensor | None = None,
                  tau: float = 0.0) -> torch.Tensor:
    """Soft cross-entropy of ``logits`` against target distributions; with ``tau`` and a
    ``log_prior`` the logit-adjusted loss (``logits + tau * log_prior``)."""
    if log_prior is not None and tau:
        logits = logits + tau * log_prior
    return -(targets * F.log_softmax(logits, 1)).sum(1).mean()


def _unstack(nets: list, params: dict, buffers: dict) -> None:
    with torch.no_grad():
        for r, net in enumerate(nets):
            net.load_state_dict({**{k: v[r] for k, v in params.items()}, **{k: v[r] for k, v in buffers.items()}})


def random_resized_crop(x: torch.Tensor, g: torch.Generator, scale=(0.5, 1.0), ratio=(3 / 4, 4 / 3)) -> torch.Tensor:
    """Per-sample random-resized crop as an affine resampling (area fraction in ``scale``)."""
    n, dev = x.shape[0], g.device  # drawn where ``g`` lives (a device generator: no copy)
    area = torch.rand(n, generator=g, device=dev) * (scale[1] - scale[0]) + scale[0]
    logr = torch.rand(n, generator=g, device=dev) * (math.log(ratio[1]) - math.log(ratio[0])) + math.log(ratio[0])
    r = torch.exp(logr)
    sw = torch.sqrt(area * r).clamp(max=1.0)
    sh = torch.sqrt(area / r).clamp(max=1.0)
    tx = (torch.rand(n, generator=g, device=dev) * 2 - 1) * (1 - sw)
    ty = (torch.rand(n, generator=g, device=dev) * 2 - 1) * (1 - sh)
    z = torch.zeros(n, device=dev)
    theta = torch.stack([torch.stack([sw, z, tx], 1), torch.stack([z, sh, ty], 1)], 1).to(x)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, align_corners=False)


def cutmix(x: torch.Tensor, y: torch.Tensor, g: torch.Generator,
           perm_generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """CutMix with beta(1, 1): paste a box from a permuted batch; mix targets by box area.
    The box comes from the host generator ``g`` (it sets shapes); the permutation from
    ``perm_generator`` where given (a device generator: no copy)."""
    n, _, h, w = x.shape
    lam = float(torch.rand(1, generator=g))  # Beta(1, 1) is uniform
    gp = perm_generator if perm_generator is not None and perm_generator is not g else None
    perm = (torch.randperm(n, generator=gp, device=gp.device) if gp is not None
            else torch.randperm(n, generator=g)).to(x.device)
    ch, cw = int(h * math.sqrt(1 - lam)), int(w * math.sqrt(1 - lam))
    cy, cx = int(torch.randint(h, (1,), generator=g)), int(torch.randint(w, (1,), generator=g))
    y0, y1 = max(cy - ch // 2, 0), min(cy + ch // 2, h)
    x0, x1 = max(cx - cw // 2, 0), min(cx + cw // 2, w)
    x = x.clone()
    x[:, :, y0:y1, x0:x1] = x[perm, :, y0:y1, x0:x1]
    kept = 1 - (y1 - y0) * (x1 - x0) / (h * w)
    return x, kept * y + (1 - kept) * y[perm]


def _summarise(runs: list[RunResult], data: LTData, track: str, cfg: EvalConfig) -> EvalResult:
    accs = [r.acc for r in runs]
    C = data.num_classes
    per_class = [sum(r.per_class[c] for r in runs) / len(runs) for c in range(C)]
    groups, groups_std = {}, {}
    for gname, cls in data.groups().items():
        vals = [sum(r.per_class[c] for c in cls) / len(cls) for r in runs] if cls else [float("nan")]
        groups[gname] = sum(vals) / len(vals)
        groups_std[gname] = _std(vals)
    from .config import to_dict

    return EvalResult(sum(accs) / len(accs), _std(accs), per_class, groups, groups_std, runs, track, to_dict(cfg),
                      {g: list(cls) for g, cls in data.groups().items()})


def _online_teacher(cfg: EvalConfig, data: LTData, device: torch.device) -> torch.nn.Module | None:
    """The frozen teacher net of ``cfg.teacher`` on ``device`` (None without one)."""
    if not cfg.teacher:
        if cfg.teacher_mix:
            raise ConfigError("teacher_mix mixes a teacher's labels with the set's: give a teacher (--teacher T.pt)")
        return None
    from .nets import create_net
    from .teacher import load_teacher

    if cfg.teacher_hard_epochs < 0 or cfg.teacher_hard_epochs > cfg.epochs:
        raise ConfigError(f"teacher_hard_epochs must be in [0, epochs={cfg.epochs}], got {cfg.teacher_hard_epochs}")
    if not cfg.teacher_mix >= 0:  # NaN too
        raise ConfigError(f"teacher_mix must be >= 0 (0: the teacher's labels alone), got {cfg.teacher_mix}")
    t = load_teacher(cfg.teacher)
    info = data.info
    net = create_net(t["net"], info.channels, data.num_classes, info.image_size)
    try:
        net.load_state_dict(t["state_dict"])
    except RuntimeError as e:
        raise ConfigError(f"teacher {cfg.teacher} ({t['net']}) does not fit {info.name} "
                          f"({data.num_classes} classes, {info.channels} channels, {info.image_size} px): "
                          f"{str(e).splitlines()[0]}") from None
    return net.to(device).eval().requires_grad_(False)


def _checkpoint_key(x: torch.Tensor, y: torch.Tensor, cfg: EvalConfig) -> str:
    """What an evaluation checkpoint belongs to: the training tensors and the settings."""
    import hashlib
    import json

    h = hashlib.sha256(json.dumps(dataclasses.asdict(cfg), sort_keys=True, default=str).encode())
    for t in (x, y):
        t = t.detach().cpu().contiguous()
        h.update(str((t.dtype, tuple(t.shape))).encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _load_checkpoint(path, key: str, what: str = "evaluation") -> dict | None:
    from pathlib import Path

    from .errors import ArtifactError

    path = Path(path)
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # a torn or foreign file
        raise ArtifactError(f"{what} checkpoint {path} cannot be read ({type(e).__name__}: {e}); "
                            f"delete it to start the {what} over") from None
    if not isinstance(state, dict) or state.get("key") != key:
        raise ArtifactError(f"{what} checkpoint {path} belongs to another {what} (other images, "
                            f"labels or settings); delete it or give another checkpoint path")
    return state


def evaluate_tensors(
    x: torch.Tensor, y: torch.Tensor, data: LTData, cfg: EvalConfig, show_progress: bool = False,
    tracker: Any = None, checkpoint: Any = None, checkpoint_every: int = 0,
) -> EvalResult:
    """Run the protocol ``cfg.runs`` times on (x, y); run r uses seed ``derive_seed(cfg.seed, 'run', r)``.

    With ``batched_runs`` the runs train together (see :func:`train_nets`);
    each run's ``seconds`` is then the group's wall time divided by the runs.
    A :class:`~ltdistill.tracking.Tracker` gets the training loss and lr per epoch
    (step = epoch, counted across run groups), and each run's accuracy and groups.

    Inside an initialised ``torch.distributed`` group the runs are dealt to the ranks
    (run r to rank ``r % world_size``) and gathered: every rank returns the result one
    process gives (each run depends only on its seed); only rank 0 shows progress and
    talks to ``tracker``.

    ``checkpoint`` (a file path) makes the evaluation resumable: every ``checkpoint_every``
    epochs (0: a twentieth of the epochs) and after every run group the state is written
    atomically there, a later call with the same path, tensors and settings continues from it
    and returns what the uninterrupted evaluation returns (a run's ``seconds`` then include
    the time before the interruption); the file is removed when the evaluation finishes. A
    checkpoint of another evaluation is refused. Under ``torch.distributed`` each rank keeps
    its own file (``<path>.rank<r>``).
    """
    from .distributed import all_gather_objects, current, device_for, shard
    from .progress import progress_bar

    rank = current()
    device = device_for(rank, resolve_device(cfg.device))
    if rank.enabled:
        if device.type == "cuda":
            cfg = dataclasses.replace(cfg, device=str(device))  # this rank's GPU
        show_progress, tracker = show_progress and rank.is_main, tracker if rank.is_main else None
    configure_threads(device, cfg.threads)
    cfg = dataclasses.replace(cfg, bf16=resolve_bf16(cfg.bf16, device))  # auto, or a warning where it is slow
    if cfg.selection not in ("final", "best-test"):
        raise ConfigError(f"selection must be final or best-test, got {cfg.selection!r}")
    selecting = cfg.selection == "best-test"
    track = "soft" if y.ndim == 2 else "hard"
    teacher = _online_teacher(cfg, data, device)
    if teacher is not None:
        track = "teacher"
    mine = shard(cfg.runs, rank.rank, rank.world_size)
    seeds = [derive_seed(cfg.seed, "run", r) for r in mine]
    groups = ([seeds] if seeds else []) if cfg.batched_runs else [[s] for s in seeds]
    runs = []
    ck_path = ck_key = state = None
    if checkpoint:
        from pathlib import Path

        ck_path = Path(f"{checkpoint}.rank{rank.rank}" if rank.enabled else checkpoint)
        ck_key = _checkpoint_key(x, y, cfg)
        state = _load_checkpoint(ck_path, ck_key)
    ck_every = checkpoint_every or max(1, cfg.epochs // 20)
    if state is not None:
        runs = [RunResult(**r) for r in state["runs"]]
    for k, group in enumerate(groups):
        if k < (state["groups_done"] if state is not None else 0):
            continue  # finished before the interruption: its runs are in ``runs``
        resume = state["train"] if state is not None and state["train"] is not None and state["group"] == k else None
        t0 = time.perf_counter() - (resume["elapsed"] if resume else 0.0)
        with progress_bar(total=cfg.epochs, desc=f"eval {cfg.net} ({len(group)} run(s), group {k + 1}/{len(groups)})",
                          enabled=show_progress) as bar:
            if resume and bar is not None:
                bar.update(int(resume["epoch"]))
            on_epoch = None
            if tracker:
                def on_epoch(ep, losses, lr, _k=k):
                    step = _k * cfg.epochs + ep
                    tracker.scalar("eval/train_loss", sum(losses) / len(losses), step)
                    tracker.scalar("eval/lr", lr, step)
            work = cfg.epochs * len(x) * x.shape[-1] * x.shape[-2]  # compile the test forward with the training
            mode = "on" if should_compile(cfg.compile, work) else "off"
            best = [float("-inf")] * len(group)
            curves: list[list[list[float]]] = [[] for _ in group]

            def on_test(ep, nets, _best=best, _mode=mode, _curves=curves):
                for r, net in enumerate(nets):
                    acc = test_accuracy(net, data, device, cfg.test_batch_size, _mode, cfg.bf16)[0]
                    _best[r] = max(_best[r], acc)
                    _curves[r].append([ep, acc])

            if resume:
                best[:] = resume["best"]
                curves[:] = resume["curves"]
            on_checkpoint = None
            if ck_path is not None:
                def on_checkpoint(train, _k=k, _t0=t0, _best=best, _curves=curves, _runs=runs):
                    train |= {"elapsed": time.perf_counter() - _t0, "best": list(_best),
                              "curves": copy.deepcopy(_curves)}
                    atomic_torch_save({"key": ck_key, "groups_done": _k, "group": _k, "train": train,
                                       "runs": [dataclasses.asdict(r) for r in _runs]}, ck_path)

            every = cfg.selection_every or max(1, cfg.epochs // 10)
            nets, last = train_nets(x, y, data, cfg, group, bar, on_epoch, every if selecting else 0,
                                    on_test if selecting else None, teacher, on_checkpoint, ck_every, resume)
        tested = [test_accuracy(net, data, device, cfg.test_batch_size, mode, cfg.bf16) for net in nets]
        dt = (time.perf_counter() - t0) / len(group)
        runs += [RunResult(acc, per_class, dt, loss, max(b, acc) if selecting else None,
                           [*curve, [cfg.epochs, acc]] if selecting else None)
                 for (acc, per_class), loss, b, curve in zip(tested, last, best, curves)]
        if ck_path is not None and k + 1 < len(groups):
            atomic_torch_save({"key": ck_key, "groups_done": k + 1, "group": k + 1, "train": None,
                               "runs": [dataclasses.asdict(r) for r in runs]}, ck_path)
    if ck_path is not None:
        ck_path.unlink(missing_ok=True)
    if rank.enabled:  # every rank's runs, back in run order
        by_run = {}
        for r, got in enumerate(all_gather_objects(runs, "gathering the evaluation runs")):
            by_run.update(zip(shard(cfg.runs, r, rank.world_size), got))
        runs = [by_run[r] for r in range(cfg.runs)]
    res = _summarise(runs, data, track, cfg)
    res.config["world_size"] = rank.world_size
    if tracker:
        for r, run in enumerate(res.runs):
            tracker.scalar("eval/acc", run.acc, r)
            for g, cls in res.group_classes.items():
                if cls:
                    tracker.scalar(f"eval/{g}", sum(run.per_class[c] for c in cls) / len(cls), r)
        tracker.summary({"eval/acc_mean": res.acc_mean, "eval/acc_std": res.acc_std,
                         **{f"eval/{g}_mean": v for g, v in res.groups.items()}})
    return res


def evaluate_set(s, data: LTData, cfg: EvalConfig, show_progress: bool = False, tracker: Any = None,
                 checkpoint: Any = None) -> EvalResult:
    """Evaluate a :class:`~ltdistill.artifact.DistilledSet` on ``data``'s test split."""
    check_compatible(s, data)
    use_soft = cfg.labels == "soft" or (cfg.labels == "auto" and s.soft_labels is not None)
    if cfg.labels not in ("auto", "soft", "hard"):
        raise ConfigError(f"labels must be auto, hard or soft, got {cfg.labels!r}")
    if use_soft and s.soft_labels is None:
        raise ConfigError("labels=soft requested but the set carries no soft labels")
    x, y = s.training_tensors(soft=use_soft)
    learned = (s.extra or {}).get("syn_lr")
    source = "protocol"
    if cfg.lr_from_set and learned is not None:
        cfg, source = dataclasses.replace(cfg, lr=float(learned)), "set"
    res = evaluate_tensors(x, y, data, cfg, show_progress, tracker, checkpoint)
    res.config["lr_source"] = source
    return res


def evaluate_full(data: LTData, cfg: EvalConfig, show_progress: bool = False, tracker: Any = None,
                  checkpoint: Any = None) -> EvalResult:
    """The "whole long-tailed dataset" reference: the same trainer on every real image
    (resumable through ``checkpoint``, see :func:`evaluate_tensors`)."""
    x = data.normalize(data.train.images)
    return evaluate_tensors(x, data.train.labels, data, cfg, show_progress, tracker, checkpoint)


def check_compatible(s, data: LTData) -> None:
    """A set must match the dataset it is tested on (classes, shape, normalisation)."""
    from .errors import ArtifactError

    if s.num_classes != data.num_classes or list(s.class_names) != list(data.class_names):
        raise ArtifactError(
            f"the set's classes ({s.num_classes}) do not match dataset {data.info.name} "
            f"({data.num_classes}: {data.class_names[:3]}...)"
        )
    if tuple(s.images.shape[1:]) != (data.info.channels, data.info.image_size, data.info.image_size):
        raise ArtifactError(f"the set's images {tuple(s.images.shape[1:])} do not match {data.info.name}")
    if any(abs(a - b) > 1e-6 for a, b in zip(list(s.mean) + list(s.std), list(data.info.mean) + list(data.info.std))):
        raise ArtifactError("the set's normalisation differs from the dataset's")


def format_result(res: EvalResult, class_names: list[str], title: str = "") -> str:
    """A readable table: overall, groups and per-class accuracy."""
    lines = []
    if title:
        lines.append(title)
    lines.append(f"  accuracy ({res.label_track} labels, {len(res.runs)} runs): "
                 f"{res.acc_mean:.2f} ± {res.acc_std:.2f} %")
    lines.append("  " + "  ".join(f"{g}: {v:.2f} ± {res.groups_std[g]:.2f}" for g, v in res.groups.items()))
    if res.best_test_acc is not None:
        lines.append(f"  {SELECTION_LABEL}: {res.best_test_acc:.2f} %  (the final-epoch accuracy above is the result)")
    w = max(len(n) for n in class_names)
    lines.append("  per class:")
    for c, n in enumerate(class_names):
        lines.append(f"    {c:>3} {n:<{w}} {res.per_class_mean[c]:6.2f}")
    return "\n".join(lines)
