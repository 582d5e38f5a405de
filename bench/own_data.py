"""One real run on a user's own data: a naturally long-tailed ImageFolder at 64 px.

Builds ``DIR/train/<class>/*.png`` and ``DIR/test/<class>/*.png`` from the offline
CIFAR-10 copy: every image upsampled from 32 to 64 px (bicubic), the training classes with
the hand-picked counts ``COUNTS`` (a profile that is *not* SPEC §1's exponential rule:
steps of a camera-trap-like archive), the test split balanced (``TEST_PER_CLASS`` per
class). Then runs the CLI as a user would — ``info``, ``distill`` with random, dm and csdm,
``evaluate`` — with the imagefolder defaults (no imposed split, mean/std from the data,
ConvNet depth 4 at 64 px) and writes ``bench/results/own_data.json`` (the commands, the
class counts, every result, seconds, commit).

    python bench/own_data.py --data-root ../shared/datasets/cifar10 --folder /tmp/cifar10-own64
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
OUT = HERE / "results" / "own_data.json"
COUNTS = [1500, 1500, 900, 600, 400, 250, 250, 120, 60, 30]  # IF 50, plateaus and steps: not the exponential rule
TEST_PER_CLASS = 200
SIZE = 64
# A budget for 64 px on 2 CPU cores: a ConvNet-4 pass at 64 px costs ~4x one at 32 px, so the
# CPU benchmark's budget (1000 iterations, 300 epochs x 3 runs) would take hours per set here.
# (bfloat16 autocast is no way out on this CPU: an eager bf16 training epoch at 64 px measured
# 12x slower than fp32.)
DISTILL = ["--ipc", "10", "-s", "iterations=60", "-s", "batch_real=32", "-s", "fast=true"]
EVAL = ["--epochs", "50", "--runs", "2"]


def build(cifar_root: str, folder: Path) -> list[int]:
    """Write the folder (skipped when it is complete) and return the training counts."""
    from PIL import Image

    import ltdistill as ld

    done = folder / "DONE"
    if done.is_file():
        return json.loads(done.read_text())["counts"]
    full = ld.load_lt_data("cifar10", cifar_root, imbalance=1)
    rng = np.random.RandomState(0)
    for split, images, labels, per in (("train", full.train.images, full.train.labels, COUNTS),
                                       ("test", full.test.images, full.test.labels, [TEST_PER_CLASS] * 10)):
        for c, name in enumerate(full.class_names):
            d = folder / split / name
            d.mkdir(parents=True, exist_ok=True)
            idx = np.flatnonzero(labels.numpy() == c)
            pick = np.sort(rng.choice(len(idx), per[c], replace=False))
            for k, i in enumerate(idx[pick]):
                a = images[i].permute(1, 2, 0).numpy()
                Image.fromarray(a).resize((SIZE, SIZE), Image.BICUBIC).save(d / f"{k:05d}.png")
    done.write_text(json.dumps({"counts": COUNTS}))
    return COUNTS


def sh(args: list[str], log: list) -> str:
    t0 = time.perf_counter()
    r = subprocess.run(args, capture_output=True, text=True)
    log.append({"command": " ".join(args), "seconds": round(time.perf_counter() - t0, 1), "rc": r.returncode})
    if r.returncode != 0:
        sys.stderr.write(r.stdout[-3000:] + r.stderr[-3000:])
        raise SystemExit(f"failed: {' '.join(args)}")
    return r.stdout


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", required=True, help="the CIFAR-10 copy to build the folder from")
    p.add_argument("--folder", default="/tmp/cifar10-own64", help="where the ImageFolder is written")
    p.add_argument("--work", default="/tmp/own64-runs", help="sets and results of the runs")
    p.add_argument("--methods", default="random,dm,csdm")
    a = p.parse_args(argv)
    folder, work = Path(a.folder), Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    counts = build(a.data_root, folder)
    build_s = time.perf_counter() - t0
    exe = [sys.executable, "-m", "ltdistill"]
    log: list = []
    info = sh([*exe, "info", "--dataset", "imagefolder", "--data-root", str(folder), "--plot",
               str(work / "class_counts.png")], log)
    results = {}
    for m in a.methods.split(","):
        out = work / f"{m}.pt"
        extra = DISTILL if m not in ("random", "kcenter", "herding") else ["--ipc", "10"]
        sh([*exe, "distill", "--dataset", "imagefolder", "--data-root", str(folder), "--method", m, *extra,
            "--seed", "0", "--out", str(out), "--quiet"], log)
        sh([*exe, "evaluate", str(out), *EVAL, "--json", str(work / f"{m}.json"), "--quiet"], log)
        r = json.loads((work / f"{m}.json").read_text())
        results[m] = {k: r[k] for k in ("acc_mean", "acc_std", "groups", "groups_std", "per_class", "group_classes")}
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True,
                            text=True).stdout.strip()
    rec = {"what": "CIFAR-10 upsampled to 64 px as a naturally long-tailed ImageFolder (imagefolder defaults: "
                   "no imposed split, mean/std from the data, ConvNet depth 4)",
           "counts": counts, "test_per_class": TEST_PER_CLASS, "image_size": SIZE, "build_seconds": round(build_s, 1),
           "info": info, "commands": log, "results": results, "commit": commit, "date": dt.date.today().isoformat()}
    Path(OUT).write_text(json.dumps(rec, indent=2) + "\n")
    for m, r in results.items():
        print(f"{m:8s} {r['acc_mean']:.2f} ± {r['acc_std']:.2f}  " +
              "  ".join(f"{g} {v:.1f}" for g, v in r["groups"].items()))
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
