"""Progress bars that stay out of the way (stderr, off when not asked for)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


class _Null:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, **kw) -> None:
        pass


@contextlib.contextmanager
def progress_bar(total: int, desc: str, enabled: bool = True) -> Iterator:
    """A tqdm bar (stderr) when ``enabled``, else a no-op with the same interface."""
    if not enabled:
        yield _Null()
        return
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True)
    try:
        yield bar
    finally:
        bar.close()
