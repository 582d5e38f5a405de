"""Honest tuning: choose a method's settings on a validation split carved from the
long-tailed *training* set, never on the test set.

Protocol ``tune-v1``: CIFAR-10-LT IF 100, 20 % of every class held out
(:func:`ltdistill.data.holdout_validation`, seed 0); the method distils IPC 10 from
the remaining 80 % (500 iterations, batch_real 64); a ConvNet-3 is trained on the
set (150 epochs, 2 runs, otherwise the evaluation protocol) and scored by its
*class-balanced* validation accuracy (mean of per-class accuracies: the
validation split is long-tailed, the test split is not). The search is
coordinate-wise, one option at a time from the current best, in the order of
``SEARCH``; every trial appends one line to ``bench/results/tuning.jsonl`` and
finished trials are skipped, so the search resumes.

    python bench/tune.py --data-root ../shared/datasets/cifar10 --method csdm
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from pathlib import Path

import torch

import ltdistill as ld
from ltdistill.config import apply_overrides
from ltdistill.data import holdout_validation

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accuracy import COMMIT  # noqa: E402  (the commit this process runs, +dirty)

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "tuning.jsonl"

PROTOCOLS = {
    "tune-v1": {"imbalance": 100, "fraction": 0.2, "holdout_seed": 0, "ipc": 10, "iterations": 500,
                "batch_real": 64, "eval_epochs": 150, "runs": 2},
    "smoke": {"imbalance": 100, "fraction": 0.2, "holdout_seed": 0, "ipc": 2, "iterations": 2,
              "batch_real": 8, "eval_epochs": 1, "runs": 1},
}
# (option, candidate values) searched in this order; the start point is the first value of each.
SEARCH = {
    "csdm": [("lr_img", [10, 3, 30]), ("sigma", [1.0, 0.5, 2.0]),
             ("alpha_head,alpha_tail", [(0.9, 0.3), (0.7, 0.3), (0.9, 0.5), (0.6, 0.4)]),
             ("num_freqs", [1024, 4096])],
    "dm": [("lr_img", [1, 3, 10])],
    "mmd": [("lr_img", [10, 3, 30]), ("sigma", [1.0, 0.5, 2.0])],
}


def overrides_of(point: dict) -> list[str]:
    out = []
    for key, val in point.items():
        if "," in key:
            out += [f"{k}={v}" for k, v in zip(key.split(","), val)]
        else:
            out.append(f"{key}={val}")
    return out


def load_rows() -> list[dict]:
    return [json.loads(x) for x in RESULTS.read_text().splitlines() if x.strip()] if RESULTS.is_file() else []


def trial(method: str, point: dict, proto_name: str, data_root: str, seed: int) -> dict:
    proto = PROTOCOLS[proto_name]
    full = ld.load_lt_data("cifar10", data_root, imbalance=proto["imbalance"])
    data = holdout_validation(full, proto["fraction"], proto["holdout_seed"])
    cfg = ld.make_config(method, ipc=proto["ipc"], seed=seed)
    ovr = [f"iterations={proto['iterations']}", f"batch_real={proto['batch_real']}", *overrides_of(point)]
    cfg = apply_overrides(cfg, [f"data.imbalance={proto['imbalance']}", f"data.data_root={data_root}", *ovr])
    t0 = time.perf_counter()
    s = ld.distill(cfg, data)
    distill_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    res = ld.evaluate_set(s, data, ld.EvalConfig(epochs=proto["eval_epochs"], runs=proto["runs"], seed=seed))
    balanced = [sum(r.per_class) / len(r.per_class) for r in res.runs]
    return {
        "method": method, "point": {k: list(v) if isinstance(v, tuple) else v for k, v in point.items()},
        "overrides": ovr, "val_balanced_acc": sum(balanced) / len(balanced), "val_balanced_runs": balanced,
        "val_per_class": res.per_class_mean, "head": res.groups["head"], "medium": res.groups["medium"],
        "tail": res.groups["tail"], "distill_seconds": round(distill_s, 1),
        "eval_seconds": round(time.perf_counter() - t0, 1), "seed": seed, "protocol": proto_name,
        "protocol_spec": proto, "commit": COMMIT, "date": dt.date.today().isoformat(), "torch": torch.__version__,
    }


def point_key(method: str, proto_name: str, seed: int, point: dict) -> str:
    return json.dumps([method, proto_name, seed, overrides_of(point)])


def stored_scores(rows: list[dict]) -> dict[str, float]:
    """Validation score of every finished trial, by :func:`point_key`."""
    return {point_key(r["method"], r["protocol"], r["seed"],
                      {k: tuple(v) if isinstance(v, list) else v for k, v in r["point"].items()}):
            r["val_balanced_acc"] for r in rows}


def coordinate_search(method: str, score) -> dict:
    """The search of ``SEARCH[method]``: one option at a time from the current best,
    ties to the earlier (default) value. ``score(point)`` returns a float or None
    (trial not available); returns the best point, or None if a trial was None."""
    search = SEARCH[method]
    best = {key: vals[0] for key, vals in search}
    for key, vals in search:
        scored = []
        for i, v in enumerate(vals):
            s = score({**best, key: v})
            if s is None:
                return None
            scored.append((s, i, v))
        best[key] = max(scored, key=lambda t: (t[0], -t[1]))[2]
        print(f"best {key} = {best[key]} ({max(s for s, _, _ in scored):.2f})", flush=True)
    return best


def best_overrides(method: str, proto_name: str = "tune-v1", seed: int = 0, results: Path | None = None) -> list[str]:
    """The overrides the finished search chose for ``method`` (read from the stored
    trials, nothing is run). Raises ``SystemExit`` naming what is missing if the
    search has not finished."""
    if method not in SEARCH:
        raise SystemExit(f"no tuning search is defined for method {method!r} (searched: {sorted(SEARCH)})")
    rows = [json.loads(x) for x in (results or RESULTS).read_text().splitlines() if x.strip()] \
        if (results or RESULTS).is_file() else []
    done = stored_scores(rows)
    best = coordinate_search(method, lambda pt: done.get(point_key(method, proto_name, seed, pt)))
    if best is None:
        raise SystemExit(f"the {proto_name} search for {method!r} (seed {seed}) has not finished: run "
                         f"`python bench/tune.py --data-root ... --method {method}` first")
    return overrides_of(best)


def main(argv: list[str] | None = None) -> int:
    global RESULTS
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", required=True)
    p.add_argument("--method", required=True, choices=sorted(SEARCH))
    p.add_argument("--protocol", default="tune-v1", choices=sorted(PROTOCOLS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="results file (default bench/results/tuning.jsonl)")
    a = p.parse_args(argv)
    if a.out:
        RESULTS = Path(a.out)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)

    def score(point: dict) -> float:
        k = point_key(a.method, a.protocol, a.seed, point)
        done = stored_scores(load_rows())
        if k in done:
            return done[k]
        print(f"trial {a.method} {overrides_of(point)} ...", flush=True)
        rec = trial(a.method, point, a.protocol, a.data_root, a.seed)
        with open(RESULTS, "a") as f:
            f.write(json.dumps(rec) + "\n")
        print(f"  balanced val acc {rec['val_balanced_acc']:.2f} (tail {rec['tail']:.1f})", flush=True)
        return rec["val_balanced_acc"]

    best = coordinate_search(a.method, score)
    print(json.dumps({"method": a.method, "protocol": a.protocol, "best": overrides_of(best)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
