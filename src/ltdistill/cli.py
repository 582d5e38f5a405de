"""Command-line interface: a thin layer that parses a config and calls the library."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from . import __version__
from .config import apply_dict, apply_overrides, has_key, list_presets, load_yaml, to_dict, valid_keys
from .errors import ArtifactError, ConfigError, LtdError, TrainingError


def _registries() -> str:
    from .data import list_datasets
    from .methods import list_methods
    from .nets import list_nets

    return (f"methods: {', '.join(list_methods())}\nnets: {', '.join(list_nets())}\n"
            f"datasets: {', '.join(list_datasets())}\npresets: {', '.join(list_presets()) or '-'}")


def _write_json(path: str | Path, obj: Any) -> None:
    from .utils import atomic_write_bytes

    atomic_write_bytes(path, (json.dumps(obj, indent=2) + "\n").encode())


# ----------------------------------------------------------------------------- distill
def merged_presets(names: list[str] | None) -> dict:
    """The presets / YAML files in order, merged deeply (later keys win key by key)."""
    from .config import deep_merge

    merged: dict = {}
    for src in names or []:
        merged = deep_merge(merged, load_yaml(src))
    return merged


def build_distill_config(args: argparse.Namespace, notes: list[str] | None = None):
    """defaults < presets/config files (merged deeply) < explicit flags < ``-s key=value``.

    Preset options the chosen method does not have are skipped and named in ``notes``."""
    from .methods import config_from_preset

    cfg, skipped = config_from_preset(merged_presets(args.preset), args.method)
    if skipped and notes is not None:
        notes.append(f"preset options not used by method {cfg.method!r}: {', '.join(skipped)}")
    flags = {"data.dataset": args.dataset, "data.data_root": args.data_root,
             "data.imbalance": args.imbalance, "data.split_seed": args.split_seed,
             "data.image_size": args.image_size, "data.n_per_class": args.n_per_class,
             "ipc": args.ipc, "seed": args.seed, "device": args.device}
    for k, v in flags.items():
        if v is not None:
            cfg = apply_dict(cfg, {k: v})
    if args.download:
        cfg = apply_dict(cfg, {"data.download": True})
    if args.resume:
        if not has_key(cfg, "options.resume"):
            raise ConfigError(f"method {cfg.method!r} is not iterative: nothing to resume")
        cfg = apply_dict(cfg, {"options.resume": True})
    return apply_overrides(cfg, args.set)


def cmd_distill(args: argparse.Namespace) -> int:
    from .artifact import save_set
    from .methods import distill
    from .utils import check_writable

    notes: list[str] = []
    cfg = build_distill_config(args, notes)
    for n in notes:
        print(f"ltdistill: note: {n}", file=sys.stderr)
    if args.print_config:
        print(json.dumps(to_dict(cfg), indent=2))
        return 0
    rank = _join_group(cfg.device)
    out = check_writable(args.out, "--out") if rank.is_main else Path(args.out)
    prefix = out.with_suffix("")
    t0 = time.perf_counter()
    tracker = _tracker(args, to_dict(cfg), out.stem, "distill") if rank.is_main else None
    with contextlib.closing(tracker) if tracker is not None else contextlib.nullcontext():
        s = distill(cfg, show_progress=not args.quiet, run_prefix=str(prefix), tracker=tracker,
                    image_every=args.log_images_every)
    if not rank.is_main:  # rank 0 writes the gathered set and every other output
        return 0
    save_set(s, out)
    _write_json(out.with_suffix(".config.json"), {**to_dict(cfg), "world_size": rank.world_size})
    if not args.keep_checkpoint:  # the set is saved: the checkpoint is a second copy of it
        _remove_checkpoints(prefix)
    written = [out, out.with_suffix(".png")]
    log = prefix.with_name(prefix.name + ".loss.jsonl")
    if log.is_file():
        written += [log, _loss_plot(log, prefix.with_name(prefix.name + ".loss.png"),
                                    f"{cfg.method}, {cfg.data.dataset} IF {s.dataset['imbalance']:.3g}, IPC {cfg.ipc}")]
    counts = s.dataset["class_counts"]
    print(f"distilled {len(s.labels)} images ({cfg.method}, IPC {cfg.ipc}) from {cfg.data.dataset}-LT "
          f"IF {s.dataset['imbalance']:.4g} (class counts {counts}) in {time.perf_counter() - t0:.1f}s")
    print("wrote " + ", ".join(str(w) for w in written if w))
    return 0


def _join_group(device: str):
    """Under ``torchrun``: join the process group (gloo on CPU, nccl on CUDA) and turn
    SIGTERM (what torchrun sends the others when one rank dies) into a clear error."""
    import signal

    from .distributed import init_from_env, launched_by_torchrun

    if not launched_by_torchrun():
        from .distributed import current

        return current()
    rank = init_from_env(device, timeout_s=float(os.environ.get("LTDISTILL_DIST_TIMEOUT", "300")))

    def stopped(signum, frame):
        raise TrainingError(f"rank {rank.rank} of {rank.world_size} was stopped (signal {signum}): another rank "
                            "failed or the launcher stopped the run; nothing after the last complete checkpoint is "
                            "kept. Rerun the same command with --resume to continue from it")

    signal.signal(signal.SIGTERM, stopped)
    return rank


def _remove_checkpoints(prefix: Path) -> None:
    import shutil

    for p in (prefix.with_name(prefix.name + ".ckpt"), prefix.with_name(prefix.name + ".ckpt.json")):
        p.unlink(missing_ok=True)
    shutil.rmtree(prefix.with_name(prefix.name + ".ckpt.d"), ignore_errors=True)


def _loss_plot(log: Path, png: Path, title: str) -> Path | None:
    """``<out>.loss.png`` from the loss log; a note (not a failure) when matplotlib is absent."""
    from .plots import plot_loss

    try:
        return plot_loss(log, png, title)
    except ConfigError as e:
        print(f"ltdistill: note: no loss plot: {e}", file=sys.stderr)
        return None


def _tracker(args: argparse.Namespace, config: dict, name: str, job: str):
    from .tracking import make_tracker

    return make_tracker(getattr(args, "tensorboard", None), getattr(args, "wandb", None), config, name, job)


# ----------------------------------------------------------------------------- evaluate
def build_eval_config(args: argparse.Namespace, section: str = "eval"):
    """defaults < the presets' ``section`` (``eval``; ``teacher`` for the teacher command, which
    falls back to ``eval`` when no preset has one) < explicit flags < ``-s key=value``."""
    from .evaluate import EvalConfig

    profile = [f"eval-{args.profile}"] if getattr(args, "profile", None) else []  # first: presets after it win
    merged = merged_presets(profile + (args.preset or []))
    if section not in merged:
        section = "eval"
    cfg = apply_dict(EvalConfig(), merged.get(section) or {})
    flags = {"net": args.net, "epochs": args.epochs, "runs": args.runs, "lr": args.lr,
             "batch_size": args.batch_size, "seed": args.seed, "device": args.device, "labels": args.labels,
             "teacher": getattr(args, "teacher", None)}
    for k, v in flags.items():
        if v is not None:
            cfg = apply_dict(cfg, {k: v})
    if getattr(args, "protocol_lr", False) or args.lr is not None:
        cfg = apply_dict(cfg, {"lr_from_set": False})  # an explicit lr, or the protocol's, wins over the set's
    cfg = apply_overrides(cfg, args.set)
    if cfg.epochs < 1 or cfg.runs < 1 or cfg.batch_size < 1:
        raise ConfigError("epochs, runs and batch_size must be at least 1")
    from .nets import NETS

    NETS.get(cfg.net)
    return cfg


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .artifact import load_set
    from .data import data_from_record, load_lt_data
    from .evaluate import evaluate_full, evaluate_set, format_result
    from .tracking import check_extras
    from .utils import check_writable

    cfg = build_eval_config(args)
    check_extras(args.tensorboard, args.wandb)
    rank = _join_group(cfg.device)
    if args.json and rank.is_main:
        check_writable(args.json, "--json")
    if args.plot and rank.is_main:
        check_writable(args.plot, "--plot")
    if not rank.is_main:
        args.quiet, args.tensorboard, args.wandb = True, None, None
    if args.full:
        if args.set_path is not None:
            raise ConfigError("--full evaluates the whole long-tailed dataset: give no set file")
        if args.dataset is None:
            raise ConfigError("--full needs --dataset (and --imbalance)")
        data = load_lt_data(args.dataset, args.data_root, args.imbalance,
                            42 if args.split_seed is None else args.split_seed, image_size=args.image_size,
                            n_per_class=args.n_per_class, show_progress=not args.quiet)
        title = f"full {args.dataset}-LT IF {data.imbalance:.4g} ({len(data.train)} images), net {cfg.net}"
        with contextlib.closing(_tracker(args, to_dict(cfg), "full", "evaluate")) as tracker:
            res = evaluate_full(data, cfg, show_progress=not args.quiet, tracker=tracker, checkpoint=args.checkpoint)
        about: dict[str, Any] = {"set": None, "method": "full-dataset"}
    else:
        if args.set_path is None:
            raise ConfigError("give a distilled set file to evaluate (or --full)")
        s = load_set(args.set_path)
        d = s.dataset
        root = args.data_root or (s.config.get("data") or {}).get("data_root")
        data = data_from_record(d, root, show_progress=not args.quiet)
        title = (f"{s.method} set {args.set_path}: {len(s.labels)} images, {d['name']}-LT "
                 f"IF {d['imbalance']:.4g}, net {cfg.net}, {cfg.epochs} epochs")
        with contextlib.closing(_tracker(args, to_dict(cfg), Path(args.set_path).stem, "evaluate")) as tracker:
            res = evaluate_set(s, data, cfg, show_progress=not args.quiet, tracker=tracker, checkpoint=args.checkpoint)
        about = {"set": str(args.set_path), "method": s.method, "set_config": s.config}
    if not rank.is_main:
        return 0
    print(format_result(res, data.class_names, title))
    record = {**about, "dataset": data.split_record(), "class_names": list(data.class_names), **res.to_dict(),
              "library_version": __version__}
    if args.json:
        _write_json(args.json, record)
        print(f"wrote {args.json}")
    if args.plot:
        from .plots import plot_per_class

        label = about["method"] if about["method"] != "full-dataset" else "whole LT set"
        plot_per_class([(label, record)], args.plot, title)
        print(f"wrote {args.plot}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from .plots import compare_table, load_result, plot_per_class
    from .utils import check_writable

    if args.plot:
        check_writable(args.plot, "--plot")
    results = [(_result_label(p, r), r) for p in args.results for r in [load_result(p)]]
    print(compare_table(results))
    if args.plot:
        plot_per_class(results, args.plot, args.title or "per-class accuracy, head → tail")
        print(f"wrote {args.plot}")
    return 0


def _result_label(path: str, r: dict) -> str:
    """A result's name in a comparison: the file's stem (``runs/csdm.json`` -> ``csdm``)."""
    return Path(path).stem


# ----------------------------------------------------------------------------- teacher / label
def cmd_teacher(args: argparse.Namespace) -> int:
    from .data import load_lt_data
    from .teacher import save_teacher, train_teacher
    from .tracking import check_extras
    from .utils import check_writable

    cfg = build_eval_config(args, "teacher")
    check_extras(args.tensorboard, args.wandb)
    check_writable(args.out, "--out")
    data = load_lt_data(args.dataset, args.data_root, args.imbalance, 42 if args.split_seed is None else args.split_seed,
                        image_size=args.image_size, n_per_class=args.n_per_class, show_progress=not args.quiet)
    with contextlib.closing(_tracker(args, to_dict(cfg), Path(args.out).stem, "teacher")) as tracker:
        t = train_teacher(data, cfg, cfg.seed, show_progress=not args.quiet, tracker=tracker,
                          checkpoint=args.checkpoint)
    save_teacher(t, args.out)
    print(f"trained teacher {cfg.net} on {args.dataset}-LT IF {data.imbalance:.4g} ({len(data.train)} images, "
          f"{cfg.epochs} epochs, final loss {t['final_loss']:.3f}); wrote {args.out}")
    return 0


# ----------------------------------------------------------------------------- run
RUN_FORMAT = "ltdistill-run"


def cmd_run(args: argparse.Namespace) -> int:
    """distill, then (when a preset has a ``teacher`` section) train the teacher on the same
    long-tailed split, then evaluate with the presets' ``eval`` section (online soft labels from
    that teacher): one folder, every step skipped when its output exists, the distillation and
    the evaluation resumed from their checkpoints, so the same command continues an
    interrupted run."""
    from .data import data_from_record
    from .distributed import launched_by_torchrun
    from .teacher import save_teacher, train_teacher

    if launched_by_torchrun():
        raise ConfigError("ltdistill run is one process: under torchrun run `distill` and `evaluate` themselves")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} exists and is not a folder")
    presets = args.preset or []
    merged = merged_presets(presets)  # an unknown preset fails here, before anything runs
    data_argv = [f for k, v in (("--dataset", args.dataset), ("--data-root", args.data_root),
                                ("--imbalance", args.imbalance), ("--split-seed", args.split_seed),
                                ("--image-size", args.image_size), ("--n-per-class", args.n_per_class),
                                ("--method", args.method), ("--ipc", args.ipc)) if v is not None for f in (k, str(v))]
    common = [f for k, v in (("--seed", args.seed), ("--device", args.device)) if v is not None for f in (k, str(v))]
    common += [f for p in presets for f in ("--preset", p)]
    spec = {"format": RUN_FORMAT, "data": data_argv, "common": common, "set": args.set or [],
            "eval_set": args.eval_set or [], "teacher": "teacher" in merged}
    # what only shows or logs the run is not a setting: a rerun may change it
    common = common + (["--quiet"] if args.quiet else []) + [
        f for k, v in (("--tensorboard", args.tensorboard), ("--wandb", args.wandb)) if v is not None for f in (k, v)]
    out.mkdir(parents=True, exist_ok=True)
    stamp = out / "run.json"
    if stamp.is_file():
        try:
            old = json.loads(stamp.read_text())
        except (OSError, ValueError) as e:
            raise ArtifactError(f"cannot read {stamp}: {e}") from None
        if old != spec:
            raise ConfigError(f"{out} holds a run with other settings ({stamp}); give another --out, or delete "
                              f"the folder to start again")
    else:
        _write_json(stamp, spec)
    parser = build_parser()
    s_path, t_path, j_path = out / "set.pt", out / "teacher.pt", out / "result.json"
    if not s_path.is_file():
        resume = ["--resume"] if (out / "set.ckpt").is_file() else []
        argv = ["distill", *data_argv, *common, *resume, "--out", str(s_path)]
        argv += [f for kv in args.set or [] for f in ("-s", kv)]
        if cmd_distill(parser.parse_args(argv)):
            return 1
    else:
        print(f"ltdistill: using the finished set {s_path}", file=sys.stderr)
    teacher: list[str] = []
    if spec["teacher"]:
        if not t_path.is_file():
            from .artifact import load_set

            s = load_set(s_path)
            data = data_from_record(s.dataset, args.data_root or (s.config.get("data") or {}).get("data_root"),
                                    show_progress=not args.quiet)
            tcfg = build_eval_config(parser.parse_args(["teacher", "--dataset", s.dataset["name"], "--out",
                                                        str(t_path), *common]), "teacher")
            t0 = time.perf_counter()
            t = train_teacher(data, tcfg, tcfg.seed, show_progress=not args.quiet, checkpoint=out / "teacher.ckpt")
            save_teacher(t, t_path)
            print(f"trained teacher {tcfg.net} ({tcfg.epochs} epochs, logit_adjust {tcfg.logit_adjust:g}) on "
                  f"{len(data.train)} images in {time.perf_counter() - t0:.1f}s; wrote {t_path}")
        teacher = ["--teacher", str(t_path)]
    if not j_path.is_file():
        argv = ["evaluate", str(s_path), *common, *teacher, "--json", str(j_path),
                "--plot", str(out / "per_class.png"), "--checkpoint", str(out / "eval.ckpt")]
        argv += [f for kv in args.eval_set or [] for f in ("-s", kv)]
        if args.data_root:
            argv += ["--data-root", args.data_root]
        return cmd_evaluate(parser.parse_args(argv))
    r = json.loads(j_path.read_text())
    print(f"finished run in {out}: {r['acc_mean']:.2f} ± {r['acc_std']:.2f} % over {len(r['runs'])} runs "
          f"(tail {r['groups']['tail']:.1f}); {j_path}")
    return 0


def cmd_experts(args: argparse.Namespace) -> int:
    """The buffer ``distill --method lad`` with the same presets and overrides will use."""
    import dataclasses

    from .data import load_lt_data
    from .experts import train_experts
    from .utils import resolve_device

    if args.net:
        args.set = [*(args.set or []), f"options.net={args.net}"]
    cfg = build_distill_config(args)
    opts = cfg.options
    ecfg = dataclasses.replace(opts.experts, net=opts.net, device=str(resolve_device(cfg.device)))
    d = cfg.data
    data = load_lt_data(d.dataset, d.data_root, d.imbalance, d.split_seed, d.download, d.image_size,
                        d.n_per_class, not args.quiet)
    from .tracking import check_extras

    check_extras(args.tensorboard, args.wandb)
    t0 = time.perf_counter()
    with contextlib.closing(_tracker(args, to_dict(cfg), "experts", "experts")) as tracker:
        path = train_experts(data, ecfg, opts.expert_dir, show_progress=not args.quiet, tracker=tracker)
    from .experts import load_expert

    accs = [load_expert(path, k)["train_acc"] for k in range(ecfg.num_experts)]
    print(f"{ecfg.num_experts} experts ({ecfg.net}, {ecfg.epochs} + {ecfg.cls_epochs} epochs) on {d.dataset}-LT "
          f"IF {data.imbalance:.4g} in {time.perf_counter() - t0:.1f}s; final training accuracy per expert "
          f"(stage 1 / stage 2): " + ", ".join(f"{a[ecfg.epochs - 1]:.1f} / {a[-1]:.1f}" for a in accs))
    print(f"buffer: {path}")
    return 0


def cmd_label(args: argparse.Namespace) -> int:
    from .artifact import load_set, save_set
    from .teacher import label_set, load_teacher
    from .utils import check_writable

    check_writable(args.out, "--out")
    s = load_set(args.set_path)
    t = load_teacher(args.teacher)
    calibrate = args.calibrate or ("none" if args.tau is None else "adsa")
    out = label_set(s, t, calibrate, args.tau, args.temperature, args.device or "auto")
    save_set(out, args.out)
    print(f"labelled {len(out.labels)} images with {t['net']} teacher (calibration {calibrate}, "
          f"tau {out.extra['tau']:.3f}, temperature {args.temperature:g}); wrote {args.out}")
    return 0


# ----------------------------------------------------------------------------- small commands
def cmd_export(args: argparse.Namespace) -> int:
    from .artifact import export_imagefolder, load_set
    from .utils import check_writable_dir

    s = load_set(args.set_path)
    check_writable_dir(args.out_dir, "export folder")
    out = export_imagefolder(s, args.out_dir, raw=args.raw)
    what = "stored mosaics" if args.raw and s.factor > 1 else "images"
    print(f"exported {what} to {out}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    if args.set_path is None:
        return _dataset_info(args)
    from .artifact import load_set

    s = load_set(args.set_path)
    print(json.dumps({"method": s.method, "images": list(s.images.shape), "ipc": s.ipc(),
                      "soft_labels": s.soft_labels is not None, "dataset": s.dataset,
                      "seed": s.seed, "config": s.config, "provenance": s.provenance}, indent=2))
    return 0


def _dataset_info(args: argparse.Namespace) -> int:
    """Class counts, imbalance factor, image size and a bar chart of the class distribution."""
    from .data import load_lt_data
    from .utils import check_writable

    if args.dataset is None:
        raise ConfigError("give a distilled set, or --dataset (and --data-root) to describe a dataset")
    plot = check_writable(args.plot or f"{args.dataset}_class_counts.png", "--plot")
    data = load_lt_data(args.dataset, args.data_root, args.imbalance, 42 if args.split_seed is None else args.split_seed,
                        image_size=args.image_size, n_per_class=args.n_per_class, show_progress=True)
    counts = data.class_counts
    groups = data.groups()
    w = max(len(n) for n in data.class_names)
    print(f"{args.dataset}: {data.num_classes} classes, {len(data.train)} training and {len(data.test)} test images, "
          f"{data.info.image_size}x{data.info.image_size} px, {data.info.channels} channel(s)")
    print(f"imbalance factor (largest / smallest class): {max(counts) / max(1, min(counts)):.4g}"
          + (" (imposed)" if data.meta.get("imposed_imbalance") or args.dataset != "imagefolder" else " (as it is)"))
    if data.meta.get("greyscale_converted"):
        print(f"greyscale images converted to RGB: {data.meta['greyscale_converted']}")
    print(f"mean {list(data.info.mean)}, std {list(data.info.std)}")
    group_of = {c: g for g, cls in groups.items() for c in cls}
    for c in sorted(range(data.num_classes), key=lambda c: (-counts[c], c)):
        print(f"  {data.class_names[c]:<{w}} {counts[c]:>7}  {group_of.get(c, '')}")
    from .plots import plot_class_counts

    plot_class_counts(data.class_names, counts, groups, plot, f"{args.dataset} training split "
                      f"({data.num_classes} classes, IF {max(counts) / max(1, min(counts)):.3g})")
    print(f"wrote {plot}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    print(_registries())
    if args.keys:
        from .methods import make_config

        print(f"config keys for {args.keys}: {', '.join(valid_keys(make_config(args.keys)))}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo
    from .utils import check_writable_dir

    check_writable_dir(args.out, "--out")
    run_demo(args.out, quick=args.quick, show_progress=not args.quiet, workers=args.workers)
    return 0


# ----------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ltdistill",
        description="Long-tailed dataset distillation.",
        epilog=_registries(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"ltdistill {__version__}")
    sub = p.add_subparsers(dest="cmd", required=True)
    fmt = argparse.RawDescriptionHelpFormatter

    def common(q: argparse.ArgumentParser) -> None:
        q.add_argument("--preset", "--config", action="append", metavar="NAME|FILE",
                       help="preset name or YAML config file (repeatable, later wins)")
        q.add_argument("-s", "--set", action="append", metavar="KEY=VALUE", help="validated config override")
        q.add_argument("--seed", type=int)
        q.add_argument("--device", help="auto (default), cpu, cuda, cuda:1, ...")
        q.add_argument("--quiet", action="store_true", help="no progress bars")
        q.add_argument("--tensorboard", metavar="DIR", help="log to TensorBoard in DIR (extra: tensorboard)")
        q.add_argument("--wandb", metavar="PROJECT",
                       help="log to Weights & Biases (extra: wandb; WANDB_MODE=offline works without network)")

    def data_flags(q: argparse.ArgumentParser, required: bool = False) -> None:
        q.add_argument("--dataset", required=required, help="cifar10, cifar100, digits or imagefolder")
        q.add_argument("--data-root")
        q.add_argument("--imbalance", type=float,
                       help="impose SPEC §1's split with this factor (default: 100; imagefolder: the data as it is)")
        q.add_argument("--split-seed", type=int)
        q.add_argument("--image-size", type=int, metavar="N", help="imagefolder: resize every image to N x N")
        q.add_argument("--n-per-class", type=int, metavar="N",
                       help="imagefolder with --imbalance: the head count of the rule (default: the largest class)")

    d = sub.add_parser("distill", help="distil a synthetic set", epilog=_registries(), formatter_class=fmt)
    data_flags(d)
    d.add_argument("--download", action="store_true", help="fetch CIFAR via torchvision first")
    d.add_argument("--ipc", type=int)
    d.add_argument("--method")
    d.add_argument("--out", default="set.pt")
    d.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    d.add_argument("--resume", action="store_true", help="continue from <out>.ckpt when it exists")
    d.add_argument("--log-images-every", type=int, default=100, metavar="K",
                   help="with --tensorboard/--wandb: the synthetic image grid every K iterations (and at the end)")
    d.add_argument("--keep-checkpoint", action="store_true",
                   help="keep <out>.ckpt after a finished run (removed by default once the set is saved)")
    common(d)
    d.set_defaults(func=cmd_distill)

    e = sub.add_parser("evaluate", help="train fresh nets on a set and test them", epilog=_registries(),
                       formatter_class=fmt)
    e.add_argument("set_path", nargs="?", help="distilled set (.pt)")
    e.add_argument("--full", action="store_true", help="reference: train on the whole long-tailed split "
                   "(with --dataset and the split's flags)")
    data_flags(e)
    e.add_argument("--net")
    e.add_argument("--epochs", type=int)
    e.add_argument("--runs", type=int)
    e.add_argument("--lr", type=float)
    e.add_argument("--batch-size", type=int)
    e.add_argument("--labels", choices=["auto", "hard", "soft"])
    e.add_argument("--profile", choices=["dm", "ncfm"],
                   help="a paper's evaluation recipe (preset eval-<profile>, applied before --preset): dm "
                        "(SPEC §7, the default settings) or ncfm (NCFM's code: AdamW, CutMix, random-resized crop)")
    e.add_argument("--teacher", metavar="TEACHER.pt",
                   help="online soft labels from this teacher (ltdistill teacher) on every augmented batch, "
                        "as NCFM's --softlabel; -s teacher_hard_epochs=N keeps the set's labels for the last N")
    e.add_argument("--protocol-lr", action="store_true",
                   help="train with the protocol's lr even when the set learned its own (lad's syn_lr)")
    e.add_argument("--json", help="write the result as JSON here")
    e.add_argument("--plot", metavar="FILE.png", help="per-class accuracy bars, head to tail, mean ± std over runs")
    e.add_argument("--checkpoint", metavar="FILE.ckpt",
                   help="resumable: the training state is written here every twentieth of the epochs and after "
                        "every run; run the same command again to continue an interrupted evaluation (the file "
                        "is removed when it finishes)")
    common(e)
    e.set_defaults(func=cmd_evaluate)

    t = sub.add_parser("teacher", help="train a teacher on the long-tailed split (for soft labels)",
                       epilog=_registries(), formatter_class=fmt)
    data_flags(t, required=True)
    t.add_argument("--net")
    t.add_argument("--epochs", type=int)
    t.add_argument("--lr", type=float)
    t.add_argument("--batch-size", type=int)
    t.add_argument("--out", required=True)
    t.add_argument("--checkpoint", metavar="FILE.ckpt",
                   help="resumable: the training state is written here every twentieth of the epochs; the same "
                        "command continues an interrupted training (the file is removed when it finishes)")
    common(t)
    t.set_defaults(func=cmd_teacher, runs=None, labels=None)

    r = sub.add_parser("run", help="distill, train the preset's teacher (if any) and evaluate, in one folder",
                       epilog=_registries(), formatter_class=fmt)
    data_flags(r)
    r.add_argument("--ipc", type=int)
    r.add_argument("--method")
    r.add_argument("--out", required=True, metavar="DIR",
                   help="the run's folder: set.pt, teacher.pt, result.json, per_class.png (a rerun continues it)")
    r.add_argument("--eval-set", action="append", metavar="KEY=VALUE", help="evaluation override (-s is distill's)")
    common(r)
    r.set_defaults(func=cmd_run)

    xp = sub.add_parser("experts", help="train (or finish) LAD's expert trajectories for a split, cached",
                        epilog=_registries(), formatter_class=fmt)
    data_flags(xp)
    xp.add_argument("--net")
    common(xp)
    xp.set_defaults(func=cmd_experts, method="lad", ipc=None, download=False, resume=False)

    lb = sub.add_parser("label", help="write a teacher's soft labels (optionally ADSA-calibrated) into a set")
    lb.add_argument("set_path")
    lb.add_argument("--teacher", required=True)
    lb.add_argument("--out", required=True)
    lb.add_argument("--calibrate", choices=["none", "adsa"])
    lb.add_argument("--tau", type=float, help="fix the logit-adjustment strength instead of searching it")
    lb.add_argument("--temperature", type=float, default=1.0)
    lb.add_argument("--device")
    lb.set_defaults(func=cmd_label)

    m = sub.add_parser("demo", help="end-to-end run on the embedded digits dataset (no download)")
    m.add_argument("--out", default="demo_out")
    m.add_argument("--quick", action="store_true", help="a much shorter schedule (seconds)")
    m.add_argument("--quiet", action="store_true")
    m.add_argument("--workers", type=int, help="parallel processes (default: one per core, at most 2)")
    m.set_defaults(func=cmd_demo)

    c = sub.add_parser("compare", help="several evaluation results side by side (table, and bars with --plot)")
    c.add_argument("results", nargs="+", metavar="RESULT.json", help="files written by `evaluate --json`")
    c.add_argument("--plot", metavar="FILE.png", help="the per-class bars of all results in one figure")
    c.add_argument("--title")
    c.set_defaults(func=cmd_compare)

    x = sub.add_parser("export", help="write a set as an ImageFolder of PNGs")
    x.add_argument("set_path")
    x.add_argument("out_dir")
    x.add_argument("--raw", action="store_true",
                   help="multi-formation sets: write the stored mosaics instead of the decoded images")
    x.set_defaults(func=cmd_export)

    i = sub.add_parser("info", help="describe a distilled set, or a dataset (--dataset) with a class-count chart")
    i.add_argument("set_path", nargs="?")
    data_flags(i)
    i.add_argument("--plot", metavar="FILE.png", help="with --dataset: the chart (default <dataset>_class_counts.png)")
    i.set_defaults(func=cmd_info)

    ls = sub.add_parser("list", help="registered methods, nets, datasets and presets")
    ls.add_argument("--keys", metavar="METHOD", help="also list the config keys of this method")
    ls.set_defaults(func=cmd_list)
    return p


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    """ltdistill's own warnings on one line; anything else as Python formats it."""
    if "ltdistill" in str(filename):
        return f"ltdistill: warning: {message}\n"
    return _PYTHON_FORMAT(message, category, filename, lineno, line)


_PYTHON_FORMAT = __import__("warnings").formatwarning


def main(argv: list[str] | None = None) -> int:
    import warnings

    warnings.formatwarning = _one_line_warning
    parser = build_parser()
    args = parser.parse_args(argv)
    from .distributed import exit_rank, finish, shutdown

    rc = 1
    try:
        rc = int(args.func(args) or 0)
        finish()  # every rank reaches the end before any tears its connections down
    except LtdError as e:
        print(f"ltdistill: error: {e}", file=sys.stderr)
        rc = 2
    except KeyboardInterrupt:
        print("ltdistill: interrupted", file=sys.stderr)
        rc = 130
    finally:
        joined = shutdown()
    if joined:
        exit_rank(rc)
    return rc




if __name__ == "__main__":
    sys.exit(main())
