"""The pictures a researcher looks at: the loss curve of a run and per-class accuracy
(one result, or several side by side), all as PNG files written atomically.

Per-class figures order the classes by training-set size (head to tail), draw mean ± std
over the evaluation runs and shade the head / medium / tail groups.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .utils import atomic_write_bytes

GROUP_COLOURS = {"head": "#e4e4f2", "medium": "#f2f0dc", "tail": "#e2f0e2"}


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise ConfigError("plots need matplotlib: pip install 'ltdistill[plot]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path, dpi: int = 100) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    _pyplot().close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def _shade_groups(ax, groups: dict[str, list[int]], pos: dict[int, int], label_y: float, **text_kw) -> None:
    """Shade each group's span of bar positions and name it at height ``label_y``."""
    for g, cls in groups.items():
        if cls:
            lo, hi = min(pos[c] for c in cls), max(pos[c] for c in cls)
            ax.axvspan(lo - 0.5, hi + 0.5, color=GROUP_COLOURS.get(g, "#eeeeee"), zorder=0)
            ax.text((lo + hi) / 2, label_y, g, ha="center", fontsize=9, **text_kw)


def read_loss_log(path: str | Path) -> list[dict]:
    """The records of a ``<out>.loss.jsonl`` (iteration, loss, seconds)."""
    rows = []
    for line in Path(path).read_text().splitlines():
        if line.strip():
            rows.append(json.loads(line))
    return rows


def plot_loss(log_path: str | Path, png_path: str | Path, title: str = "") -> Path | None:
    """The loss curve of a run from its JSONL (a resumed run's log holds the whole run).
    Log-scaled when the positive losses span more than two decades. None when the log
    holds no record."""
    rows = [r for r in read_loss_log(log_path) if r.get("loss") is not None and math.isfinite(r["loss"])]
    if not rows:
        return None
    plt = _pyplot()
    its = [r["iteration"] for r in rows]
    loss = [r["loss"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 3.4))
    k = max(1, len(loss) // 20)  # each iteration draws a fresh network, so the raw curve is noisy
    ax.plot(its, loss, lw=0.8, color="#1f77b4", alpha=0.35 if k > 1 else 1.0, label="logged")
    if k > 1:
        smooth = [sum(loss[max(0, i - k + 1) : i + 1]) / len(loss[max(0, i - k + 1) : i + 1]) for i in range(len(loss))]
        ax.plot(its, smooth, lw=1.6, color="#1f77b4", label=f"running mean of {k} logs")
        ax.legend(fontsize=8, frameon=False)
    pos = [v for v in loss if v > 0]
    if pos and len(pos) == len(loss) and max(pos) / min(pos) > 100:
        ax.set_yscale("log")
    ax.set_xlabel("iteration")
    ax.set_ylabel("matching loss")
    ax.grid(alpha=0.3)
    ax.set_title(title or Path(log_path).name, fontsize=10)
    fig.tight_layout()
    return _save(fig, png_path)


def _per_run_class_acc(result: dict) -> list[list[float]]:
    runs = result.get("runs") or []
    return [r["per_class"] for r in runs] if runs else [result["per_class"]]


def _mean_std(rows: list[list[float]]) -> tuple[list[float], list[float]]:
    n = len(rows)
    mean = [sum(col) / n for col in zip(*rows)]
    if n < 2:
        return mean, [0.0] * len(mean)
    std = [math.sqrt(sum((v - m) ** 2 for v in col) / (n - 1)) for col, m in zip(zip(*rows), mean)]
    return mean, std


def plot_per_class(results: list[tuple[str, dict]], png_path: str | Path, title: str = "") -> Path:
    """Per-class accuracy bars of one or more evaluation results (the JSON that
    ``ltdistill evaluate --json`` writes), classes ordered head to tail by training
    count, mean ± std over runs, groups shaded. All results must share their classes."""
    if not results:
        raise ConfigError("nothing to plot")
    first = results[0][1]
    names = first.get("class_names") or [str(c) for c in range(len(first["per_class"]))]
    counts = (first.get("dataset") or {}).get("class_counts") or [0] * len(names)
    for label, r in results[1:]:
        if len(r["per_class"]) != len(names) or (r.get("class_names") and r["class_names"] != names):
            raise ConfigError(f"{label} has other classes than {results[0][0]}: compare results of one dataset")
    order = sorted(range(len(names)), key=lambda c: (-counts[c], c))
    pos = {c: i for i, c in enumerate(order)}
    plt = _pyplot()
    C, k = len(names), len(results)
    fig, ax = plt.subplots(figsize=(min(18, max(6.5, 0.55 * C * max(1, k / 2) + 2.5)), 4.2))
    _shade_groups(ax, first.get("group_classes") or {}, pos, 101, va="bottom")
    width = 0.8 / k
    cmap = plt.get_cmap("tab10")
    for j, (label, r) in enumerate(results):
        mean, std = _mean_std(_per_run_class_acc(r))
        xs = [i - 0.4 + width * (j + 0.5) for i in range(C)]
        ax.bar(xs, [mean[c] for c in order], width, yerr=[std[c] for c in order], capsize=2 if C <= 30 else 0,
               color=cmap(j % 10), label=f"{label}: {r['acc_mean']:.1f} ± {r.get('acc_std', 0.0):.1f}",
               error_kw={"lw": 0.8}, zorder=2)
    ax.set_xlim(-0.5, C - 0.5)
    ax.set_ylim(0, 108)
    ax.set_ylabel("test accuracy (%)")
    if C <= 30:
        ax.set_xticks(range(C))
        ax.set_xticklabels([f"{names[c]}\n{counts[c]}" if counts[c] else names[c] for c in order], fontsize=8,
                           rotation=0 if C <= 12 else 60)
        ax.set_xlabel("class and its training count, head → tail")
    else:
        ax.set_xlabel(f"{C} classes, head → tail (by training count)")
    ax.grid(axis="y", alpha=0.3, zorder=1)
    if k > 1 or results[0][0]:
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2 if C <= 12 else -0.3), ncol=min(k, 4), fontsize=9,
                  frameon=False)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, png_path)


def load_result(path: str | Path) -> dict[str, Any]:
    """An evaluation result JSON (``ltdistill evaluate --json``), with a clear error."""
    from .errors import ArtifactError

    p = Path(path)
    if not p.is_file():
        raise ArtifactError(f"no result file at {p}")
    try:
        r = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{p} is not a JSON result file: {e}") from None
    if not isinstance(r, dict) or not {"acc_mean", "per_class"} <= set(r):
        raise ArtifactError(f"{p} is not an ltdistill evaluation result (no acc_mean / per_class)")
    return r


def compare_table(results: list[tuple[str, dict]]) -> str:
    """Several results side by side: overall, groups, then per class."""
    first = results[0][1]
    names = first.get("class_names") or [str(c) for c in range(len(first["per_class"]))]
    counts = (first.get("dataset") or {}).get("class_counts") or []
    w = max(12, *(len(label) for label, _ in results))
    head = f"{'':<18}" + "".join(f"{label:>{w + 2}}" for label, _ in results)
    lines = [head, "-" * len(head)]

    def row(name: str, vals: list[str]) -> None:
        lines.append(f"{name:<18}" + "".join(f"{v:>{w + 2}}" for v in vals))

    row("overall", [f"{r['acc_mean']:.2f} ± {r.get('acc_std', 0):.2f}" for _, r in results])
    for g in (first.get("groups") or {}):
        row(g, [f"{(r.get('groups') or {}).get(g, float('nan')):.2f}" for _, r in results])
    row("labels", [str(r.get("labels", "?")) for _, r in results])
    lines.append("per class (training count):")
    for c, n in enumerate(names):
        cnt = f" ({counts[c]})" if c < len(counts) else ""
        row(f"  {n}{cnt}"[:18], [f"{r['per_class'][c]:.2f}" for _, r in results])
    return "\n".join(lines)


def plot_class_counts(names: list[str], counts: list[int], groups: dict[str, list[int]], png_path: str | Path,
                      title: str = "") -> Path:
    """The class distribution of a training split: bars head to tail, log scale, groups shaded."""
    plt = _pyplot()
    C = len(names)
    order = sorted(range(C), key=lambda c: (-counts[c], c))
    pos = {c: i for i, c in enumerate(order)}
    fig, ax = plt.subplots(figsize=(min(16, max(6, 0.35 * C + 2)), 3.8))
    _shade_groups(ax, groups, pos, max(counts) * 1.6)
    ax.bar(range(C), [counts[c] for c in order], color="#4c72b0", zorder=2)
    ax.set_yscale("log")
    ax.set_ylim(max(0.5, min(counts) / 2), max(counts) * 3)
    ax.set_xlim(-0.5, C - 0.5)
    ax.set_ylabel("training images (log)")
    if C <= 30:
        ax.set_xticks(range(C))
        ax.set_xticklabels([names[c] for c in order], rotation=45 if C > 8 else 0, ha="right" if C > 8 else "center",
                           fontsize=8)
    else:
        ax.set_xlabel(f"{C} classes, head → tail")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, png_path)
