"""``ltdistill demo``: every registered method end to end on the embedded digits data.

scikit-learn's 8x8 digits ship inside the package, so the demo needs no download.
It makes them long-tailed by the usual rule (IF 50: 124 ... 2 images per class),
distils IPC 5 with every registered method (iterative methods: 200 iterations,
batch_real 128), evaluates each set with the CPU protocol (ConvNet, 300 epochs,
3 runs; ``--quick``: 20 iterations, 50 epochs, 2 runs), adds the
whole-long-tailed-set reference, and prints one table. Rows run in parallel worker
processes (one thread each), so the demo takes about half the time on two cores.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from .artifact import save_set
from .config import apply_overrides, to_dict
from .data import load_lt_data
from .evaluate import EvalConfig, EvalResult, evaluate_full, evaluate_set
from .methods import distill, list_methods, make_config
from .methods.matching import MatchConfig

IMBALANCE = 50
IPC = 5
ITERATIONS = 200


def _row(name: str, res: EvalResult, seconds: float) -> dict:
    return {"method": name, "acc_mean": res.acc_mean, "acc_std": res.acc_std, **res.groups,
            "seconds": seconds}


def format_table(rows: list[dict]) -> str:
    head = f"{'method':<14}{'accuracy %':>16}{'head':>8}{'medium':>8}{'tail':>8}{'time s':>9}"
    lines = [head, "-" * len(head)]
    for r in rows:
        acc = f"{r['acc_mean']:.2f} ± {r['acc_std']:.2f}"
        lines.append(f"{r['method']:<14}{acc:>16}{r['head']:>8.2f}{r['medium']:>8.2f}{r['tail']:>8.2f}"
                     f"{r['seconds']:>9.1f}")
    return "\n".join(lines)


def _job(name: str, out: str, quick: bool, seed: int, threads: int, show_progress: bool) -> tuple[dict, dict]:
    """Distil and evaluate one method (or the whole-LT reference): one demo row."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    data = load_lt_data("digits", imbalance=IMBALANCE)
    ecfg = _eval_config(quick, seed)
    t0 = time.perf_counter()
    if name == FULL:
        res = evaluate_full(data, ecfg, show_progress=show_progress)
        return _row(name, res, time.perf_counter() - t0), res.to_dict()
    cfg = make_config(name, ipc=IPC, seed=seed)
    if isinstance(cfg.options, MatchConfig):  # a short budget keeps the demo to minutes
        cfg = apply_overrides(cfg, [f"iterations={20 if quick else ITERATIONS}", "batch_real=128",
                                    "checkpoint_every=0"])
    s = distill(cfg, data, show_progress=show_progress)
    save_set(s, Path(out) / f"{name}.pt")
    res = evaluate_set(s, data, ecfg, show_progress=show_progress)
    return _row(name, res, time.perf_counter() - t0), {"distill_config": to_dict(cfg), **res.to_dict()}


FULL = "full-LT-data"
NOT_IN_DEMO = ("lad",)  # trajectory matching trains experts first: its own example is in docs/lad.md


def _eval_config(quick: bool, seed: int) -> EvalConfig:
    return EvalConfig(epochs=50 if quick else 300, runs=2 if quick else 3, seed=seed)


def run_demo(out: str | Path = "demo_out", quick: bool = False, show_progress: bool = True,
             seed: int = 0, workers: int | None = None) -> list[dict]:
    """Every method's row, run in ``workers`` processes (default: one per core, at most
    2; each with one thread, which on these tiny images is faster than one process using
    both cores). Results depend on the seed only, not on the worker count: every
    process computes with one thread."""
    import os

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    workers = workers or max(1, min(2, os.cpu_count() or 1))
    data = load_lt_data("digits", imbalance=IMBALANCE)
    ecfg = _eval_config(quick, seed)
    print(f"digits-LT IF {IMBALANCE}: class counts {data.class_counts} ({len(data.train)} train, "
          f"{len(data.test)} balanced test images); IPC {IPC}; eval {ecfg.net}, {ecfg.epochs} epochs, "
          f"{ecfg.runs} runs; {workers} worker process(es)", flush=True)
    names = [*[m for m in list_methods() if m not in NOT_IN_DEMO], FULL]
    done: dict[str, tuple[dict, dict]] = {}
    if workers == 1:
        for m in names:
            done[m] = _job(m, str(out), quick, seed, 1, show_progress)
            _say(done[m][0])
    else:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor, as_completed

        with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
            futures = {pool.submit(_job, m, str(out), quick, seed, 1, False): m for m in names}
            for f in as_completed(futures):
                done[futures[f]] = f.result()
                _say(done[futures[f]][0])
    rows = [done[m][0] for m in names]
    results = {m: done[m][1] for m in names}
    table = format_table(rows)
    print()
    print(table)
    (out / "results.json").write_text(json.dumps({"dataset": data.split_record(), "ipc": IPC,
                                                   "eval": to_dict(ecfg), "results": results}, indent=2))
    (out / "results.txt").write_text(table + "\n")
    print(f"\nwrote sets, PNG grids and results to {out}/")
    return rows


def _say(row: dict) -> None:
    print(f"  {row['method']}: {row['acc_mean']:.2f} ± {row['acc_std']:.2f} % ({row['seconds']:.0f} s)", flush=True)
