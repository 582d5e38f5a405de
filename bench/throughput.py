"""Distillation throughput: straightforward vs fast path, per DM-family method, at paper scale.

Paper scale: CIFAR-10-LT IF 100, IPC 10, batch_real 256, 10 classes. Each (method,
path) runs in its own subprocess (so peak RSS is its own): ``warmup`` iterations,
then ``iters`` timed iterations. Paths: ``straightforward`` (one eager forward per
class, NCHW, fp32: the DM reference structure), ``fast`` (one forward for all
classes, channels-last, no autograd for real features; the default) and
``fast-bf16`` (the same with bfloat16 autocast). Writes
``bench/results/throughput.json``.

    python bench/throughput.py --data-root ../shared/datasets/cifar10
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "results" / "throughput.json"
PATHS = {
    "straightforward": ["fast=false", "channels_last=false", "bf16=false"],
    "fast": ["fast=true", "channels_last=true", "bf16=false"],
    "fast-bf16": ["fast=true", "channels_last=true", "bf16=true"],
}


def one(method: str, path: str, data_root: str, iters: int, warmup: int, batch_real: int) -> dict:
    import torch

    import ltdistill as ld
    from ltdistill.config import apply_overrides

    data = ld.load_lt_data("cifar10", data_root, imbalance=100)
    base = ["device=auto", f"batch_real={batch_real}", "checkpoint_every=0", *PATHS[path]]
    if method != "dm":
        base.append("num_freqs=4096")
    real = sum(min(batch_real, n) for n in data.class_counts)
    cfg = apply_overrides(ld.make_config(method, ipc=10, seed=0), base + [f"iterations={warmup}"])
    ld.distill(cfg, data)
    cfg = apply_overrides(cfg, [f"iterations={iters}"])
    t0 = time.perf_counter()
    ld.distill(cfg, data)
    s = (time.perf_counter() - t0) / iters
    rec = {"method": method, "path": path, "s_per_iter": round(s, 4), "real_img_per_s": round(real / s, 1),
           "real_per_iter": real, "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
           "threads": torch.get_num_threads(), "iters": iters}
    if torch.cuda.is_available():
        rec["cuda_max_allocated_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return rec


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", required=True)
    p.add_argument("--methods", default="dm,mmd,sdd,csdm,ncfm")
    p.add_argument("--paths", default=",".join(PATHS))
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--batch-real", type=int, default=256)
    p.add_argument("--one", nargs=2, metavar=("METHOD", "PATH"), help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.one:
        print(json.dumps(one(*a.one, a.data_root, a.iters, a.warmup, a.batch_real)))
        return 0
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True,
                            text=True).stdout.strip()
    records = []
    for m in a.methods.split(","):
        for path in a.paths.split(","):
            out = subprocess.run([sys.executable, __file__, "--data-root", a.data_root, "--iters", str(a.iters),
                                  "--warmup", str(a.warmup), "--batch-real", str(a.batch_real), "--one", m, path],
                                 capture_output=True, text=True, check=True)
            rec = json.loads(out.stdout.strip().splitlines()[-1])
            rec.update(commit=commit, date=dt.date.today().isoformat())
            records.append(rec)
            print(json.dumps(rec), flush=True)
        ref = next(r for r in records if r["method"] == m and r["path"] == "straightforward")
        for r in records:
            if r["method"] == m:
                r["speedup_vs_straightforward"] = round(ref["s_per_iter"] / r["s_per_iter"], 3)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"protocol": {"dataset": "cifar10", "imbalance": 100, "ipc": 10,
                                            "batch_real": a.batch_real, "num_freqs": 4096, "iters": a.iters,
                                            "warmup": a.warmup, "seed": 0}, "records": records}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
