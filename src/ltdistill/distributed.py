"""Class-sharded distillation and run-sharded evaluation on ``torch.distributed`` (SPEC §8).

The distribution-matching losses are independent per class given the iteration's trunk
(and frequencies), so the classes are dealt to the ranks round-robin (class ``c`` to rank
``c % world_size``: a long-tailed split's large and small classes spread evenly). Every
rank derives the trunk, the frequencies and every class's real batch and DSA draw from the
run seed exactly as one process does, and computes only its own classes: the set does not
depend on the number of processes. Collectives happen only at log points (the summed loss,
the NaN check), at checkpoints (a barrier, then rank 0's manifest) and at the end (the
shards gathered into one set).

Launch with ``torchrun`` (it sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``
…): the CLI initialises the process group (gloo on CPU, nccl on CUDA). A user who manages
the group calls ``dist.init_process_group`` first; :func:`current` then reads it.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

from .errors import TrainingError

T = TypeVar("T")
_JOINED = False  # the CLI joined the group from torchrun's environment (init_from_env)


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the group (``world_size`` 1: no group)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def classes(self, num_classes: int) -> list[int]:
        """The classes this rank owns: ``c % world_size == rank``."""
        return shard(num_classes, self.rank, self.world_size)


def shard(n: int, rank: int, world_size: int) -> list[int]:
    """Items ``0..n-1`` dealt round-robin: rank ``r`` owns ``r, r + W, r + 2W, …``."""
    return list(range(rank, n, world_size))


def _dist():
    import torch.distributed as dist

    return dist if dist.is_available() else None


def current() -> DistInfo:
    """The initialised default process group, or a single process."""
    dist = _dist()
    if dist is None or not dist.is_initialized():
        return DistInfo()
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", dist.get_rank())),
                    str(dist.get_backend()))


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def init_from_env(device: str = "auto", timeout_s: float = 300.0) -> DistInfo:
    """Join the group ``torchrun`` describes in the environment (no-op for one process or an
    already initialised group). nccl when the run computes on CUDA, else gloo. A collective
    that waits longer than ``timeout_s`` for a lost rank fails instead of hanging."""
    dist = _dist()
    if dist is None or not launched_by_torchrun():
        return current()
    if dist.is_initialized():
        return current()
    cuda = torch.cuda.is_available() and str(device) != "cpu" and not str(device).startswith("cpu")
    backend = "nccl" if cuda else "gloo"
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend, timeout=dt.timedelta(seconds=timeout_s))
    global _JOINED
    _JOINED = True
    return current()


def finish() -> None:
    """The success path's last collective: no rank tears its connections down while a peer
    still sends or receives (the end of the shards' gather, rank 0 saving)."""
    if current().enabled:
        barrier("the end of the run")


def shutdown() -> bool:
    """Destroy the group; True when it was the one :func:`init_from_env` joined."""
    global _JOINED
    dist = _dist()
    if dist is not None and dist.is_initialized():
        dist.destroy_process_group()
    joined, _JOINED = _JOINED, False
    return joined


def exit_rank(rc: int) -> None:
    """End a torchrun rank without interpreter finalisation. A gloo worker thread can still
    hold a finished collective's work object (its tensors have Python owners) after
    ``destroy_process_group``; dropped while the interpreter finalises, it takes the GIL
    and the process aborts (``terminate called without an active exception``, SIGABRT;
    seen once in CI after a run had finished and saved; pytorch/pytorch#190489). Every
    file is closed by then; the streams are flushed here."""
    import sys

    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(rc)


def device_for(info: DistInfo, device: torch.device) -> torch.device:
    """A CUDA run under a group uses the GPU of its local rank."""
    if info.enabled and device.type == "cuda" and device.index is None:
        return torch.device("cuda", info.local_rank)
    return device


def _guarded(what: str, fn: Callable[[], T]) -> T:
    """Run a collective; a lost peer becomes one clear :class:`TrainingError`."""
    try:
        return fn()
    except (RuntimeError, ConnectionError, OSError) as e:
        info = current()
        import re

        text = re.sub(r"\[[^\]]*\.(cc|cpp|h):\d+\]\s*", "", str(e).strip())  # drop the C++ source location
        reason = text.splitlines()[0][:160] if text else type(e).__name__
        raise TrainingError(
            f"rank {info.rank} of {info.world_size}: lost the other ranks during {what} ({reason}); a rank died or "
            f"was stopped. Rerun the same command with --resume to continue from the last complete checkpoint"
        ) from None


def barrier(what: str = "a barrier") -> None:
    dist = _dist()
    if current().enabled:
        _guarded(what, lambda: dist.barrier())


def all_reduce_sum(x: torch.Tensor | float, what: str = "the loss sum") -> torch.Tensor | float:
    """Sum over ranks (a float comes back a float)."""
    info = current()
    if not info.enabled:
        return x
    dist = _dist()
    t = x.detach().clone() if isinstance(x, torch.Tensor) else torch.tensor(float(x), dtype=torch.float64)
    if info.backend == "nccl" and t.device.type != "cuda":
        t = t.cuda()
    _guarded(what, lambda: dist.all_reduce(t, op=dist.ReduceOp.SUM))
    return t if isinstance(x, torch.Tensor) else float(t)


def all_reduce_min(x: torch.Tensor, what: str = "the NaN check") -> torch.Tensor:
    info = current()
    if not info.enabled:
        return x
    dist = _dist()
    t = x.detach().clone()
    _guarded(what, lambda: dist.all_reduce(t, op=dist.ReduceOp.MIN))
    return t


def all_gather_objects(obj: Any, what: str = "gathering the shards") -> list[Any]:
    """Every rank's ``obj`` in rank order (on every rank)."""
    info = current()
    if not info.enabled:
        return [obj]
    dist = _dist()
    out: list[Any] = [None] * info.world_size
    _guarded(what, lambda: dist.all_gather_object(out, obj))
    return out
