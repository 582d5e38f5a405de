"""Diagnostic: how strongly each method's matching term pulls on the synthetic pixels,
relative to the calibration term, in pipeline ``ncfm`` (SPEC §4b).

Pipeline ``ncfm`` optimises ``loss_scale * matching + calib_weight * CE(trained net)``
with AdamW, which normalises the *total* gradient: what decides how much of an update
comes from matching is the ratio of the two terms' gradients, not their size. This
script measures, for each method, the norm of the gradient reaching the stored
synthetic pixels from each term alone, at iteration 0 of the accuracy benchmark's
pipeline-``ncfm`` setting (CIFAR-10-LT IF 100, IPC 10, batch_real 64, the cached pool
of 4 ConvNet-3 extractors trained 5 epochs, multi-formation factor 2, [0, 1] pixels).

Measured through the real distillation loop: one step of plain SGD (momentum 0,
weight decay 0, lr ``EPS``) from the initial set, ``|x1 - x0| / EPS``, once with
``calib_weight=0`` (matching only) and once with ``loss_scale=0`` (calibration only).
The loop clamps pixels to [0, 1] after the step, so the norms are of the projected
gradient (components pushing a saturated pixel outwards are dropped), for both
terms alike.

    python bench/grad_balance.py --data-root ../shared/datasets/cifar10 --seeds 0 1 2

Writes ``bench/results/grad_balance.json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import sys
from pathlib import Path

import torch

import ltdistill as ld
from ltdistill.config import apply_overrides

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accuracy import COMMIT, METHOD_OVERRIDES, PIPELINES, PROTOCOLS  # noqa: E402

HERE = Path(__file__).resolve().parent
OUT = HERE / "results" / "grad_balance.json"
EPS = 1e-4
IMBALANCE = 100
# The pipeline's own optimiser settings are replaced by the measuring step.
REPLACED = ("optimizer=", "lr_img=", "weight_decay=", "per_class_steps=")


def initial_and_step(method: str, data, data_root: str, seed: int, term_off: str) -> tuple[torch.Tensor, torch.Tensor]:
    proto = PROTOCOLS["cpu-v1"]
    cfg = ld.make_config(method, ipc=proto["ipc"], seed=seed)
    cfg = apply_overrides(cfg, [f"data.imbalance={IMBALANCE}", "data.dataset=cifar10", f"data.data_root={data_root}"])
    pipeline = [o for o in PIPELINES["ncfm"]["distill"] if not o.startswith(REPLACED)]
    base = [f"batch_real={proto['batch_real']}", *METHOD_OVERRIDES.get(method, []), *pipeline,
            f"pool_size={proto['pool_size']}", f"pool_epochs={proto['pool_epochs']}",
            "optimizer=sgd", "momentum=0", "weight_decay=0", f"lr_img={EPS}", "compile=off"]
    x0 = ld.distill(apply_overrides(cfg, [*base, "iterations=0"]), data).images
    x1 = ld.distill(apply_overrides(cfg, [*base, "iterations=1", term_off]), data).images
    return x0, x1


def measure(method: str, data, data_root: str, seed: int) -> dict:
    x0, xm = initial_and_step(method, data, data_root, seed, "calib_weight=0")
    _, xc = initial_and_step(method, data, data_root, seed, "loss_scale=0")
    gm, gc = float((xm - x0).norm()) / EPS, float((xc - x0).norm()) / EPS
    return {"method": method, "seed": seed, "grad_matching": gm, "grad_calibration": gc, "ratio": gm / gc}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", required=True)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--methods", nargs="+", default=["dm", "csdm", "ncfm"])
    args = p.parse_args(argv)
    data = ld.load_lt_data("cifar10", args.data_root, imbalance=IMBALANCE)
    rows = []
    for seed in args.seeds:
        for m in args.methods:
            rows.append(measure(m, data, args.data_root, seed))
            r = rows[-1]
            print(f"seed {seed} {m:5s} |grad matching| {r['grad_matching']:.4g}  "
                  f"|grad calibration| {r['grad_calibration']:.4g}  ratio {r['ratio']:.3g}", flush=True)
    summary = {m: statistics.mean(r["ratio"] for r in rows if r["method"] == m) for m in args.methods}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({
        "what": "gradient norm on the stored synthetic pixels from the matching term alone and from the "
                "calibration term alone, iteration 0 of pipeline ncfm (see bench/grad_balance.py)",
        "setting": {"dataset": "cifar10", "imbalance": IMBALANCE, "ipc": PROTOCOLS["cpu-v1"]["ipc"],
                    "batch_real": PROTOCOLS["cpu-v1"]["batch_real"], "pipeline": PIPELINES["ncfm"]["distill"],
                    "method_overrides": {m: METHOD_OVERRIDES.get(m, []) for m in args.methods}, "eps": EPS},
        "rows": rows, "mean_ratio": summary, "commit": COMMIT, "date": dt.date.today().isoformat(),
        "torch": torch.__version__,
    }, indent=1) + "\n")
    for m, v in summary.items():
        print(f"mean ratio matching/calibration {m}: {v:.3g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
