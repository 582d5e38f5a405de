"""``ltdistill demo``: every registered method end to end on the embedded digits data.

scikit-learn's 8x8 digits ship inside the package, so the demo needs no download.
It makes them long-tailed by the usual rule (IF 50: 124 ... 2 images per class),
distils IPC 5 with every registered method (iterative methods: 200 iterations,
batch_real 128), evaluates each set with the CPU protocol (ConvNet, 300 epochs,
3 runs; ``--quick``: 20 iterations, 50 epochs, 2 runs), adds the
whole-long-tailed-set reference, and prints one table.
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


def run_demo(out: str | Path = "demo_out", quick: bool = False, show_progress: bool = True,
             seed: int = 0) -> list[dict]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    data = load_lt_data("digits", imbalance=IMBALANCE)
    ecfg = EvalConfig(epochs=50 if quick else 300, runs=2 if quick else 3, seed=seed)
    iterations = 20 if quick else ITERATIONS
    print(f"digits-LT IF {IMBALANCE}: class counts {data.class_counts} ({len(data.train)} train, "
          f"{len(data.test)} balanced test images); IPC {IPC}; eval {ecfg.net}, {ecfg.epochs} epochs, "
          f"{ecfg.runs} runs", flush=True)
    rows, results = [], {}
    for m in list_methods():
        cfg = make_config(m, ipc=IPC, seed=seed)
        if isinstance(cfg.options, MatchConfig):  # a short budget keeps the demo to minutes
            cfg = apply_overrides(cfg, [f"iterations={iterations}", "batch_real=128", "checkpoint_every=0"])
        t0 = time.perf_counter()
        s = distill(cfg, data, show_progress=show_progress)
        save_set(s, out / f"{m}.pt")
        res = evaluate_set(s, data, ecfg, show_progress=show_progress)
        rows.append(_row(m, res, time.perf_counter() - t0))
        results[m] = {"distill_config": to_dict(cfg), **res.to_dict()}
        print(f"  {m}: {res.acc_mean:.2f} ± {res.acc_std:.2f} %", flush=True)
    t0 = time.perf_counter()
    res = evaluate_full(data, ecfg, show_progress=show_progress)
    rows.append(_row("full-LT-data", res, time.perf_counter() - t0))
    results["full-LT-data"] = res.to_dict()
    table = format_table(rows)
    print()
    print(table)
    (out / "results.json").write_text(json.dumps({"dataset": data.split_record(), "ipc": IPC,
                                                   "eval": to_dict(ecfg), "results": results}, indent=2))
    (out / "results.txt").write_text(table + "\n")
    print(f"\nwrote sets, PNG grids and results to {out}/")
    return rows
