"""The named parts the matching loop (:func:`~ltdistill.methods.matching.run_matching`) is
made of. Each part owns one decision of the loop and the state that goes with it:

- an **extractor** (registry :data:`EXTRACTORS`: ``random`` = a fresh random trunk each
  iteration, DM's; ``pool`` = a fresh trunk interpolated with a trained pool model, NCFM's,
  which also provides the calibration net) — ``options.extraction``;
- the **synthetic images** (pixel space ``normalized`` or ``unit``, multi-formation factor):
  the learnable tensor and how it becomes network input;
- the **step policy** (``joint``: one optimiser step per iteration; ``per_class``: one per
  class) — ``options.steps``;
- the **discrepancy**: a method's :class:`~ltdistill.methods.matching.Matcher`, one per
  registered method;
- the **draws** (registry :data:`DRAWS`: ``host`` = every class's real batch and DSA from
  the iteration's CPU generator, class by class, the CPU default and the sets of every
  earlier release; ``device`` = all classes' real batches from one ``rand`` + sort and all
  classes' DSA parameters from one ``rand`` on the run's device, the GPU default) —
  ``options.speed.draws``;
- the **guard** for NaN/inf (every step, or deferred to check points with a roll-back) —
  ``options.speed.sync``;
- the **recorder**: loss log, tracker, progress, checkpoints and resume.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import torch

from ..augment import DSAConfig, DSAParams, sample_dsa, sample_dsa_classes
from ..data import LTData
from ..errors import ConfigError, TrainingError
from ..extractors import interpolate_, pool_inits, train_pool
from ..multiformation import decode
from ..nets import Reinit, has_batchnorm, init_net
from ..registry import Registry
from ..utils import atomic_torch_save, atomic_write_bytes, derive_seed, draws_on_device, make_optimizer


def uses_device_draws(cfg: Any, device: torch.device) -> bool:
    """``options.speed.draws``: ``auto`` draws on the device everywhere but on the CPU."""
    return draws_on_device(cfg.speed.draws, device)


# ----------------------------------------------------------------------------- extractors
class Extractor:
    """The network whose features are matched; :meth:`draw` makes this iteration's."""

    def __init__(self, cfg: Any, data: LTData, ctx: Any) -> None:
        info = data.info
        self.seed = ctx.seed
        # One trunk module for the whole run, re-initialised in place each iteration, so a
        # compiled embed is compiled once (its weights are graph inputs, not constants).
        self.trunk = init_net(cfg.net, info.channels, data.num_classes, info.image_size, 0).to(ctx.device)
        self.trunk.requires_grad_(False)
        self.reinit = Reinit(self.trunk, on_device=uses_device_draws(cfg, ctx.device))
        self.feature_dim = int(self.trunk.feature_dim)
        self.batchnorm = has_batchnorm(self.trunk)
        self.calibration: torch.nn.Module | None = None  # a trained net for the calibration term

    def draw(self, it: int, g: torch.Generator) -> None:
        self.reinit(derive_seed(self.seed, "trunk", it))  # in place: no module built, no dummy forward


EXTRACTORS: Registry[type[Extractor]] = Registry("extractor")
EXTRACTORS.add("random", Extractor)


class PoolExtractor(Extractor):
    """NCFM's: one model of a trained pool mixed with an initialisation, ``l ~ U(0, 1)``:
    a fresh random trunk (``interp_init=fresh``, SPEC §4b) or that model's own saved
    initialisation (``saved``, NCFM's released code). The same model, unmixed, is the
    iteration's calibration net."""

    def __init__(self, cfg: Any, data: LTData, ctx: Any) -> None:
        super().__init__(cfg, data, ctx)
        if cfg.extraction.pool_size < 1 or cfg.extraction.pool_epochs < 1:
            raise ConfigError("pool_size and pool_epochs must be at least 1")
        from ..distributed import DistInfo, barrier

        dev, rank = ctx.device, getattr(ctx, "dist", None) or DistInfo()
        if not rank.is_main:  # rank 0 trains (and caches) the pool; the others then read it
            barrier("waiting for rank 0 to train the extractor pool")
        if cfg.extraction.interp_init not in ("fresh", "saved"):
            raise ConfigError(f"interp_init must be 'fresh' or 'saved', got {cfg.extraction.interp_init!r}")
        pool_seed = derive_seed(ctx.seed, "pool")
        pool = train_pool(data, cfg.net, cfg.extraction.pool_size, cfg.extraction.pool_epochs, pool_seed, str(dev),
                          cfg.extraction.pool_dir, ctx.show_progress and rank.is_main)
        self.inits = None
        if cfg.extraction.interp_init == "saved":
            self.inits = [{k: v.to(dev) for k, v in m.items()}
                          for m in pool_inits(data, cfg.net, cfg.extraction.pool_size, pool_seed)]
        if rank.is_main and rank.enabled:
            barrier("sharing the trained extractor pool")
        self.pool = [{k: v.to(dev) for k, v in m.items()} for m in pool]
        info = data.info
        self.calibration = init_net(cfg.net, info.channels, data.num_classes, info.image_size, 0).to(dev)
        self.calibration.requires_grad_(False)

    def draw(self, it: int, g: torch.Generator) -> None:
        k = int(torch.randint(len(self.pool), (1,), generator=g))
        lam = float(torch.rand(1, generator=g))
        if self.inits is None:
            super().draw(it, g)  # a fresh trunk (its weights come from (seed, it), not from g)
        else:
            with torch.no_grad():
                for name, t in self.trunk.state_dict().items():
                    t.copy_(self.inits[k][name])
        interpolate_(self.trunk, self.pool[k], lam)
        self.calibration.load_state_dict(self.pool[k])


EXTRACTORS.add("pool", PoolExtractor)


# ----------------------------------------------------------------------------- draws
Draw = tuple[torch.Tensor, DSAParams]  # (indices of a class's real batch, its siamese DSA draw)


class HostDraws:
    """Class by class from the iteration's host generator: ``randperm`` of the class's
    images (the first ``batch_real``; all of them when the class is shorter) and one
    siamese DSA draw. Cheap on a CPU, where the run is; a GPU would wait for copies."""

    def __init__(self, data: LTData, cfg: Any, ctx: Any) -> None:
        self.class_idx = [data.train.indices_of(c) for c in range(data.num_classes)]
        self.size, self.batch_real = data.info.image_size, cfg.batch_real
        self.dsa = DSAConfig(strategy=cfg.dsa_strategy if cfg.dsa else "none")

    def __call__(self, it: int, g: torch.Generator) -> list[Draw]:
        out = []
        for idx in self.class_idx:
            pick = idx[torch.randperm(len(idx), generator=g)[: self.batch_real]]
            out.append((pick, sample_dsa(1, self.size, g, self.dsa, siamese=True)))
        return out


class DeviceDraws(HostDraws):
    """All classes at once, on the run's device: one ``rand`` over the whole training
    split, offset by class, sorted once, gives a uniform random permutation inside every
    class's block (its first ``batch_real`` are the batch); one ``rand(C, 3)`` gives every
    class's DSA parameters (:func:`sample_dsa_classes`). Only the DSA operation choice
    (which code path runs) is drawn on the host. Nothing waits for the device."""

    def __init__(self, data: LTData, cfg: Any, ctx: Any) -> None:
        super().__init__(data, cfg, ctx)
        dev, labels = ctx.device, data.train.labels
        order = torch.argsort(labels, stable=True)
        counts = torch.bincount(labels, minlength=data.num_classes).tolist()
        starts = [sum(counts[:c]) for c in range(len(counts))]
        self.spans = [(s, min(n, self.batch_real)) for s, n in zip(starts, counts)]
        self.order = order.to(dev)
        self.block = labels[order].to(dev, torch.float64)  # class id of each sorted position
        self.seed, self.g = ctx.seed, torch.Generator(device=dev)

    def __call__(self, it: int, g: torch.Generator) -> list[Draw]:
        self.g.manual_seed(derive_seed(self.seed, "draws", it))
        keys = torch.rand(len(self.block), generator=self.g, device=self.block.device, dtype=torch.float64)
        pos = torch.argsort(keys + self.block)  # blocks stay in place; each is shuffled
        picks = [self.order[pos[s : s + n]] for s, n in self.spans]
        return list(zip(picks, sample_dsa_classes(len(picks), self.size, g, self.g, self.dsa)))


DRAWS: Registry[type[HostDraws]] = Registry("draws")
DRAWS.add("host", HostDraws)
DRAWS.add("device", DeviceDraws)


def make_draws(data: LTData, cfg: Any, ctx: Any) -> HostDraws:
    return DRAWS.get("device" if uses_device_draws(cfg, ctx.device) else "host")(data, cfg, ctx)


# ----------------------------------------------------------------------------- synthetic images
class Synthetic:
    """The learnable stored images of the classes this process owns, and how they become
    network input.

    ``x`` holds the stored pixels of ``classes`` (all classes in one process; a rank's
    share under ``torch.distributed``), ``ipc`` rows per class in that order: normalised,
    or in [0, 1] (``unit``, clamped after each step); with factor f each stored image is an
    f x f mosaic that :func:`decode` turns into f*f training images."""

    def __init__(self, x: torch.Tensor, labels: torch.Tensor, data: LTData, cfg: Any, ipc: int,
                 device: torch.device, classes: list[int] | None = None) -> None:
        if cfg.synthetic.pixel_space not in ("normalized", "unit"):
            raise ConfigError(f"pixel_space must be 'normalized' or 'unit', got {cfg.synthetic.pixel_space!r}")
        self.classes = list(range(data.num_classes)) if classes is None else list(classes)
        self.pos = {c: i for i, c in enumerate(self.classes)}
        if len(self.classes) != data.num_classes:
            x = torch.cat([x[c * ipc : (c + 1) * ipc] for c in self.classes])
        self.x = x.to(device).requires_grad_(True)
        self.labels, self.data, self.ipc, self.factor = labels, data, ipc, cfg.synthetic.factor
        self.unit = cfg.synthetic.pixel_space == "unit"

    def to_net(self, x: torch.Tensor) -> torch.Tensor:
        """Stored pixels -> decoded, normalised network input."""
        x = decode(x, self.factor)
        return self.data.normalize_float(x) if self.unit else x

    def of_class(self, c: int) -> torch.Tensor:
        i = self.pos[c]
        return self.to_net(self.x[i * self.ipc : (i + 1) * self.ipc])

    def project_(self) -> None:
        if self.unit:
            with torch.no_grad():
                self.x.clamp_(0, 1)

    def export(self) -> torch.Tensor:
        """Normalised CPU images of the owned classes (artifacts always hold normalised images)."""
        x = self.x.detach().cpu()
        return self.data.normalize_float(x) if self.unit else x


# ----------------------------------------------------------------------------- NaN / inf
class Guard:
    """Finds NaN/inf in the loss or the gradient.

    ``deferred=False``: every loss and gradient is checked as it is made; the run stops
    before the bad step. ``deferred=True``: nothing waits for the device inside an
    iteration; a device flag records the first bad iteration, read at check points
    (:meth:`check`), where the images are rolled back to the last good check."""

    def __init__(self, deferred: bool, syn: Synthetic, opt: torch.optim.Optimizer, device: torch.device,
                 start: int, ckpt: Path | None, class_names: list[str]) -> None:
        self.deferred, self.syn, self.opt, self.ckpt, self.names = deferred, syn, opt, ckpt, class_names
        self.it = start
        if deferred:
            self.bad_at = torch.full((), -1, dtype=torch.long, device=device)
            self.finite = torch.ones((), dtype=torch.bool, device=device)
            self.good = self._snapshot(start)

    def begin(self, it: int) -> None:
        self.it = it
        if self.deferred:
            self.finite = torch.ones((), dtype=torch.bool, device=self.bad_at.device)

    def loss(self, loss: torch.Tensor, c: int) -> None:
        if not self.deferred and not torch.isfinite(loss):
            raise TrainingError(
                f"loss is {loss.item()} at iteration {self.it} (class {self.names[c]!r}); "
                f"stopped before the step; the last good checkpoint ({self.ckpt}) is kept"
            )

    def grad(self, grad: torch.Tensor | None) -> None:
        if grad is None:
            return
        if self.deferred:
            self.finite = self.finite & torch.isfinite(grad).all()
        elif not torch.isfinite(grad).all():
            raise TrainingError(f"gradient is NaN/inf at iteration {self.it}; last good checkpoint {self.ckpt} kept")

    def end(self, total: Any) -> None:
        if self.deferred:
            self.finite = self.finite & torch.isfinite(total)
            self.bad_at = torch.where((self.bad_at < 0) & ~self.finite, torch.full_like(self.bad_at, self.it),
                                      self.bad_at)

    def check(self, done: int) -> None:
        """At a check point (after ``done`` iterations): the one host synchronisation."""
        if not self.deferred:
            return
        from ..distributed import all_reduce_min

        never = torch.iinfo(torch.long).max  # every rank learns the first bad iteration of any rank
        first_bad = int(all_reduce_min(torch.where(self.bad_at < 0, torch.full_like(self.bad_at, never), self.bad_at)))
        first_bad = -1 if first_bad == never else first_bad
        if first_bad >= 0:
            with torch.no_grad():
                self.syn.x.copy_(self.good[1])
            self.opt.load_state_dict(self.good[2])
            raise TrainingError(
                f"loss or gradient is NaN/inf at iteration {first_bad} (found at the check after iteration {done}); "
                f"the images were rolled back to iteration {self.good[0]}, nothing later is saved, and the last "
                f"good checkpoint ({self.ckpt}) is kept")
        self.good = self._snapshot(done)

    def _snapshot(self, iteration: int) -> tuple:
        return iteration, self.syn.x.detach().clone(), copy.deepcopy(self.opt.state_dict())


# ----------------------------------------------------------------------------- step policy
class StepPolicy:
    """When the optimiser steps: once per iteration (``joint``), or after every class."""

    def __init__(self, per_class: bool, syn: Synthetic, opt: torch.optim.Optimizer, guard: Guard) -> None:
        self.per_class, self.syn, self.opt, self.guard = per_class, syn, opt, guard

    def step(self) -> None:
        self.guard.grad(self.syn.x.grad)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.syn.project_()

    def after_class(self) -> None:
        if self.per_class:
            self.step()

    def idle_class(self) -> None:
        """A class another rank owns: with per-class steps this rank's images still take
        that step (zero gradient; momentum and weight decay move them as in one process)."""
        if self.per_class:
            self.syn.x.grad = torch.zeros_like(self.syn.x)
            self.step()

    def after_iteration(self) -> None:
        if not self.per_class:
            self.step()


def make_image_optimizer(params: list[torch.Tensor], cfg: Any) -> torch.optim.Optimizer:
    o = cfg.synthetic
    return make_optimizer(params, o.optimizer, o.lr_img, o.momentum, o.weight_decay)


# ----------------------------------------------------------------------------- recorder
class Recorder:
    """The run's memory: checkpoint / resume, the loss log (JSONL), the tracker.

    One process writes ``<prefix>.ckpt``. Under ``torch.distributed`` every rank writes
    its shard ``<prefix>.ckpt.d/it<iteration>.rank<r>.pt``; after a barrier rank 0 writes
    the manifest ``<prefix>.ckpt.json`` naming that complete set of shards, then removes
    older shards. A rank killed mid-checkpoint leaves the manifest at the last complete one.
    Shards hold per-class rows, so a run resumes with any number of processes (or one).
    Only rank 0 writes the loss log and talks to the tracker."""

    EXCLUDED = ("iterations", "record")  # not part of a run's identity (nor speed.sync, below)

    def __init__(self, ctx: Any, cfg: Any, data: LTData, syn: Synthetic, opt: torch.optim.Optimizer,
                 matcher: Any, scheduler: Any = None) -> None:
        from ..distributed import DistInfo

        self.ctx, self.cfg, self.data, self.syn, self.opt, self.matcher = ctx, cfg, data, syn, opt, matcher
        self.scheduler = scheduler  # the image learning rate's schedule (its state is checkpointed)
        self.dist = getattr(ctx, "dist", None) or DistInfo()
        self.main = self.dist.is_main
        prefix = Path(ctx.run_prefix) if ctx.run_prefix else None
        self.ckpt = prefix.with_name(prefix.name + ".ckpt") if prefix else None
        self.manifest = prefix.with_name(prefix.name + ".ckpt.json") if prefix else None
        self.shard_dir = prefix.with_name(prefix.name + ".ckpt.d") if prefix else None
        self.log_path = prefix.with_name(prefix.name + ".loss.jsonl") if prefix and self.main else None
        options = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in self.EXCLUDED}
        options["speed"] = {k: v for k, v in options["speed"].items() if k != "sync"}
        self.identity = {"dataset": data.split_record(), "ipc": ctx.ipc, "seed": ctx.seed, "options": options}
        self.start, self.history = 0, []
        self.t0 = time.perf_counter()

    # -- resume
    def _states(self) -> list[dict]:
        """The newest complete checkpoint: the manifest's shards, else the single file."""
        states = []
        if self.manifest is not None and self.manifest.is_file():
            man = json.loads(self.manifest.read_text())
            for name in man["files"]:
                f = self.shard_dir / name
                if not f.is_file():
                    raise ConfigError(f"checkpoint manifest {self.manifest} names {f}, which is missing")
                states.append(_load_ckpt(f))
        single = _load_ckpt(self.ckpt) if self.ckpt is not None and self.ckpt.is_file() else None
        if single is not None and (not states or int(single["iteration"]) > int(states[0]["iteration"])):
            states = [single]
        for st in states:
            if st.get("identity") != self.identity:
                raise ConfigError(f"checkpoint {self.ckpt} belongs to a different run (data, IPC, seed or options differ)")
        return states

    def resume(self) -> int:
        """Load the checkpoint when asked and present; (re)write the loss log; the first iteration."""
        states = self._states() if self.cfg.record.resume and self.ckpt is not None else []
        if states:
            ipc, rows, opt_rows, shared_opt, history = self.syn.ipc, {}, {}, {}, []
            for st in states:
                classes = st.get("classes") or list(range(self.data.num_classes))
                split = _split_state(st["optimizer"], st["images"].shape)
                for i, c in enumerate(classes):
                    rows[c] = st["images"][i * ipc : (i + 1) * ipc]
                    opt_rows[c] = {k: v[i * ipc : (i + 1) * ipc] for k, v in split["rows"].items()}
                shared_opt = split
                history = st.get("history") or history
            mine = self.syn.classes
            missing = [c for c in mine if c not in rows]
            if missing:
                raise ConfigError(f"checkpoint of {self.ckpt} lacks classes {missing}")
            with torch.no_grad():
                self.syn.x.copy_(torch.cat([rows[c] for c in mine]).to(self.syn.x.device))
            self.opt.load_state_dict(_join_state(shared_opt, {k: torch.cat([opt_rows[c][k] for c in mine])
                                                             for k in shared_opt["rows"]}))
            self.matcher.load_state_dict(states[0]["matcher"])
            if self.scheduler is not None and states[0].get("scheduler"):
                self.scheduler.load_state_dict(states[0]["scheduler"])
            self.start, self.history = int(states[0]["iteration"]), list(history)
        if self.log_path is not None:
            atomic_write_bytes(self.log_path, "".join(json.dumps(h) + "\n" for h in self.history).encode())
        return self.start

    # -- log
    def log(self, done: int, loss: float) -> None:
        rec = {"iteration": done, "loss": loss, "seconds": round(time.perf_counter() - self.t0, 3)}
        self.history.append(rec)
        if self.log_path is not None:
            with open(self.log_path, "a") as f:
                f.write(json.dumps(rec) + "\n")
        if self.ctx.tracker and self.main:
            self.ctx.tracker.scalar("distill/loss", loss, done)
            self.ctx.tracker.scalar("distill/lr_img", self.opt.param_groups[0]["lr"], done)

    def images(self, done: int) -> None:
        if not (self.ctx.tracker and self.main and not self.dist.enabled and self.ctx.image_every
                and done % self.ctx.image_every == 0 and done < self.cfg.iterations):
            return
        from ..artifact import tracker_grid

        info = self.data.info
        x = self.syn.to_net(self.syn.x.detach())
        self.ctx.tracker.image("distill/synthetic", tracker_grid(x, self.syn.labels, self.syn.factor, info.mean,
                                                                 info.std, self.data.num_classes), done)

    # -- checkpoint
    def save(self, iteration: int) -> None:
        if self.ckpt is None:
            return
        state = {"iteration": iteration, "images": self.syn.x.detach().cpu(), "classes": self.syn.classes,
                 "optimizer": self.opt.state_dict(), "matcher": self.matcher.state_dict(),
                 "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
                 "history": self.history, "identity": self.identity, "world_size": self.dist.world_size}
        if not self.dist.enabled:
            atomic_torch_save(state, self.ckpt)
            return
        from ..distributed import barrier

        self.shard_dir.mkdir(parents=True, exist_ok=True)
        name = f"it{iteration:09d}.rank{self.dist.rank}.pt"
        atomic_torch_save(state, self.shard_dir / name)
        barrier(f"the checkpoint at iteration {iteration}")
        if self.main:
            files = [f"it{iteration:09d}.rank{r}.pt" for r in range(self.dist.world_size)]
            atomic_write_bytes(self.manifest, json.dumps({"iteration": iteration, "world_size": self.dist.world_size,
                                                          "files": files}, indent=1).encode())
            for f in self.shard_dir.glob("it*.rank*.pt"):
                if f.name not in files and int(f.name[2:11]) < iteration:
                    f.unlink(missing_ok=True)

    def paths(self) -> list[Path]:
        """Every checkpoint file this run may have written (removed once the set is saved)."""
        return [p for p in (self.ckpt, self.manifest, self.shard_dir) if p is not None]


def _load_ckpt(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or foreign file: say which
        raise ConfigError(f"cannot read checkpoint {path}: {e}") from None


def _split_state(opt_state: dict, shape: torch.Size) -> dict:
    """An optimiser's state (one parameter: the images) as per-row tensors (momentum,
    Adam moments: the images' shape) and the rest (step counts, hyper-parameters)."""
    st = dict(opt_state.get("state", {}).get(0, {}))
    rows = {k: v for k, v in st.items() if isinstance(v, torch.Tensor) and v.shape == shape}
    return {"rows": rows, "other": {k: v for k, v in st.items() if k not in rows},
            "param_groups": opt_state["param_groups"], "empty": not st}


def _join_state(split: dict, rows: dict) -> dict:
    state = {} if split["empty"] else {0: {**split["other"], **rows}}
    return {"state": state, "param_groups": split["param_groups"]}
