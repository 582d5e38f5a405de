"""Accuracy benchmark: a resumable grid of distil-then-evaluate cells.

Each finished cell appends one JSON line to ``bench/results/accuracy.jsonl``;
cells already there (same dataset, imbalance, IPC, method, labels, pipeline,
eval profile, net and protocol) are skipped, so an interrupted grid resumes.
Distilled sets are kept under ``bench/sets/`` (not committed) so that the
cross-architecture cells reuse them.

Protocol ``cpu-v1`` (fixed; a changed protocol gets a new name): CIFAR-10-LT,
IPC 10; distillation 1000 iterations with batch_real 64 (pipeline ``dm``,
SPEC §4); evaluation ConvNet-3 (or the cell's net), 300 epochs, 3 runs, final
epoch; everything else the paper protocol (SPEC §7).

    python bench/accuracy.py --data-root ../shared/datasets/cifar10 --grid if100-core
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

import ltdistill as ld
from ltdistill.config import apply_overrides
from ltdistill.methods.matching import MatchConfig

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "accuracy.jsonl"
SETS = HERE / "sets"

PROTOCOLS = {
    "cpu-v1": {"ipc": 10, "iterations": 1000, "batch_real": 64, "eval_epochs": 300, "runs": 3},
}
# Method settings used by the benchmark (beyond the library defaults). Untuned
# until the validation search of the benchmark issue has run; recorded per cell.
METHOD_OVERRIDES = {
    "csdm": ["lr_img=10"],
    "sdd": ["lr_img=10"],
    "mmd": ["lr_img=10"],
    "ncfm": ["lr_img=10"],
}
GRIDS = {
    "if100-core": [(100, m, "convnet") for m in ("random", "dm", "csdm")],
    "core": [(imb, m, "convnet") for imb in (100, 10, 200, 50) for m in ("random", "dm", "csdm", "mmd", "ncfm")],
    "cross-arch": [(100, m, net) for m in ("random", "dm", "csdm") for net in ("resnet18", "vgg11", "alexnet")],
}
KEY_FIELDS = ("dataset", "imbalance", "ipc", "method", "labels", "pipeline", "eval_profile", "net", "protocol")


def commit() -> str:
    """HEAD when this process started, plus '+dirty' when the working tree differs from it."""
    try:
        head = subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, text=True).strip()
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", "src", "bench"], cwd=HERE).returncode != 0
        return head + ("+dirty" if dirty else "")
    except Exception:  # noqa: BLE001
        return "unknown"


COMMIT = commit()  # taken once at start: the code this process actually runs


def done_keys() -> set[tuple]:
    if not RESULTS.is_file():
        return set()
    return {tuple(json.loads(line)[k] for k in KEY_FIELDS) for line in RESULTS.read_text().splitlines() if line}


def run_cell(imb: float, method: str, net: str, proto_name: str, data_root: str, seed: int) -> dict:
    proto = PROTOCOLS[proto_name]
    data = ld.load_lt_data("cifar10", data_root, imbalance=imb)
    ecfg = ld.EvalConfig(net=net, epochs=proto["eval_epochs"], runs=proto["runs"], seed=seed)
    t0 = time.perf_counter()
    if method == "full":
        distill_s, cfg_used = 0.0, {}
        res = ld.evaluate_full(data, ecfg)
    else:
        set_path = SETS / f"{proto_name}-cifar10-if{imb:g}-ipc{proto['ipc']}-{method}-s{seed}.pt"
        cfg = ld.make_config(method, ipc=proto["ipc"], seed=seed)
        cfg = apply_overrides(cfg, [f"data.imbalance={imb}", "data.dataset=cifar10", f"data.data_root={data_root}"])
        if isinstance(cfg.options, MatchConfig):
            cfg = apply_overrides(cfg, [f"iterations={proto['iterations']}", f"batch_real={proto['batch_real']}",
                                        *METHOD_OVERRIDES.get(method, [])])
        if set_path.is_file():
            s = ld.load_set(set_path)
            distill_s = float(s.extra.get("distill_seconds", 0.0))
        else:
            s = ld.distill(cfg, data, run_prefix=str(set_path.with_suffix("")))
            distill_s = time.perf_counter() - t0
            ld.save_set(s, set_path)
        cfg_used = s.config
        t0 = time.perf_counter()
        res = ld.evaluate_set(s, data, ecfg)
    eval_s = time.perf_counter() - t0
    return {
        "dataset": "cifar10", "imbalance": imb, "ipc": proto["ipc"], "method": method, "labels": "hard",
        "pipeline": "dm", "eval_profile": "dm", "net": net,
        "iterations": proto["iterations"] if method not in ("random", "full") else 0,
        "batch_real": proto["batch_real"] if method not in ("random", "full") else 0,
        "eval_epochs": proto["eval_epochs"], "runs": proto["runs"],
        "acc_mean": res.acc_mean, "acc_std": res.acc_std, "per_class": res.per_class_mean,
        "head": res.groups["head"], "medium": res.groups["medium"], "tail": res.groups["tail"],
        "distill_seconds": round(distill_s, 1), "eval_seconds": round(eval_s, 1), "seed": seed,
        "commit": COMMIT, "date": dt.date.today().isoformat(), "protocol": proto_name,
        "run_accs": [r.acc for r in res.runs], "method_config": cfg_used, "torch": torch.__version__,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", required=True)
    p.add_argument("--grid", action="append", choices=sorted(GRIDS), required=True)
    p.add_argument("--protocol", default="cpu-v1", choices=sorted(PROTOCOLS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--full-reference", action="store_true", help="also the whole-LT-dataset row per IF")
    args = p.parse_args(argv)
    cells = [c for g in args.grid for c in GRIDS[g]]
    if args.full_reference:
        cells += [(imb, "full", "convnet") for imb in sorted({c[0] for c in cells})]
    SETS.mkdir(parents=True, exist_ok=True)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    for imb, method, net in cells:
        key = ("cifar10", imb, PROTOCOLS[args.protocol]["ipc"], method, "hard", "dm", "dm", net, args.protocol)
        if key in done_keys():
            print(f"skip (done): {key}", flush=True)
            continue
        print(f"cell: IF {imb} {method} {net} ...", flush=True)
        rec = run_cell(imb, method, net, args.protocol, args.data_root, args.seed)
        with open(RESULTS, "a") as f:
            f.write(json.dumps(rec) + "\n")
        print(f"  {rec['acc_mean']:.2f} ± {rec['acc_std']:.2f}  head {rec['head']:.1f} medium {rec['medium']:.1f} "
              f"tail {rec['tail']:.1f}  (distill {rec['distill_seconds']}s, eval {rec['eval_seconds']}s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
