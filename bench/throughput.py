"""Speed: distillation throughput per path and the evaluation protocol's wall time.

Distillation, at paper scale (CIFAR-10-LT IF 100, IPC 10, batch_real 256, 10
classes, M = 4096). Each (method, path) runs in its own subprocess (so peak RSS is
its own): ``warmup`` iterations (they also pay any compilation), then ``iters``
timed iterations. Paths:

- ``straightforward``: one eager forward per class, NCHW, fp32 (the DM reference structure);
- ``compiled``: the same per-class structure with the trunk compiled (``torch.compile``);
- ``fast``: one forward for all classes, channels-last, compiled (``fast=true``);
- ``fast-eager``: the one-forward path without compilation;
- ``fast-bf16``: ``fast`` with bfloat16 autocast.

Evaluation: the paper protocol (ConvNet-3, 1000 epochs, 5 runs, IPC 10: one
100-image step per epoch), eager and compiled: whole 5-run evaluations at
``eval_epochs``/2 and ``eval_epochs`` epochs, extrapolated along that line to 1000
epochs (time is affine in the epoch count) and marked so.

Writes ``bench/results/throughput.json``: ``records`` (distillation) and
``eval_protocol`` (evaluation).

    python bench/throughput.py --data-root ../shared/datasets/cifar10 --methods dm,csdm,ncfm
    python bench/throughput.py --data-root ../shared/datasets/cifar10 --eval-only
    python bench/throughput.py --data-root ../shared/datasets/cifar10 --against 0983103 --methods dm,csdm --paths compiled

``--against REV`` times this checkout's code and REV's (a temporary git worktree, run with the
same harness) in one run, alternating old and new subprocesses ``--repeats`` times and keeping
each one's fastest: the ratio is the loop change's effect on CPU speed. It is written under
``against`` in the JSON, leaving the other records as they were.
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
    "straightforward": ["fast=false", "channels_last=false", "bf16=false", "compile=off"],
    "compiled": ["fast=false", "channels_last=false", "bf16=false", "compile=on"],
    "fast": ["fast=true", "channels_last=true", "bf16=false", "compile=on"],
    "fast-eager": ["fast=true", "channels_last=true", "bf16=false", "compile=off"],
    "fast-bf16": ["fast=true", "channels_last=true", "bf16=true", "compile=on"],
}


def peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


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
    t0 = time.perf_counter()
    ld.distill(cfg, data)
    warm = time.perf_counter() - t0
    cfg = apply_overrides(cfg, [f"iterations={iters}"])
    t0 = time.perf_counter()
    ld.distill(cfg, data)
    s = (time.perf_counter() - t0) / iters
    rec = {"method": method, "path": path, "s_per_iter": round(s, 4), "real_img_per_s": round(real / s, 1),
           "real_per_iter": real, "peak_rss_mb": peak_rss_mb(), "warmup_seconds": round(warm, 1),
           "threads": torch.get_num_threads(), "iters": iters}
    if torch.cuda.is_available():
        rec["cuda_max_allocated_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return rec


def one_eval(path: str, data_root: str, epochs: int) -> dict:
    """The protocol's wall time: ``evaluate_tensors`` (5 runs, tests included) at two epoch counts.

    Every epoch is the same 100-image step, so the time is affine in the epoch count:
    T(E) = fixed + E * per_epoch. A 2-epoch, 2-run warm-up pays the compilation first
    (training and test shapes, a second net); then
    E1 = ``epochs`` // 2 and E2 = ``epochs`` epochs are timed and the line through them
    is extrapolated to 1000 epochs (the warm-up time is added once). Measuring whole
    evaluations (not a single net's steps) includes every per-run cost: net creation,
    re-tracing, the test passes.
    """
    import torch

    import ltdistill as ld
    from ltdistill.evaluate import evaluate_tensors

    data = ld.load_lt_data("cifar10", data_root, imbalance=100)
    s = ld.distill(ld.make_config("random", ipc=10, seed=0), data)  # the step costs the same for any IPC-10 set
    x, y = s.training_tensors()
    mode = "on" if path.startswith("compiled") else "off"
    bf16 = path.endswith("bf16")

    def timed(ep: int, runs: int) -> float:
        t0 = time.perf_counter()
        evaluate_tensors(x, y, data, ld.EvalConfig(epochs=ep, runs=runs, compile=mode, bf16=bf16))
        return time.perf_counter() - t0

    warm = timed(2, 2)  # train, test, train again: every graph (both shapes) compiled before timing
    e1, e2 = epochs // 2, epochs
    t1, t2 = timed(e1, 5), timed(e2, 5)
    per_epoch = (t2 - t1) / (e2 - e1) / 5  # one run's epoch
    fixed = t1 - 5 * e1 * per_epoch  # 5 runs' tests, net set-up, re-tracing
    protocol = fixed + 5 * 1000 * per_epoch + warm
    return {"path": path, "protocol": "ConvNet-3, 1000 epochs x 5 runs, IPC 10, batch 256, DSA",
            "measured_epochs": [e1, e2], "measured_seconds": [round(t1, 2), round(t2, 2)],
            "seconds_per_epoch": round(per_epoch, 4), "fixed_seconds_5_runs": round(fixed, 2),
            "compile_and_warmup_seconds": round(warm, 1), "eval_protocol_seconds": round(protocol, 1),
            "extrapolated": True, "train_img_per_s": round(len(x) / per_epoch, 1), "peak_rss_mb": peak_rss_mb(),
            "threads": torch.get_num_threads()}


def _sub(args: list[str], src: str | None = None) -> dict:
    env = None
    if src is not None:  # another checkout's library, same harness
        import os

        env = {**os.environ, "PYTHONPATH": src}
    out = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise SystemExit(f"benchmark subprocess {args} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", required=True)
    p.add_argument("--methods", default="dm,mmd,sdd,csdm,ncfm")
    p.add_argument("--paths", default=",".join(PATHS))
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--batch-real", type=int, default=256)
    p.add_argument("--eval-epochs", type=int, default=60)
    p.add_argument("--eval-paths", default="eager,compiled,compiled-bf16")
    p.add_argument("--eval-only", action="store_true", help="only the evaluation protocol timing")
    p.add_argument("--no-eval", action="store_true", help="skip the evaluation protocol timing")
    p.add_argument("--one", nargs=2, metavar=("METHOD", "PATH"), help=argparse.SUPPRESS)
    p.add_argument("--one-eval", metavar="PATH", help=argparse.SUPPRESS)
    p.add_argument("--against", metavar="REV", help="time this code against commit REV in the same run")
    p.add_argument("--repeats", type=int, default=3, help="with --against: old/new alternations (fastest kept)")
    a = p.parse_args(argv)
    if a.one:
        print(json.dumps(one(*a.one, a.data_root, a.iters, a.warmup, a.batch_real)))
        return 0
    if a.one_eval:
        print(json.dumps(one_eval(a.one_eval, a.data_root, a.eval_epochs)))
        return 0
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True,
                            text=True).stdout.strip()
    stamp = {"commit": commit, "date": dt.date.today().isoformat()}
    previous = json.loads(OUT.read_text()) if OUT.is_file() else {}
    if a.against:
        return against(a, commit, previous)
    records = previous.get("records", [])
    if not a.eval_only:
        records = []
        for m in a.methods.split(","):
            for path in a.paths.split(","):
                rec = {**_sub(["--data-root", a.data_root, "--iters", str(a.iters), "--warmup", str(a.warmup),
                               "--batch-real", str(a.batch_real), "--one", m, path]), **stamp}
                records.append(rec)
                print(json.dumps(rec), flush=True)
            ref = next((r for r in records if r["method"] == m and r["path"] == "straightforward"), None)
            for r in records:
                if r["method"] == m and ref:
                    r["speedup_vs_straightforward"] = round(ref["s_per_iter"] / r["s_per_iter"], 3)
    evals = previous.get("eval_protocol", [])
    if not a.no_eval:
        keep = set(a.eval_paths.split(","))
        evals = [r for r in evals if r["path"] not in keep]
        for path in a.eval_paths.split(","):
            rec = {**_sub(["--data-root", a.data_root, "--eval-epochs", str(a.eval_epochs), "--one-eval", path]),
                   **stamp}
            evals.append(rec)
            print(json.dumps(rec), flush=True)
        for r in evals:
            eager = next((e for e in evals if e["path"] == "eager"), None)
            if eager is not None:
                r["speedup_vs_eager"] = round(eager["eval_protocol_seconds"] / r["eval_protocol_seconds"], 3)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    proto = {"dataset": "cifar10", "imbalance": 100, "ipc": 10, "batch_real": a.batch_real, "num_freqs": 4096,
             "iters": a.iters, "warmup": a.warmup, "seed": 0}
    OUT.write_text(json.dumps({"protocol": previous.get("protocol", proto) if a.eval_only else proto,
                               "records": records, "eval_protocol": evals}, indent=2) + "\n")
    print(f"wrote {OUT}")
    return 0


def against(a: argparse.Namespace, commit: str, previous: dict) -> int:
    """This code vs commit ``a.against``, alternating subprocesses; fastest of ``a.repeats`` each."""
    import tempfile

    repo = HERE.parent
    dirty = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", "src"], cwd=repo).returncode != 0
    with tempfile.TemporaryDirectory(prefix="ltdistill-against-") as tmp:
        wt = Path(tmp) / "old"
        subprocess.run(["git", "worktree", "add", "-q", "--detach", str(wt), a.against], cwd=repo, check=True)
        try:
            rows = []
            for m in a.methods.split(","):
                for path in a.paths.split(","):
                    args = ["--data-root", a.data_root, "--iters", str(a.iters), "--warmup", str(a.warmup),
                            "--batch-real", str(a.batch_real), "--one", m, path]
                    old, new = [], []
                    for _ in range(a.repeats):
                        old.append(_sub(args, str(wt / "src"))["s_per_iter"])
                        new.append(_sub(args, str(repo / "src"))["s_per_iter"])
                    row = {"method": m, "path": path, "old_s_per_iter": min(old), "new_s_per_iter": min(new),
                           "old_runs": old, "new_runs": new, "new_over_old": round(min(new) / min(old), 3)}
                    rows.append(row)
                    print(json.dumps(row), flush=True)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(wt)], cwd=repo)
    previous["against"] = {"old": a.against, "new": commit + ("+dirty" if dirty else ""),
                           "date": dt.date.today().isoformat(), "iters": a.iters, "warmup": a.warmup,
                           "batch_real": a.batch_real, "repeats": a.repeats, "records": rows,
                           "note": "s/iteration, fastest of the repeats, old and new alternating in one run"}
    OUT.write_text(json.dumps(previous, indent=2) + "\n")
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
