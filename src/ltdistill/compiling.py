"""``torch.compile`` where it works, eager where it does not.

On this project's 2-core CPU a compiled ConvNet-3 runs its forward about 2x and a
training step about 1.9x faster than eager (instance norm and ReLU fuse into the
convolution epilogues), for a one-off compile of 15-30 s. So compilation is worth
it for long runs and a waste for short ones: ``"auto"`` compiles when the run will
push at least :data:`AUTO_MIN_WORK` image-pixels through the network (CIFAR runs of
the benchmark protocols: yes; the 8x8 demo and the tests: no). Compiled functions
fall back to eager (with one warning) when compilation fails, e.g. without a C++
compiler.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch

from .errors import ConfigError

AUTO_MIN_WORK = 3e7  # image-pixels through the network (e.g. 90k 32x32 images)
MODES = ("auto", "on", "off")


def should_compile(mode: str | bool, work: float) -> bool:
    """Whether to compile for a run that pushes about ``work`` image-pixels through a network."""
    if isinstance(mode, bool):
        mode = "on" if mode else "off"
    if mode not in MODES:
        raise ConfigError(f"compile must be one of {', '.join(MODES)}, got {mode!r}")
    if mode == "off" or not hasattr(torch, "compile"):
        return False
    return mode == "on" or work >= AUTO_MIN_WORK


class Compiled:
    """``fn`` compiled by ``torch.compile``; calls fall back to ``fn`` once compilation fails."""

    def __init__(self, fn: Callable[..., Any], name: str = "", **options: Any) -> None:
        self.fn = fn
        self.name = name or getattr(fn, "__name__", "function")
        self.compiled = torch.compile(fn, **options)
        self.failed = False

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if not self.failed:
            try:
                return self.compiled(*args, **kwargs)
            except Exception as e:  # noqa: BLE001  (any compiler failure: fall back, once)
                self.failed = True
                warnings.warn(f"torch.compile of {self.name} failed ({type(e).__name__}: {e}); running eager",
                              RuntimeWarning, stacklevel=2)
        return self.fn(*args, **kwargs)


def maybe_compile(fn: Callable[..., Any], enabled: bool, name: str = "", **options: Any) -> Callable[..., Any]:
    """``fn`` compiled (``options`` go to ``torch.compile``) when ``enabled``, else ``fn``."""
    return Compiled(fn, name, **options) if enabled else fn
