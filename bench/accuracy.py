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

Pipeline ``ncfm`` rows (SPEC §4b, the second pipeline, at the same budget): a pool
of 4 ConvNet-3 extractors trained 5 epochs each on the LT split (cached), weight
interpolation, multi-formation factor 2, calibration term (weight 1), [0, 1] pixels
with AdamW (lr 1e-3, wd 5e-4), per-class steps, 1000 iterations with batch_real 64;
evaluation profile ``ncfm`` (AdamW lr 1e-3, multi-step decay, batch 128, DSA +
CutMix + random-resized crop), 300 epochs, 3 runs. ``random`` in this pipeline is
the random set evaluated with that profile.

Variants (recorded as ``variant``, part of the cell key): ``tuned`` distils with the
settings the finished ``tune-v1`` validation search chose (``bench/tune.py``);
``mosaic`` is the random baseline of pipeline ``ncfm`` stored as factor-2 mosaics
(the pipeline's initialisation, 0 iterations); ``gradbal`` is csdm in pipeline
``ncfm`` with its loss scale set by a training-data rule so that its matching term
weighs against the calibration term as ncfm's does (``bench/grad_balance.py``);
``bf16`` / ``bf16-eval`` are speed variants. An interrupted cell resumes its distillation from its checkpoint.

Several workers on one machine (processes, e.g. one per core or GPU) can run the
same grid at once (the pid check is local, so not across machines): each claims a cell with an exclusive ``.lock`` file under
``bench/sets/`` (holding its pid; a lock whose process is gone is taken over) and
skips cells another worker holds; a distilled set shared by several cells is
distilled once, the other workers waiting for it.

Label tracks (SPEC §6): ``hard``; ``soft`` = the teacher's softmax (T = 1) on the
set's images; ``adsa`` = the same logits adjusted by τ·log π with τ searched by
ADSA. The teacher is a ConvNet-3 trained on the whole long-tailed split with the
evaluation trainer for ``teacher_epochs`` epochs (seeded, cached under
``bench/sets/``); the same network, tested once, is the ``full`` reference row
(``runs`` 1, ``eval_epochs`` = teacher epochs: a smaller budget than the
distilled cells' evaluation, stated in the row).

    python bench/accuracy.py --data-root ../shared/datasets/cifar10 --grid if100-core
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

import ltdistill as ld
from ltdistill.config import apply_overrides
from ltdistill.methods.matching import MatchConfig
from ltdistill.utils import machine, resolve_device

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "accuracy.jsonl"
SETS = HERE / "sets"

PROTOCOLS = {
    "cpu-v1": {"ipc": 10, "iterations": 1000, "batch_real": 64, "eval_epochs": 300, "runs": 3, "teacher_epochs": 20,
               "pool_size": 4, "pool_epochs": 5},
    # cpu-v1 with 4x the distillation iterations (everything else equal): does a method's
    # gap to another grow with the budget? (grid ``budget``)
    "cpu-v1-it4000": {"ipc": 10, "iterations": 4000, "batch_real": 64, "eval_epochs": 300, "runs": 3,
                      "teacher_epochs": 20, "pool_size": 4, "pool_epochs": 5},
    # cpu-v1 with the real batch of DM's paper (256 instead of 64), everything else equal:
    # does a characteristic-function loss, whose estimate from 64 real images is noisier
    # than a mean's, gain more from a larger real batch than DM does? (grid ``batch``)
    "cpu-v1-b256": {"ipc": 10, "iterations": 1000, "batch_real": 256, "eval_epochs": 300, "runs": 3,
                    "teacher_epochs": 20, "pool_size": 4, "pool_epochs": 5},
    # LAD at the CPU budget of preset lad-cpu (experts and matching from the preset; the
    # evaluation budget as cpu-v1's, with the set's learned soft labels and step size)
    "cpu-lad-v1": {"ipc": 10, "iterations": 200, "batch_real": 0, "eval_epochs": 300, "runs": 3,
                   "teacher_epochs": 20, "pool_size": 4, "pool_epochs": 5, "preset": "lad-cpu"},
    # a seconds-long check that the runner works end to end (use with --out-dir)
    "smoke": {"ipc": 2, "iterations": 2, "batch_real": 8, "eval_epochs": 1, "runs": 1, "teacher_epochs": 1,
              "pool_size": 1, "pool_epochs": 1, "full_epochs": 1},
}
# Method settings of the default cells (beyond the library defaults), fixed before any
# tuning; recorded per cell. The ``tuned`` variant replaces them with the settings the
# validation search chose (``bench/tune.py``, ``bench/results/tuning.jsonl``).
METHOD_OVERRIDES = {
    "csdm": ["lr_img=10"],
    "sdd": ["lr_img=10"],
    "mmd": ["lr_img=10"],
    "ncfm": ["lr_img=10"],
}
# Variants: the same cell with options changed (recorded as ``variant``; the cell key
# includes it, "" = the default): (distillation overrides, evaluation bf16).
# bf16 = bfloat16 autocast in distillation (one-forward path); bf16-eval = the default
# set evaluated with bfloat16 autocast; tuned = the method's settings from the finished
# tune-v1 validation search (read from tuning.jsonl when the cell runs, see
# :func:`variant_overrides`).
# reversed (csdm) = the class-aware α map turned round (head 0.3, tail 0.9): the paper's
# direction ablation, which says the reverse hurts.
# mosaic (method random, pipeline ncfm only) = random real images stored as factor-2
# mosaics: the second pipeline's initialisation with 0 iterations (4·IPC random real
# images of the class, downsampled), the baseline that isolates multi-formation.
# gradbal (csdm, pipeline ncfm only) = csdm with its loss scale raised so that its
# matching term pulls on the pixels as hard, relative to the calibration term, as ncfm's
# does (rule in :func:`gradbal_overrides`; measured on training data by bench/grad_balance.py).
VARIANTS = {"": ([], False), "bf16": (["fast=true", "bf16=true"], False), "bf16-eval": ([], True),
            "tuned": ([], False), "mosaic": ([], False), "gradbal": ([], False),
            "reversed": (["alpha_head=0.3", "alpha_tail=0.9"], False),
            # LAD's ablation (the paper's Fig. 6a): without DAM, without Expert Decoupling, both off
            "no-dam": (["dam=none"], False), "no-ed": (["decoupling=false"], False),
            "base": (["dam=none", "decoupling=false"], False),
            # code (pipeline ncfm) = the pipeline as NCFM's released code runs it (SPEC §4c): the
            # calibration as its own optimiser step, interpolation with the pool model's own saved
            # init, the plateau schedule on the image lr (NCFM's patience 500 of 20 000 iterations,
            # scaled to this budget: 25 of 1000), nearest-neighbour mosaic init; random + code is
            # that init with 0 iterations. Evaluated with best-test selection recorded too.
            "code": (["calib_mode=step", "interp_init=saved", "lr_schedule=plateau", "plateau_patience=25",
                      "init_resize=nearest"], False),
            # best-test = the default cell evaluated with test-set selection recorded beside the
            # final-epoch accuracy (which it leaves unchanged)
            "best-test": ([], False),
            # converged (method full) = the whole long-tailed training split trained under the cell's
            # pipeline's evaluation profile for FULL_EPOCHS epochs (not the 20-epoch teacher), one run,
            # with its test curve recorded (the evidence that it converged) and best-test labelled
            "converged": ([], False)}
SPEED_VARIANTS = ("bf16", "bf16-eval")
BEST_TEST_VARIANTS = ("code", "best-test", "converged")
SELECTION_EVERY = 15  # epochs between test checkpoints of best-test selection (20 per 300-epoch run)
FULL_EPOCHS = 200  # the converged whole-LT reference (SGD: x0.1 at 100; AdamW: x0.5 at 40, 80, 120, 160)


def variant_overrides(variant: str, method: str) -> list[str]:
    """Distillation overrides of a variant for ``method`` (after the method's defaults)."""
    if variant == "gradbal":
        return gradbal_overrides(method)
    if variant == "reversed" and method != "csdm":
        raise SystemExit(f"variant 'reversed' turns CSDM's α map round; it is defined for csdm only, got {method!r}")
    if variant != "tuned":
        return VARIANTS[variant][0]
    from tune import best_overrides  # bench/tune.py: replays the stored search, runs nothing

    return best_overrides(method)


def gradbal_overrides(method: str, path: Path | None = None) -> list[str]:
    """csdm's loss scale for pipeline ncfm, fixed by a rule on training data only:
    ``300 · r_ncfm / r_csdm`` to two significant digits, where ``r`` is a method's mean
    ratio of matching-gradient to calibration-gradient norm at iteration 0
    (``bench/results/grad_balance.json``). At scale 300 csdm's squared per-frequency
    discrepancy pulls far less than ncfm's square-rooted one, so under AdamW (which
    normalises the total) the calibration term dominates csdm's updates."""
    if method != "csdm":
        raise SystemExit(f"variant 'gradbal' is defined for csdm only, got {method!r}")
    path = path or HERE / "results" / "grad_balance.json"
    if not path.is_file():
        raise SystemExit(f"variant 'gradbal' needs {path}: run bench/grad_balance.py first")
    ratio = json.loads(path.read_text())["mean_ratio"]
    if not {"csdm", "ncfm"} <= set(ratio):
        raise SystemExit(f"{path} lacks the csdm or ncfm ratio; rerun bench/grad_balance.py")
    scale = float(format(300 * ratio["ncfm"] / ratio["csdm"], ".2g"))
    return [f"loss_scale={scale:g}"]


# The second pipeline (SPEC §4b) at the CPU budget: distillation overrides (after the
# method's) and the evaluation profile.
PIPELINES = {
    "dm": {"distill": [], "eval": {}},
    "ncfm": {"distill": ["extractor=pool", "factor=2", "calib_weight=1.0",
                         "pixel_space=unit", "optimizer=adamw", "lr_img=0.001", "weight_decay=0.0005",
                         "per_class_steps=true"],
             "eval": {"profile": "ncfm", "optimizer": "adamw", "lr": 0.001, "weight_decay": 0.0005, "schedule": "multistep",
                      "batch_size": 128, "cutmix_p": 0.5, "rrc": True}},
}
BASE = ("random", "dm", "csdm")
PROTOCOL_METHODS = ("random", "dm", "ncfm", "csdm")
IF100_DM_CSDM = [(100, m, "convnet", "hard") for m in ("dm", "csdm")]  # the pair the budget/seed grids rerun
GRIDS = {  # cells: (imbalance, method, net, labels[, variant[, pipeline]])
    "if100-core": [(100, m, "convnet", "hard") for m in BASE],
    "core": [(imb, m, "convnet", "hard") for imb in (100, 10, 200, 50) for m in (*BASE, "mmd", "ncfm")],
    "cross-arch": [(100, m, net, "hard") for m in BASE for net in ("resnet18", "vgg11", "alexnet")],
    "labels": [(imb, m, "convnet", lab) for imb in (100, 200) for m in BASE for lab in ("hard", "soft", "adsa")],
    "full": [(imb, "full", "convnet", "hard") for imb in (100, 200, 10, 50)],
    "bf16": [(100, "csdm", "convnet", "hard", "bf16"), (100, "csdm", "convnet", "hard", "bf16-eval")],
    "ncfm-pipeline": [(100, m, "convnet", "hard", "", "ncfm") for m in ("random", "dm", "csdm", "ncfm")]
    + [(imb, "random", "convnet", "hard", "mosaic", "ncfm") for imb in (100, 10, 200)]
    + [(imb, m, "convnet", "hard", "", "ncfm") for imb in (10, 200) for m in ("csdm", "ncfm")],
    "mosaic": [(100, "random", "convnet", "hard", "mosaic", "ncfm")],
    "gradbal": [(100, "csdm", "convnet", "hard", "gradbal", "ncfm")],
    # how far pipeline ncfm's accuracy falls from IF 10 to IF 200 for dm and for the
    # gradient-balanced csdm (the default csdm and ncfm cells are in ncfm-pipeline)
    "stability-ncfm": [(10, "dm", "convnet", "hard", "", "ncfm"), (200, "csdm", "convnet", "hard", "gradbal", "ncfm"),
                       (10, "csdm", "convnet", "hard", "gradbal", "ncfm"), (200, "dm", "convnet", "hard", "", "ncfm")],
    # ablation: the spectral distance without CSDM's class-aware amplitude/phase weights
    # and CSDM with its α direction reversed (tail amplitude, head phase)
    "ablation": [(imb, "sdd", "convnet", "hard") for imb in (100, 10, 200)]
    + [(100, "csdm", "convnet", "hard", "reversed")],
    # run with --protocol cpu-v1-it4000: dm and csdm at 4x the iterations, beside their cpu-v1 rows
    "budget": IF100_DM_CSDM,
    # run with --seed 1, --seed 2, ...: the IF 100 dm / csdm cells again with another seed
    # (distillation and evaluation), so their gap is measured against the seed-to-seed spread
    "seeds": IF100_DM_CSDM,
    # run with --protocol cpu-v1-b256: dm and csdm with batch_real 256, beside their cpu-v1 rows
    "batch": IF100_DM_CSDM,
    "tuned": [(imb, m, "convnet", "hard", "tuned") for imb in (100, 200, 10) for m in ("dm", "csdm")],
    # run with --protocol cpu-lad-v1: LAD at IF 100, 10, 200 and its ablation at IF 100; labels
    # "learned" = the set's own soft labels and step size
    "lad": [(imb, "lad", "convnet", "learned") for imb in (100, 10, 200)]
    + [(100, "lad", "convnet", "learned", v) for v in ("no-dam", "no-ed", "base")],
    # the papers' two protocols side by side (issue 21), IF 100 and 10: pipeline dm with dm's
    # evaluation, and pipeline ncfm as NCFM's code runs it with NCFM's evaluation; both record
    # the final epoch and, labelled, the best test accuracy over checkpoints
    "protocols": [(imb, m, "convnet", "hard", "best-test", "dm") for imb in (100, 10) for m in PROTOCOL_METHODS]
    + [(imb, m, "convnet", "hard", "code", "ncfm") for imb in (100, 10) for m in PROTOCOL_METHODS]
    + [(imb, "full", "convnet", "hard", "converged", pl) for pl in ("dm", "ncfm") for imb in (100, 10)],
    "smoke": [(100, "random", "convnet", "hard"), (100, "dm", "convnet", "adsa"), (100, "full", "convnet", "hard")],
}
KEY_FIELDS = ("dataset", "imbalance", "ipc", "method", "labels", "pipeline", "eval_profile", "net", "protocol")


def row_key(r: dict) -> tuple:
    """A cell's identity: its fields, its variant and its seed (rows written before
    seeds were varied are seed 0)."""
    return (*(r[k] for k in KEY_FIELDS), r.get("variant", ""), r.get("seed", 0))


def commit() -> str:
    """HEAD when this process started, plus '+dirty' when its code (src/, bench/ except
    results) differs from it."""
    try:
        head = subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, text=True).strip()
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", "src", "bench", ":!bench/results"],
                               cwd=HERE.parent).returncode != 0
        return head + ("+dirty" if dirty else "")
    except Exception:  # noqa: BLE001
        return "unknown"


COMMIT = commit()  # taken once at start: the code this process actually runs


def load_rows() -> list[dict]:
    if not RESULTS.is_file():
        return []
    return [json.loads(line) for line in RESULTS.read_text().splitlines() if line.strip()]


def done_keys() -> set[tuple]:
    return {row_key(r) for r in load_rows()}


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def try_lock(path: Path) -> bool:
    """Claim ``path`` (a ``.lock`` file holding this pid) with an exclusive create.
    False when a live process holds it; a lock left by a dead process is taken over."""
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                holder = int(path.read_text().strip() or 0)
            except (OSError, ValueError):
                holder = 0  # being written or unreadable: treat as held only if it reappears
            if holder and _pid_alive(holder):
                return False
            path.unlink(missing_ok=True)  # stale: its process is gone
            continue
        with os.fdopen(fd, "w") as f:
            f.write(str(os.getpid()))
        return True
    return False


@contextlib.contextmanager
def held(path: Path, wait: bool):
    """Hold ``path``'s lock for the block. ``wait`` polls until a live holder lets go
    (a shared distilled set); otherwise yields False at once so the caller can skip."""
    got = try_lock(path)
    while not got and wait:
        time.sleep(10)
        got = try_lock(path)
    try:
        yield got
    finally:
        if got:
            path.unlink(missing_ok=True)


def cell_lock_path(key: tuple) -> Path:
    return SETS / f"cell-{hashlib.sha1(repr(key).encode()).hexdigest()[:16]}.lock"


def set_path(proto_name: str, imb: float, method: str, seed: int, variant: str = "", pipeline: str = "dm") -> Path:
    tag = f"{method}-{variant}" if variant else method
    tag += "" if pipeline == "dm" or method == "random" else f"-pipe{pipeline}"
    return SETS / f"{proto_name}-cifar10-if{imb:g}-ipc{PROTOCOLS[proto_name]['ipc']}-{tag}-s{seed}.pt"


def get_set(imb: float, method: str, proto_name: str, data, data_root: str, seed: int, variant: str = "",
            pipeline: str = "dm"):
    """The cell's distilled set (cached under ``bench/sets``) and its distillation seconds."""
    matcher_method = method
    if variant == "mosaic":  # the pipeline's initialisation (dm's loop) with 0 iterations: nothing is matched
        if method != "random" or pipeline != "ncfm":
            raise SystemExit("variant 'mosaic' is the random baseline of pipeline ncfm (method random)")
        matcher_method, distill_overrides = "dm", ["iterations=0"]
    elif variant == "code" and method == "random":  # NCFM's code's initialisation, nothing matched
        if pipeline != "ncfm":
            raise SystemExit("variant 'code' is pipeline ncfm as NCFM's code runs it")
        matcher_method, distill_overrides = "dm", ["iterations=0", "init_resize=nearest"]
    elif variant and method not in ("random", "full"):  # random has no settings to tune or speed up
        distill_overrides = variant_overrides(variant, method)
    else:
        distill_overrides = []
    path = set_path(proto_name, imb, method, seed, variant if distill_overrides else "", pipeline)
    with held(path.with_suffix(".lock"), wait=True):  # another worker may be distilling this set
        return _get_set(path, imb, method, matcher_method, distill_overrides, proto_name, data, data_root, seed,
                        variant, pipeline)


def _get_set(path: Path, imb: float, method: str, matcher_method: str, distill_overrides: list[str],
             proto_name: str, data, data_root: str, seed: int, variant: str, pipeline: str):
    if path.is_file():
        s = ld.load_set(path)
        if "distill_seconds" in s.extra:
            return s, float(s.extra["distill_seconds"])
        hard = [r for r in load_rows() if (r["protocol"], r["imbalance"], r["method"], r["seed"]) ==
                (proto_name, imb, method, seed) and r["labels"] == "hard"]  # sets saved before the field existed
        return s, float(hard[0]["distill_seconds"]) if hard else float("nan")
    cfg = distill_config(imb, method, proto_name, data_root, seed, pipeline, matcher_method, distill_overrides)
    if isinstance(cfg.options, MatchConfig) or method == "lad":
        resumed = path.with_suffix(".ckpt").is_file()  # an interrupted run of this cell: continue it
        if resumed:
            print(f"  resuming from {path.with_suffix('.ckpt')}", flush=True)
            cfg = apply_overrides(cfg, ["resume=true"])
    elif distill_overrides:
        raise SystemExit(f"variant {variant!r} needs a matching method, got {method!r}")
    t0 = time.perf_counter()
    s = ld.distill(cfg, data, run_prefix=str(path.with_suffix("")))
    seconds = time.perf_counter() - t0
    s.extra["distill_seconds"] = seconds
    if (isinstance(cfg.options, MatchConfig) or method == "lad") and resumed:
        s.extra["distill_resumed"] = True  # the seconds cover only the part after the checkpoint
    ld.save_set(s, path)
    return s, seconds


def distill_config(imb: float, method: str, proto_name: str, data_root: str | None, seed: int = 0,
                   pipeline: str = "dm", matcher_method: str | None = None,
                   distill_overrides: list[str] | None = None):
    """The :class:`ltdistill.DistillConfig` a cell distils with (the presets that name a
    cell are tested against this)."""
    proto = PROTOCOLS[proto_name]
    if (matcher_method or method) == "lad":  # the preset is the recipe: one source of truth
        from ltdistill.config import load_yaml
        from ltdistill.methods import config_from_preset

        cfg, _ = config_from_preset(load_yaml(proto.get("preset", "lad-cpu")), "lad")
        return apply_overrides(cfg, [f"ipc={proto['ipc']}", f"seed={seed}", f"data.imbalance={imb}",
                                     "data.dataset=cifar10", f"data.data_root={data_root}",
                                     *(distill_overrides or [])])
    cfg = ld.make_config(matcher_method or method, ipc=proto["ipc"], seed=seed)
    cfg = apply_overrides(cfg, [f"data.imbalance={imb}", "data.dataset=cifar10", f"data.data_root={data_root}"])
    if isinstance(cfg.options, MatchConfig):
        cfg = apply_overrides(cfg, [f"iterations={proto['iterations']}", f"batch_real={proto['batch_real']}",
                                    *METHOD_OVERRIDES.get(method, []), *PIPELINES[pipeline]["distill"],
                                    *(distill_overrides or [])])
        if cfg.options.extraction.extractor == "pool":
            cfg = apply_overrides(cfg, [f"pool_size={proto['pool_size']}", f"pool_epochs={proto['pool_epochs']}"])
    return cfg


def eval_config(net: str, labels: str, proto_name: str, seed: int = 0, variant: str = "", pipeline: str = "dm"):
    """The :class:`ltdistill.EvalConfig` a cell evaluates with."""
    proto = PROTOCOLS[proto_name]
    selection = {"selection": "best-test", "selection_every": SELECTION_EVERY} if variant in BEST_TEST_VARIANTS else {}
    return ld.EvalConfig(net=net, epochs=proto["eval_epochs"], runs=proto["runs"], seed=seed,
                         labels="hard" if labels == "hard" else "soft", bf16=VARIANTS[variant][1],
                         **PIPELINES[pipeline]["eval"], **selection)


def get_teacher(imb: float, proto_name: str, data, seed: int) -> tuple[dict, dict]:
    """The ConvNet-3 teacher on the whole LT split (cached) and its test result."""
    from ltdistill.evaluate import test_accuracy
    from ltdistill.teacher import load_teacher, save_teacher, train_teacher

    path = SETS / f"{proto_name}-cifar10-if{imb:g}-teacher-convnet-s{seed}.pt"
    meta_path = path.with_suffix(".json")
    epochs = PROTOCOLS[proto_name]["teacher_epochs"]
    if path.is_file():
        t = load_teacher(path)
    else:
        print(f"  training teacher (IF {imb:g}, {epochs} epochs) ...", flush=True)
        t0 = time.perf_counter()
        t = train_teacher(data, ld.EvalConfig(net="convnet", epochs=epochs, runs=1, seed=seed), seed)
        t["train_seconds"] = time.perf_counter() - t0
        save_teacher(t, path)
    if meta_path.is_file():
        return t, json.loads(meta_path.read_text())
    net = ld.create_net("convnet", data.info.channels, data.num_classes, data.train.images.shape[-1])
    net.load_state_dict(t["state_dict"])
    acc, per_class = test_accuracy(net, data, resolve_device("auto"))
    groups = {g: sum(per_class[c] for c in cls) / len(cls) for g, cls in data.groups().items()}
    meta = {"net": "convnet", "epochs": epochs, "seed": seed, "train_seconds": round(t.get("train_seconds", 0.0), 1),
            "acc": acc, "per_class": per_class, **groups, "final_loss": t["final_loss"], "commit": COMMIT}
    meta_path.write_text(json.dumps(meta))
    return t, meta


def eval_seconds(res, t0: float, resumed: bool) -> float:
    """The evaluation's seconds: this call's wall time, or after a resume the runs' own training
    seconds (they include the time before the checkpoint; work lost after it is not counted)."""
    if resumed:
        return round(sum(r.seconds for r in res.runs), 1)
    return round(time.perf_counter() - t0, 1)


def run_cell(imb: float, method: str, net: str, labels: str, proto_name: str, data_root: str, seed: int,
             variant: str = "", pipeline: str = "dm") -> dict:
    from ltdistill.teacher import label_set

    proto = PROTOCOLS[proto_name]
    data = ld.load_lt_data("cifar10", data_root, imbalance=imb)
    ecfg = eval_config(net, labels, proto_name, seed, variant, pipeline)
    extra: dict = {}
    # the cell's evaluation resumes from here after an interruption (removed when it finishes)
    cell = json.dumps([imb, method, net, labels, proto_name, seed, variant, pipeline])
    eval_ckpt = SETS / f"eval-{hashlib.sha256(cell.encode()).hexdigest()[:16]}.ckpt"
    # resumed: this call's wall time covers only the part after the checkpoint, so the row takes
    # the runs' own seconds (the checkpoint carries the time spent before it) and says it resumed
    eval_resumed = eval_ckpt.exists()
    if method == "full" and variant == "converged":
        epochs = proto.get("full_epochs", FULL_EPOCHS)
        fcfg = dataclasses.replace(ecfg, epochs=epochs, runs=1, selection_every=max(1, epochs // 20))
        t0 = time.perf_counter()
        res = ld.evaluate_full(data, fcfg, checkpoint=eval_ckpt)
        rec = {"acc_mean": res.acc_mean, "acc_std": 0.0, "per_class": res.per_class_mean,
               "head": res.groups["head"], "medium": res.groups["medium"], "tail": res.groups["tail"],
               "distill_seconds": 0.0, "eval_seconds": eval_seconds(res, t0, eval_resumed), "eval_epochs": epochs,
               "runs": 1, "run_accs": [r.acc for r in res.runs], "method_config": {}}
        extra["test_curve"] = res.runs[0].test_curve
        extra["final_train_loss"] = res.runs[0].final_loss
    elif method == "full":  # the teacher itself, tested once
        _, meta = get_teacher(imb, proto_name, data, seed)
        rec = {"acc_mean": meta["acc"], "acc_std": 0.0, "per_class": meta["per_class"], "head": meta["head"],
               "medium": meta["medium"], "tail": meta["tail"], "distill_seconds": 0.0,
               "eval_seconds": meta["train_seconds"], "eval_epochs": meta["epochs"], "runs": 1,
               "run_accs": [meta["acc"]], "method_config": {}}
    else:
        s, distill_s = get_set(imb, method, proto_name, data, data_root, seed, variant, pipeline)
        cfg_used = s.config
        if s.extra.get("distill_resumed"):
            extra["distill_resumed"] = True
        if labels not in ("hard", "learned"):  # learned: the set's own labels (lad)
            t, meta = get_teacher(imb, proto_name, data, seed)
            s = label_set(s, t, calibrate="adsa" if labels == "adsa" else "none")
            extra |= {"teacher": {k: meta[k] for k in ("net", "epochs", "acc", "head", "medium", "tail")},
                     "tau": s.extra["tau"], "temperature": s.extra["temperature"]}
        t0 = time.perf_counter()
        res = ld.evaluate_set(s, data, ecfg, checkpoint=eval_ckpt)
        if s.provenance.get("commit"):
            extra["distill_commit"] = s.provenance["commit"]
        rec = {"acc_mean": res.acc_mean, "acc_std": res.acc_std, "per_class": res.per_class_mean,
               "head": res.groups["head"], "medium": res.groups["medium"], "tail": res.groups["tail"],
               "distill_seconds": round(distill_s, 1), "eval_seconds": eval_seconds(res, t0, eval_resumed),
               "eval_epochs": proto["eval_epochs"], "runs": proto["runs"], "run_accs": [r.acc for r in res.runs],
               "method_config": cfg_used}
    if eval_resumed and (method != "full" or variant == "converged"):  # the teacher has no eval checkpoint
        extra["eval_resumed"] = True
    if (method != "full" or variant == "converged") and res.best_test_acc is not None:  # opt-in test-set selection, labelled
        extra["best_test_acc"] = res.best_test_acc
        extra["best_test_selection"] = res.to_dict()["best_test_selection"]
    if method == "lad":
        extra["syn_lr"] = s.extra.get("syn_lr")
        extra["lr_source"] = res.config.get("lr_source")
        extra["method_iterations"] = cfg_used["options"]["iterations"]
    matched = method not in ("random", "full")
    out = {
        "dataset": "cifar10", "imbalance": imb, "ipc": proto["ipc"], "method": method, "labels": labels,
        "pipeline": pipeline, "eval_profile": pipeline, "net": net,
        "iterations": proto["iterations"] if matched else 0, "batch_real": proto["batch_real"] if matched else 0,
        "eval_epochs": rec["eval_epochs"], "runs": rec["runs"],
        "acc_mean": rec["acc_mean"], "acc_std": rec["acc_std"], "per_class": rec["per_class"],
        "head": rec["head"], "medium": rec["medium"], "tail": rec["tail"],
        "distill_seconds": rec["distill_seconds"], "eval_seconds": rec["eval_seconds"], "seed": seed,
        "commit": COMMIT, "date": dt.date.today().isoformat(), "protocol": proto_name,
        "run_accs": rec["run_accs"], "method_config": rec["method_config"], "torch": torch.__version__,
        "machine": machine(),
    }
    if variant:
        out["variant"] = variant
    return {**out, **extra}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", required=True)
    p.add_argument("--grid", action="append", choices=sorted([*GRIDS, "strongest"]), required=True,
                   help="strongest = bench/strongest.py's validation search and then its test stage "
                        "(protocol strongest-v1, bench/results/strongest.jsonl)")
    p.add_argument("--protocol", default="cpu-v1", choices=sorted(PROTOCOLS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--full-reference", action="store_true", help="also the whole-LT-dataset row per IF")
    p.add_argument("--imbalance", type=float, action="append",
                   help="run only the grid's cells at this imbalance factor (repeatable)")
    p.add_argument("--net", action="append", help="run only the grid's cells with this evaluation net (repeatable)")
    p.add_argument("--method", action="append", help="run only the grid's cells of this method (repeatable)")
    p.add_argument("--variant", action="append",
                   help="run only the grid's cells of this variant (repeatable; '' = no variant)")
    p.add_argument("--out-dir", help="write results and sets here instead of bench/results and bench/sets")
    args = p.parse_args(argv)
    if "strongest" in args.grid:  # its own protocol and results file: every choice made on validation
        if args.grid != ["strongest"]:
            p.error("--grid strongest runs on its own (protocol strongest-v1); give the other grids separately")
        import strongest

        extra = ["--seed", str(args.seed)] + (["--out", str(Path(args.out_dir) / "strongest.jsonl")] if args.out_dir else [])
        for stage in ("search", "test"):
            strongest.main([stage, "--data-root", args.data_root, *extra])
        return 0
    if args.out_dir:
        global RESULTS, SETS
        RESULTS = Path(args.out_dir) / "accuracy.jsonl"
        SETS = Path(args.out_dir) / "sets"
    cells = [c for g in args.grid for c in GRIDS[g]]
    if args.imbalance:
        cells = [c for c in cells if c[0] in args.imbalance]
    if args.net:
        cells = [c for c in cells if c[2] in args.net]
    if args.method:
        cells = [c for c in cells if c[1] in args.method]
    if args.variant:
        cells = [c for c in cells if (c[4] if len(c) > 4 else "") in args.variant]
    if args.full_reference:
        cells += [(imb, "full", "convnet", "hard") for imb in sorted({c[0] for c in cells})]
    SETS.mkdir(parents=True, exist_ok=True)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    for imb, method, net, labels, *rest in cells:
        variant, pipeline = (list(rest) + ["", "dm"][len(rest) :])[:2]  # defaults: no variant, pipeline dm
        key = ("cifar10", imb, PROTOCOLS[args.protocol]["ipc"], method, labels, pipeline, pipeline, net,
               args.protocol, variant, args.seed)
        if key in done_keys():
            print(f"skip (done): {key}", flush=True)
            continue
        with held(cell_lock_path(key), wait=False) as mine:
            if not mine:  # parallel workers share one grid: each cell runs once
                print(f"skip (running in another worker): {key}", flush=True)
                continue
            if key in done_keys():  # finished by another worker while this one was busy
                print(f"skip (done): {key}", flush=True)
                continue
            print(f"cell: IF {imb} {method}{' ' + variant if variant else ''} {net} labels {labels} "
                  f"pipeline {pipeline} ...", flush=True)
            rec = run_cell(imb, method, net, labels, args.protocol, args.data_root, args.seed, variant, pipeline)
            with open(RESULTS, "a") as f:
                f.write(json.dumps(rec) + "\n")
        print(f"  {rec['acc_mean']:.2f} ± {rec['acc_std']:.2f}  head {rec['head']:.1f} medium {rec['medium']:.1f} "
              f"tail {rec['tail']:.1f}  (distill {rec['distill_seconds']}s, eval {rec['eval_seconds']}s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
