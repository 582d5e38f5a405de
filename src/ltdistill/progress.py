"""Progress that stays out of the way: a tqdm bar on a terminal, a plain line every few
percent when stderr is a file or a pipe (a redrawn bar there is thousands of lines),
nothing when not asked for."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator
from typing import TextIO


class _Null:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, **kw) -> None:
        pass


class PlainProgress:
    """``desc: k/total (p%) key=value, elapsed`` printed each time another ``every``
    percent is done (and at the end); the same interface as the tqdm bar."""

    def __init__(self, total: int, desc: str, stream: TextIO, every: float = 5.0) -> None:
        self.total, self.desc, self.stream, self.every = max(0, int(total)), desc, stream, every
        self.n, self.postfix, self.t0 = 0, "", time.perf_counter()
        self._next = every

    def update(self, n: int = 1) -> None:
        self.n += n
        pct = 100.0 * self.n / self.total if self.total else 100.0
        if pct + 1e-9 >= self._next or self.n >= self.total:
            self._next = (int(pct // self.every) + 1) * self.every
            self._print(pct)

    def set_postfix(self, **kw) -> None:
        self.postfix = " ".join(f"{k}={v}" for k, v in kw.items())

    def _print(self, pct: float) -> None:
        extra = f" {self.postfix}" if self.postfix else ""
        self.stream.write(f"{self.desc}: {self.n}/{self.total} ({pct:.0f}%){extra}, "
                          f"{time.perf_counter() - self.t0:.1f}s\n")
        self.stream.flush()

    def close(self) -> None:
        pass


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


@contextlib.contextmanager
def progress_bar(total: int, desc: str, enabled: bool = True, stream: TextIO | None = None) -> Iterator:
    """A tqdm bar on ``stream`` (stderr) when it is a terminal, :class:`PlainProgress`
    lines when it is not, a no-op with the same interface when not ``enabled``."""
    if not enabled:
        yield _Null()
        return
    stream = stream or sys.stderr
    if not _is_terminal(stream):
        yield PlainProgress(total, desc, stream)
        return
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True, file=stream)
    try:
        yield bar
    finally:
        bar.close()
