"""The complexity claim (SPEC §3): the SDD/CSDM loss is linear in the number of
real samples N, closed-form kernel MMD² is quadratic.

Times one loss evaluation plus its gradient with respect to the synthetic
features, for N real features against m synthetic ones (d-dimensional, the
ConvNet-3 embedding size), in one process, and writes
``bench/results/complexity.json`` and ``complexity.png``.

    python bench/complexity.py                 # N = 1k ... 32k, M = 4096, d = 2048
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

from ltdistill.discrepancy import csdm_class_loss, kernel_mmd2, sample_frequencies, sdd

HERE = Path(__file__).resolve().parent
RES = HERE / "results"


def timed(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ns", default="1000,2000,4000,8000,16000,32000")
    p.add_argument("--dim", type=int, default=2048)
    p.add_argument("--syn", type=int, default=10, help="synthetic samples m (IPC)")
    p.add_argument("--freqs", type=int, default=4096)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(RES / "complexity.json"))
    a = p.parse_args(argv)
    g = torch.Generator().manual_seed(a.seed)
    d, sigma = a.dim, float(a.dim) ** 0.5  # features of norm ~ sqrt(d): sigma on that scale
    w = sample_frequencies(a.freqs, d, sigma, "rbf", g)
    y0 = torch.randn(a.syn, d, generator=g)
    records = []
    for n in [int(v) for v in a.ns.split(",")]:
        x = torch.randn(n, d, generator=g)
        losses = {
            "sdd": lambda y, x=x: sdd(x, y, w),
            "csdm": lambda y, x=x: csdm_class_loss(x, y, w, 0.7),
            "mmd_closed_form": lambda y, x=x: kernel_mmd2(x, y, sigma, "rbf"),
        }
        for name, loss_fn in losses.items():
            def step(loss_fn=loss_fn):
                y = y0.clone().requires_grad_(True)
                loss_fn(y).backward()

            step()  # warm-up
            s = timed(step, a.repeats)
            records.append({"loss": name, "n_real": n, "seconds": round(s, 5)})
            print(f"N={n:6d} {name:16s} {s:8.4f} s", flush=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True, text=True)
    out = {
        "protocol": {"dim": d, "n_syn": a.syn, "num_freqs": a.freqs, "kernel": "rbf", "sigma": sigma,
                     "repeats": a.repeats, "timing": "best of repeats, loss + backward to synthetic features",
                     "threads": torch.get_num_threads(), "seed": a.seed},
        "commit": commit.stdout.strip(), "date": dt.date.today().isoformat(), "torch": torch.__version__,
        "records": records,
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=2) + "\n")
    plot(records, Path(a.out).with_suffix(".png"), out["protocol"])
    print(f"wrote {a.out}")
    return 0


def plot(records: list[dict], path: Path, proto: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name in dict.fromkeys(r["loss"] for r in records):
        rs = [r for r in records if r["loss"] == name]
        ax.loglog([r["n_real"] for r in rs], [r["seconds"] for r in rs], marker="o", label=name)
    ns = sorted({r["n_real"] for r in records})
    ref = [r for r in records if r["loss"] == "sdd"]
    if ref:
        t0 = ref[0]["seconds"]
        ax.loglog(ns, [t0 * n / ns[0] for n in ns], "k:", lw=0.8, label="∝ N")
        ax.loglog(ns, [t0 * (n / ns[0]) ** 2 for n in ns], "k--", lw=0.8, label="∝ N²")
    ax.set_xlabel("real samples N")
    ax.set_ylabel("seconds (loss + gradient)")
    ax.set_title(f"d={proto['dim']}, m={proto['n_syn']}, M={proto['num_freqs']}, {proto['threads']} threads")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
