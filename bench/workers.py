"""Throughput: one worker on every core, or one single-threaded worker per core?

The benchmark grids are long CPU jobs, and ``bench/accuracy.py`` can run several workers
at once (they claim cells with lock files). Whether that pays depends on how well one
process uses both cores. This measures the steady-state cost of the two units of work the
grids are made of, under the cpu-v1 protocol's settings:

- ``eval``: training ConvNet-3 on an IPC-10 set (one 100-image step per epoch, DSA,
  compile auto), one run;
- ``distill``: dm iterations at batch_real 64 (CIFAR-10-LT IF 100).

Configurations: ``1x<cores>`` (one process, ``threads`` = all cores) and ``<cores>x1``
(one single-threaded process per core, started together, each doing the same work).
Each process times its unit twice, at a small and a large size, and reports the
difference per epoch / iteration (what a long run pays, without start-up and
compilation). The figure is the throughput ratio: work per second of all processes in
``<cores>x1`` over ``1x<cores>`` (> 1: more workers with fewer threads win).

Writes ``bench/results/workers.json`` (records with the machine, commit and date).

    python bench/workers.py --data-root ../shared/datasets/cifar10
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "results" / "workers.json"
SIZES = {"eval": (10, 40), "distill": (4, 16)}


def unit(kind: str, data_root: str, threads: int) -> dict:
    """One process's measurement: seconds per epoch (eval) or per iteration (distill)."""
    import torch

    import ltdistill as ld
    from ltdistill.config import apply_overrides
    from ltdistill.evaluate import evaluate_tensors

    torch.set_num_threads(threads)
    data = ld.load_lt_data("cifar10", data_root, imbalance=100)
    small, large = SIZES[kind]
    if kind == "eval":
        x, y = ld.distill(ld.make_config("random", ipc=10, seed=0), data).training_tensors()

        def run(n: int) -> float:
            t0 = time.perf_counter()
            evaluate_tensors(x, y, data, ld.EvalConfig(epochs=n, runs=1, threads=threads))
            return time.perf_counter() - t0
    else:
        def run(n: int) -> float:
            cfg = apply_overrides(ld.make_config("dm", ipc=10, seed=0),
                                  ["batch_real=64", "checkpoint_every=0", f"iterations={n}", f"threads={threads}"])
            t0 = time.perf_counter()
            ld.distill(cfg, data)
            return time.perf_counter() - t0

    run(2)  # warm-up: compilation, caches
    t_small, t_large = run(small), run(large)
    return {"seconds_per_unit": (t_large - t_small) / (large - small), "threads": torch.get_num_threads()}


def config(kind: str, data_root: str, procs: int, threads: int) -> list[dict]:
    """Start ``procs`` processes of ``threads`` threads together; their measurements."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    ps = [subprocess.Popen([sys.executable, __file__, "--one", kind, "--threads", str(threads),
                            "--data-root", data_root], stdout=subprocess.PIPE, text=True, env=env)
          for _ in range(procs)]
    out = []
    for p in ps:
        so, _ = p.communicate()
        if p.returncode != 0:
            raise SystemExit(f"a {kind} worker failed (exit {p.returncode})")
        out.append(json.loads(so.strip().splitlines()[-1]))
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", required=True)
    p.add_argument("--kinds", default="eval,distill")
    p.add_argument("--one", help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one:
        print(json.dumps(unit(args.one, args.data_root, args.threads)), flush=True)
        return
    sys.path.insert(0, str(HERE))
    from accuracy import COMMIT
    from ltdistill.utils import machine

    cores = os.cpu_count() or 1
    records = []
    for kind in args.kinds.split(","):
        one = config(kind, args.data_root, 1, cores)[0]["seconds_per_unit"]
        many = [r["seconds_per_unit"] for r in config(kind, args.data_root, cores, 1)]
        ratio = sum(1 / s for s in many) / (1 / one)
        rec = {"kind": kind, "unit": "epoch" if kind == "eval" else "iteration",
               f"one_process_{cores}_threads_s": round(one, 4),
               f"{cores}_processes_1_thread_s": [round(s, 4) for s in many],
               "throughput_ratio_many_over_one": round(ratio, 3)}
        print(json.dumps(rec), flush=True)
        records.append(rec)
    OUT.write_text(json.dumps({"protocol": {"eval": "ConvNet-3, IPC 10, 1 run, DSA, compile auto",
                                            "distill": "dm, IF 100, IPC 10, batch_real 64",
                                            "sizes": SIZES},
                               "records": records, "machine": machine(), "commit": COMMIT,
                               "date": dt.date.today().isoformat()}, indent=1) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
