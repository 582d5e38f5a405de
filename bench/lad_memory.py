"""Peak memory of LAD's unroll against the number of student steps N (issue 16).

CIFAR-10-LT IF 100, IPC 10, ConvNet-3, batch_syn 50, both Expert-Decoupling students, one
matching iteration per measurement, each in its own process on the CPU: the peak resident
memory of the iteration above the process's memory before it (``VmHWM`` after resetting it
through ``/proc/self/clear_refs``), for ``memory=bounded`` at N = 20 and N = 80 and, for
contrast, the textbook unroll (``memory=graph``) at N = 20. Experts: a small buffer (1 expert,
3 + 2 epochs) built first; the memory of one iteration does not depend on how good it is.

    python bench/lad_memory.py --data-root ../shared/datasets/cifar10
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "results" / "lad_memory.json"
EXPERTS = ["experts.num_experts=1", "experts.epochs=3", "experts.cls_epochs=2", "max_start_epoch=1",
           "expert_epochs=2"]


def _status(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024  # MiB
    return float("nan")


def one(data_root: str, expert_dir: str, steps: int, memory: str) -> dict:
    import torch

    import ltdistill as ld
    from ltdistill.config import apply_overrides

    torch.set_num_threads(2)
    data = ld.load_lt_data("cifar10", data_root, imbalance=100)
    base = [*EXPERTS, f"expert_dir={expert_dir}", "batch_syn=50", "checkpoint_every=0", "log_every=1"]
    cfg = apply_overrides(ld.make_config("lad", ipc=10, seed=0, device="cpu"), [*base, "iterations=0"])
    ld.distill(cfg, data)  # experts loaded, images initialised: everything but the iteration
    before = _status("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak to the current RSS
    cfg = apply_overrides(cfg, ["iterations=1", f"syn_steps={steps}", f"memory={memory}"])
    t0 = time.perf_counter()
    ld.distill(cfg, data)
    seconds = time.perf_counter() - t0
    peak = _status("VmHWM")
    return {"syn_steps": steps, "memory": memory, "rss_before_mib": round(before, 1), "peak_mib": round(peak, 1),
            "iteration_peak_above_before_mib": round(peak - before, 1), "seconds_one_iteration": round(seconds, 1)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", required=True)
    p.add_argument("--one", nargs=3, metavar=("EXPERT_DIR", "STEPS", "MEMORY"), help=argparse.SUPPRESS)
    p.add_argument("--out", default=str(OUT))
    a = p.parse_args(argv)
    if a.one:
        print(json.dumps(one(a.data_root, a.one[0], int(a.one[1]), a.one[2])))
        return 0
    import ltdistill as ld
    from ltdistill.config import apply_overrides

    sys.path.insert(0, str(HERE))
    from scaling import commit

    records = []
    with tempfile.TemporaryDirectory() as tmp:
        data = ld.load_lt_data("cifar10", a.data_root, imbalance=100)
        cfg = apply_overrides(ld.make_config("lad", ipc=10, seed=0, device="cpu"),
                              [*EXPERTS, f"expert_dir={tmp}", "iterations=0"])
        ld.distill(cfg, data)  # builds the small buffer
        for steps, memory in ((20, "bounded"), (80, "bounded"), (20, "graph")):
            r = subprocess.run([sys.executable, __file__, "--data-root", a.data_root, "--one", tmp, str(steps), memory],
                               capture_output=True, text=True)
            if r.returncode != 0:
                raise SystemExit(r.stderr[-3000:])
            rec = json.loads(r.stdout.strip().splitlines()[-1])
            print(json.dumps(rec), flush=True)
            records.append(rec)
    by = {(r["syn_steps"], r["memory"]): r["iteration_peak_above_before_mib"] for r in records}
    doc = {"protocol": "lad-memory-v1", "commit": commit(), "seed": 0,
           "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
           "setup": "CIFAR-10-LT IF 100, IPC 10, ConvNet-3, batch_syn 50, ED (two students), CPU, 2 threads",
           "records": records,
           "bounded_80_over_20": round(by[(80, "bounded")] / max(by[(20, "bounded")], 1e-9), 2)}
    Path(a.out).write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
