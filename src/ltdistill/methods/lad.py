"""LAD: long-tailed trajectory matching with Distribution-agnostic Matching (DAM) and
Expert Decoupling (ED) (SPEC §5, paper ``003_…``).

Each iteration picks an expert and start epochs; a student starts from the expert's
parameters and takes ``syn_steps`` SGD steps on the synthetic set (learnable step size,
learnable soft labels, DAM's inner loss); the normalised distance between where it lands
and where the expert was ``expert_epochs`` later is the loss, back-propagated through the
unroll to the images, the label logits and the step size (:func:`~ltdistill.trajectory.unroll`,
memory bounded in the number of steps).

With ED (``decoupling=true``, the default) there are two students per iteration: one
from the representation trajectory (whole net trained, backbone matched, weight
``lambda_rep``) and one from the classifier trajectory (backbone frozen at the stage-1
backbone, classifier trained and matched, weight ``lambda_cls``). Without ED it is plain
trajectory matching of the whole net on the long-tailed experts. ``dam=none`` turns DAM
off: together the paper's ablation (base, +DAM, +ED).
"""

from __future__ import annotations

import dataclasses
import json
import time
import warnings
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

from ..augment import DSAConfig, apply_dsa, sample_dsa
from ..data import LTData
from ..errors import ConfigError, TrainingError
from ..experts import ExpertConfig, check_buffer, load_expert, train_experts
from ..nets import init_net
from ..progress import progress_bar
from ..trajectory import DAM_FORMS, FlatNet, dam_loss, match_loss, unroll
from ..utils import atomic_torch_save, atomic_write_bytes, device_generator, make_generator
from .base import Method, RunContext, register_method


@dataclass
class LADConfig:
    """LAD's options. Defaults are the ``lad-cpu`` budget; the reference (SPEC §5, CIFAR-10-LT
    IPC 10 IF 100): syn_steps 80, expert_epochs 2, max_start_epoch 20, lr_img 100, lr_lr 1e-5,
    lr_y 2, lambda_rep 0.5, lambda_cls 1, 10000 iterations, batch_syn 500 (preset ``lad``)."""

    experts: ExpertConfig = field(default_factory=ExpertConfig)
    expert_dir: str | None = None  # where expert buffers are cached (default: the data cache)
    iterations: int = 200
    syn_steps: int = 10  # N: student steps per matching
    expert_epochs: int = 2  # M: the target is the expert M epochs after the start
    max_start_epoch: int = 10  # representation start epochs are drawn from 0..max_start_epoch
    batch_syn: int = 50  # images per student step (0: the whole set)
    lr_img: float = 100.0
    lr_lr: float = 1e-5
    lr_y: float = 2.0
    momentum: float = 0.5
    lr_init: float = 0.01  # the student's initial step size (the experts' lr)
    dam: str = "paper"  # paper (Eq. 4-5), code (class-column weighting) or none
    dam_lambda: float = 1.0
    decoupling: bool = True  # Expert Decoupling
    lambda_rep: float = 0.5
    lambda_cls: float = 1.0
    soft_labels: bool = True  # learnable label logits, initialised from the (classifier) expert
    dsa: bool = True
    memory: str = "bounded"  # bounded (replayed unroll) or graph (textbook; memory grows with syn_steps)
    net: str = "convnet"
    log_every: int = 10
    checkpoint_every: int = 20
    resume: bool = False


def _expert_net_params(ex: dict, cls_mask: torch.Tensor, ed: bool) -> torch.Tensor:
    """The expert that labels and picks the initial images: stage-1 backbone with the
    stage-2 classifier (ED), or the stage-1 net (no ED)."""
    theta = ex["rep"][-1].clone()
    if ed:
        theta[cls_mask] = ex["cls"][-1]
    return theta


def _init(data: LTData, ctx: RunContext, flat: FlatNet, theta: torch.Tensor, dev: torch.device):
    """Images the expert classifies correctly (repeated when a class is short of them) and
    the expert's logits on them."""
    ipc, picks, labels, none_right = ctx.ipc, [], [], []
    x_all = data.train.images
    with torch.no_grad():
        for c in range(data.num_classes):
            idx = data.train.indices_of(c)
            idx = idx[torch.randperm(len(idx), generator=make_generator(ctx.seed, "lad-init", c))]
            pred = torch.cat([flat(theta, data.normalize(x_all[idx[i : i + 500]].to(dev), dev)).argmax(1).cpu()
                              for i in range(0, len(idx), 500)])
            good = idx[pred == c]
            if len(good) == 0:
                none_right.append(data.class_names[c])
                good = idx
            if len(good) < ipc and ctx.fill != "repeat":
                raise ConfigError(f"class {data.class_names[c]!r} has {len(good)} correctly classified images but "
                                  f"IPC is {ipc}; pass fill=repeat")
            picks.append(good[torch.arange(ipc) % len(good)])
            labels += [c] * ipc
        x = data.normalize(x_all[torch.cat(picks)].to(dev), dev)
        logits = flat(theta, x)
    if none_right:
        warnings.warn(f"the expert classifies no training image of class(es) {', '.join(map(repr, none_right))} "
                      "correctly (an under-trained expert?); their images start from random images of the class",
                      stacklevel=3)
    return x, logits, torch.tensor(labels, dtype=torch.long, device=dev)


@register_method
class LAD(Method):
    name = "lad"
    Config = LADConfig
    description = "LAD: trajectory matching with Distribution-agnostic Matching and Expert Decoupling"

    def run(self, data: LTData, ctx: RunContext):
        cfg: LADConfig = ctx.options
        _validate(cfg)
        if getattr(ctx, "dist", None) is not None and ctx.dist.enabled:
            raise ConfigError("lad is not sharded across processes; run it in one process")
        dev, info, C = ctx.device, data.info, data.num_classes
        ecfg = dataclasses.replace(cfg.experts, net=cfg.net, device=str(dev))
        path = train_experts(data, ecfg, cfg.expert_dir, ctx.show_progress, ctx.tracker)
        check_buffer(path, data, cfg.net)
        experts = [load_expert(path, k) for k in range(ecfg.num_experts)]
        net = init_net(cfg.net, info.channels, C, info.image_size, 0).to(dev)
        flat = FlatNet(net)
        cls_mask = flat.is_classifier.to(dev)
        for k, ex in enumerate(experts):
            if ex["rep"].shape[1] != flat.numel:
                raise ConfigError(f"expert {k} in {path} has {ex['rep'].shape[1]} parameters; {cfg.net} has {flat.numel}")
        if cfg.max_start_epoch + cfg.expert_epochs > ecfg.epochs:
            raise ConfigError(f"max_start_epoch + expert_epochs ({cfg.max_start_epoch} + {cfg.expert_epochs}) exceeds "
                              f"the experts' {ecfg.epochs} epochs")
        if cfg.decoupling and cfg.expert_epochs > ecfg.cls_epochs:
            raise ConfigError(f"expert_epochs ({cfg.expert_epochs}) exceeds the classifier experts' "
                              f"{ecfg.cls_epochs} epochs")
        experts = [{k: v.to(dev) if isinstance(v, torch.Tensor) else v for k, v in ex.items()} for ex in experts]
        x0, logits0, labels = _init(data, ctx, flat, _expert_net_params(experts[0], cls_mask, cfg.decoupling), dev)
        x = x0.clone().requires_grad_(True)
        y_logits = logits0.clone().requires_grad_(cfg.soft_labels)
        lr = torch.tensor(cfg.lr_init, device=dev).requires_grad_(True)
        opts = [torch.optim.SGD([x], lr=cfg.lr_img, momentum=cfg.momentum),
                torch.optim.SGD([lr], lr=cfg.lr_lr, momentum=cfg.momentum)]
        if cfg.soft_labels:
            opts.append(torch.optim.SGD([y_logits], lr=cfg.lr_y, momentum=cfg.momentum))
        counts = torch.tensor(data.class_counts, dtype=torch.float32, device=dev)
        onehot = F.one_hot(labels, C).float()
        dsa_cfg = DSAConfig(strategy="color_crop_cutout_flip_scale_rotate" if cfg.dsa else "none")
        n = len(labels)
        bs = n if cfg.batch_syn <= 0 else min(cfg.batch_syn, n)
        ck = _Checkpoint(ctx, cfg, data, [x, y_logits, lr], opts)
        start, history = ck.resume()
        t0 = time.perf_counter()

        def student_loss(stream: str, it: int):
            def step_loss(theta, k, leaves):
                xs, ys = leaves
                g = make_generator(ctx.seed, "lad", stream, it, k)
                gv = g if dev.type == "cpu" else device_generator(dev, ctx.seed, "lad", stream, it, k)
                idx = torch.randperm(n, generator=gv, device=gv.device)[:bs].to(dev)
                xb = apply_dsa(xs[idx], sample_dsa(bs, info.image_size, g, dsa_cfg, values_generator=gv))
                targets = F.softmax(ys[idx], dim=1) if cfg.soft_labels else onehot[idx]
                return dam_loss(flat(theta, xb), targets, labels[idx], counts, cfg.dam, cfg.dam_lambda)
            return step_loss

        total = torch.zeros((), device=dev)
        with progress_bar(total=cfg.iterations, desc="distill lad", enabled=ctx.show_progress) as bar:
            bar.update(start)
            for it in range(start, cfg.iterations):
                g = make_generator(ctx.seed, "lad-iter", it)
                ex = experts[int(torch.randint(len(experts), (1,), generator=g))]
                t = int(torch.randint(cfg.max_start_epoch + 1, (1,), generator=g))
                for o in opts:
                    o.zero_grad(set_to_none=True)
                th0, target = ex["rep"][t], ex["rep"][t + cfg.expert_epochs]
                if cfg.decoupling:
                    bb = ~cls_mask
                    loss = unroll(student_loss("rep", it), th0, lr, cfg.syn_steps,
                                  partial(_match, start=th0, target=target, mask=bb, weight=cfg.lambda_rep),
                                  [x, y_logits], None, cfg.memory)
                    tc = int(torch.randint(ex["cls"].shape[0] - cfg.expert_epochs, (1,), generator=g))
                    thc = ex["rep"][-1].clone()
                    thc[cls_mask] = ex["cls"][tc]
                    tgt_c = ex["cls"][tc + cfg.expert_epochs]
                    loss = loss + unroll(student_loss("cls", it), thc, lr, cfg.syn_steps,
                                         partial(_match, start=thc, target=None, mask=cls_mask, weight=cfg.lambda_cls,
                                                 masked_target=tgt_c), [x, y_logits], cls_mask, cfg.memory)
                else:
                    loss = unroll(student_loss("rep", it), th0, lr, cfg.syn_steps,
                                  partial(_match, start=th0, target=target), [x, y_logits], None, cfg.memory)
                total = loss
                done = it + 1
                logs = done % cfg.log_every == 0 or done == cfg.iterations
                saves = cfg.checkpoint_every and done % cfg.checkpoint_every == 0
                if logs or saves or dev.type == "cpu":
                    bad = not (torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in (x, lr)
                                                            if p.grad is not None))
                    if bad:
                        raise TrainingError(f"lad: loss or gradient is NaN/inf at iteration {it}; stopped before "
                                            f"the step; the last good checkpoint ({ck.path}) is kept")
                for o in opts:
                    o.step()
                with torch.no_grad():
                    lr.clamp_(min=1e-6)  # a step size must stay positive
                bar.update(1)
                if logs:
                    rec = {"iteration": done, "loss": float(total), "lr": float(lr.detach()),
                           "seconds": round(time.perf_counter() - t0, 3)}
                    history.append(rec)
                    ck.log(rec)
                    bar.set_postfix(loss=f"{rec['loss']:.4g}", lr=f"{rec['lr']:.4g}")
                    if ctx.tracker:
                        ctx.tracker.scalar("distill/loss", rec["loss"], done)
                        ctx.tracker.scalar("distill/syn_lr", rec["lr"], done)
                if saves:
                    ck.save(done, history)
        if cfg.iterations > start:
            ck.save(cfg.iterations, history)
        soft = F.softmax(y_logits.detach(), dim=1).cpu() if cfg.soft_labels else None
        extra = {"syn_lr": float(lr.detach()), "final_loss": history[-1]["loss"] if history else None,
                 "iterations_run": cfg.iterations - start, "expert_buffer": str(path), "soft_labels": soft,
                 "factor": 1}
        return x.detach().cpu(), labels.cpu(), extra


def _match(theta: torch.Tensor, start: torch.Tensor, target: torch.Tensor | None, mask: torch.Tensor | None = None,
           weight: float = 1.0, masked_target: torch.Tensor | None = None) -> torch.Tensor:
    """``weight`` x the normalised distance over the entries ``mask`` selects (all without
    a mask); ``masked_target`` is a target already restricted to those entries."""
    if mask is None:
        return weight * match_loss(theta, start, target)
    tgt = masked_target if masked_target is not None else target[mask]
    return weight * match_loss(theta[mask], start[mask], tgt)


def _validate(cfg: LADConfig) -> None:
    if cfg.dam not in DAM_FORMS:
        raise ConfigError(f"dam must be one of {', '.join(DAM_FORMS)}, got {cfg.dam!r}")
    if cfg.memory not in ("bounded", "graph"):
        raise ConfigError(f"memory must be bounded or graph, got {cfg.memory!r}")
    if cfg.iterations < 0 or cfg.syn_steps < 1 or cfg.expert_epochs < 1 or cfg.max_start_epoch < 0:
        raise ConfigError("iterations >= 0, syn_steps >= 1, expert_epochs >= 1 and max_start_epoch >= 0 are required")
    if cfg.lr_init <= 0:
        raise ConfigError(f"lr_init must be positive, got {cfg.lr_init}")


class _Checkpoint:
    """Atomic ``<prefix>.ckpt`` (images, label logits, step size, optimisers, history) and
    the ``<prefix>.loss.jsonl`` log; a resume must match the run's identity."""

    def __init__(self, ctx: RunContext, cfg: LADConfig, data: LTData, tensors: list, opts: list) -> None:
        prefix = Path(ctx.run_prefix) if ctx.run_prefix else None
        self.path = prefix.with_name(prefix.name + ".ckpt") if prefix else None
        self.log_path = prefix.with_name(prefix.name + ".loss.jsonl") if prefix else None
        self.cfg, self.tensors, self.opts = cfg, tensors, opts
        opts_id = {k: v for k, v in dataclasses.asdict(cfg).items()
                   if k not in ("iterations", "resume", "checkpoint_every", "log_every")}
        opts_id["experts"] = {k: v for k, v in opts_id["experts"].items() if k != "device"}
        self.identity = {"dataset": data.split_record(), "ipc": ctx.ipc, "seed": ctx.seed, "options": opts_id}

    def resume(self) -> tuple[int, list]:
        start, history = 0, []
        if self.cfg.resume and self.path is not None and self.path.is_file():
            try:
                st = torch.load(self.path, map_location="cpu", weights_only=True)
            except Exception as e:
                raise ConfigError(f"cannot read checkpoint {self.path}: {e}") from None
            if st.get("identity") != self.identity:
                raise ConfigError(f"checkpoint {self.path} belongs to a different run (data, IPC, seed or options differ)")
            with torch.no_grad():
                for t, v in zip(self.tensors, st["tensors"]):
                    t.copy_(v.to(t.device))
            for o, s in zip(self.opts, st["opts"]):
                o.load_state_dict(s)
            start, history = int(st["iteration"]), list(st["history"])
        if self.log_path is not None:
            atomic_write_bytes(self.log_path, "".join(json.dumps(h) + "\n" for h in history).encode())
        return start, history

    def log(self, rec: dict) -> None:
        if self.log_path is not None:
            with open(self.log_path, "a") as f:
                f.write(json.dumps(rec) + "\n")

    def save(self, iteration: int, history: list) -> None:
        if self.path is None:
            return
        atomic_torch_save({"iteration": iteration, "tensors": [t.detach().cpu() for t in self.tensors],
                           "opts": [o.state_dict() for o in self.opts], "history": history,
                           "identity": self.identity}, self.path)
