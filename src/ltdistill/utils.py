"""Small shared helpers: seeds, devices, atomic writes."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any

import torch


def derive_seed(seed: int, *keys: Any) -> int:
    """Derive a 63-bit seed from a run seed and any keys (class, run index, purpose).

    Deterministic across processes and platforms (unlike ``hash``), so per-class,
    per-run and per-rank streams never depend on execution order.
    """
    text = repr((int(seed),) + tuple(keys)).encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "little") & ((1 << 63) - 1)


def make_generator(seed: int, *keys: Any) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded with ``derive_seed(seed, *keys)``."""
    g = torch.Generator()
    g.manual_seed(derive_seed(seed, *keys))
    return g


def device_generator(device: torch.device | str, seed: int, *keys: Any) -> torch.Generator:
    """A ``torch.Generator`` on ``device`` seeded with ``derive_seed(seed, *keys)``: draws
    made where they are used (same seed, same device: same numbers)."""
    g = torch.Generator(device=device)
    g.manual_seed(derive_seed(seed, *keys))
    return g


def draws_on_device(draws: str, device: torch.device) -> bool:
    """The ``draws`` option (loop and evaluation): ``host``, ``device``, or ``auto`` (the
    device everywhere but on the CPU, where host draws keep every earlier release's numbers)."""
    if draws not in ("auto", "host", "device"):
        from .errors import ConfigError

        raise ConfigError(f"draws must be auto, host or device, got {draws!r}")
    return draws == "device" or (draws == "auto" and device.type != "cpu")


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``auto`` picks CUDA when available, else CPU; anything else is taken literally."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        from .errors import ConfigError

        raise ConfigError(f"unknown device {device!r}: {e}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        from .errors import ConfigError

        raise ConfigError(f"device {device!r} requested but CUDA is not available")
    return dev


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_writable(path: str | Path, what: str = "output") -> Path:
    """Make sure ``path`` can be written (its folder created if needed) before any work
    starts; an :class:`~ltdistill.errors.OutputError` naming the path otherwise."""
    from .errors import OutputError

    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{what} {path} is a folder, not a file")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".probe")
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise OutputError(f"cannot write {what} {path}: {e.strerror or e}") from None
    return path


def check_writable_dir(path: str | Path, what: str = "output folder") -> Path:
    """The folder form of :func:`check_writable`."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        from .errors import OutputError

        raise OutputError(f"{what} {path} exists and is not a folder")
    check_writable(path / ".ltdistill-probe", what)
    return path


def make_optimizer(params: list, name: str, lr: float, momentum: float = 0.0,
                   weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """The one optimiser factory (synthetic images, evaluation nets): ``sgd`` or ``adamw``."""
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    from .errors import ConfigError

    raise ConfigError(f"optimizer must be 'sgd' or 'adamw', got {name!r}")


GPU_CPU_THREADS = 2  # CPU threads of a process that computes on a GPU (its CPU work is small and serial)


def configure_threads(device: torch.device, threads: int = 0) -> int:
    """Set this process's CPU (intra-op) thread count and return it.

    ``threads`` > 0 is taken as is. 0 (auto) leaves a CPU run alone (all cores) and gives
    a GPU run :data:`GPU_CPU_THREADS`: the default, one OpenMP thread per core, keeps
    several cores spinning for nothing and makes runs that share a GPU collapse.
    """
    if threads < 0:
        from .errors import ConfigError

        raise ConfigError(f"threads must be >= 0 (0: automatic), got {threads}")
    if threads == 0 and device.type != "cpu":
        threads = min(GPU_CPU_THREADS, os.cpu_count() or 1)
    if threads > 0 and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temp file in the same folder and a rename.

    The file gets the usual permissions of a new file (``0666`` less the umask), not
    the ``0600`` of a temp file, so others can read a set as they could any output."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` that never leaves a half-written file at ``path``."""
    import io

    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def git_commit(path: str | Path | None = None) -> str | None:
    """The commit of the git checkout ltdistill runs from (``+dirty`` when its tracked
    files differ from it), or None when it is not a checkout or git is missing."""
    import subprocess

    where = Path(path) if path else Path(__file__).resolve().parent
    try:
        top = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=where, capture_output=True,
                             text=True, timeout=10)
        if top.returncode != 0:
            return None
        root = Path(top.stdout.strip())
        if not (root / "src" / "ltdistill").is_dir():  # a checkout, but not of ltdistill
            return None
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                              timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", "src"], cwd=root, timeout=10).returncode
        return (head + ("+dirty" if dirty else "")) if head else None
    except (OSError, subprocess.SubprocessError):
        return None


_PROVENANCE: dict | None = None


def provenance() -> dict:
    """Library version and, from a git checkout, its commit (computed once per process)."""
    global _PROVENANCE
    if _PROVENANCE is None:
        from . import __version__

        _PROVENANCE = {"library_version": __version__, "commit": git_commit()}
    return dict(_PROVENANCE)


def native_bf16(device: torch.device | str) -> bool:
    """Whether bfloat16 runs natively on ``device``: a CUDA GPU that supports it, or a CPU
    whose oneDNN has bf16 kernels (AVX-512 or AMX). Elsewhere (an AVX2-only CPU) autocast
    emulates it: a ConvNet-3 training step measured 10x slower than float32
    (``bench/bf16.py``)."""
    device = torch.device(device)
    if device.type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if device.type != "cpu":
        return False
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return torch.backends.cpu.get_cpu_capability().startswith("AVX512")


def resolve_bf16(value: bool | str, device: torch.device | str, key: str = "bf16") -> bool:
    """``auto`` -> :func:`native_bf16`; ``true`` on a device without native bfloat16 warns
    (it is slower there, not faster)."""
    import warnings

    from .errors import ConfigError

    if isinstance(value, str):
        if value.lower() != "auto":
            raise ConfigError(f"{key} must be true, false or auto, got {value!r}")
        return native_bf16(device)
    if value and not native_bf16(device):
        warnings.warn(f"{key}=true on {torch.device(device).type} without native bfloat16 "
                      f"({machine()}): autocast emulates it and runs slower than float32; "
                      f"{key}=auto picks float32 here", stacklevel=3)
    return bool(value)


def machine() -> str:
    """The CPU (and GPU, when there is one) that results were measured on."""
    import platform

    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        cpu = platform.processor() or cpu
    out = f"{cpu}, {os.cpu_count()} cores, {torch.backends.cpu.get_cpu_capability()}"
    if torch.cuda.is_available():
        out += f"; {torch.cuda.get_device_name(0)}"
    return out

