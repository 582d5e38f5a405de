"""Class-sharded distillation and run-sharded evaluation on torch.distributed (gloo, CPU).

Each torchrun launch here costs a few seconds (every worker imports torch); the runs are
tiny (digits, 10 classes, a few iterations). 10 classes over 4 processes also covers a
class count the world size does not divide."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import ltdistill as ld
from ltdistill.distributed import DistInfo, shard

HERE = Path(__file__).resolve().parent
ARGS = ["--dataset", "digits", "--imbalance", "10", "--ipc", "2", "--seed", "3", "--device", "cpu",
        "-s", "batch_real=16", "-s", "threads=1", "-s", "checkpoint_every=2", "-s", "log_every=2"]


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("WORLD_SIZE", None)
    env.pop("RANK", None)
    return env


def torchrun(n: int, *args: str, script: str | None = None, env: dict | None = None, timeout: int = 240):
    target = [script] if script else ["-m", "ltdistill"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(n), *target, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env={**_env(), **(env or {})})


def one_process(*args: str):
    return subprocess.run([sys.executable, "-m", "ltdistill", *args], capture_output=True, text=True, timeout=240,
                          env=_env())


def test_classes_are_dealt_round_robin_and_cover_everything():
    for world in (1, 2, 3, 4):
        owned = [shard(10, r, world) for r in range(world)]
        assert sorted(c for o in owned for c in o) == list(range(10))
        assert max(map(len, owned)) - min(map(len, owned)) <= 1
    assert DistInfo(1, 4).classes(10) == [1, 5, 9]


@pytest.mark.parametrize("method", ["csdm"])
def test_the_set_does_not_depend_on_the_number_of_processes(tmp_path, method):
    sets = {}
    for n in (1, 2, 4):
        out = tmp_path / f"{method}{n}.pt"
        r = torchrun(n, "distill", "--method", method, *ARGS, "-s", "iterations=4", "--out", str(out))
        assert r.returncode == 0, r.stderr[-3000:]
        sets[n] = ld.load_set(out)
        assert sets[n].config["world_size"] == n
        assert json.loads(out.with_suffix(".config.json").read_text())["world_size"] == n
        assert not list(tmp_path.glob(f"{method}{n}.ckpt*"))  # removed once the set is saved
    assert torch.equal(sets[1].images, sets[2].images) and torch.equal(sets[1].images, sets[4].images)
    logs = [(tmp_path / f"{method}{n}.loss.jsonl").read_text().splitlines() for n in (1, 4)]
    assert [json.loads(x)["loss"] for x in logs[0]] == [json.loads(x)["loss"] for x in logs[1]]


CODE = ["-s", "calib_mode=step", "-s", "interp_init=saved", "-s", "lr_schedule=plateau", "-s", "plateau_patience=0",
        "-s", "init_resize=nearest"]


@pytest.mark.parametrize("code", [False, True], ids=["fused", "ncfm-code"])
def test_second_pipeline_parts_shard_too(code, tmp_path):
    """Pool extractor (rank 0 trains it, the others read it), factor 2, unit pixels,
    per-class AdamW steps and the calibration term (fused, or as NCFM's code: its own steps,
    with the saved-init interpolation and the plateau schedule): still the same set."""
    extra = [*(CODE if code else []), "-s", "extractor=pool", "-s", "pool_size=2", "-s", "pool_epochs=1", "-s", f"pool_dir={tmp_path / 'pool'}",
             "-s", "factor=2", "-s", "pixel_space=unit", "-s", "per_class_steps=true", "-s", "optimizer=adamw",
             "-s", "weight_decay=5e-4", "-s", "calib_weight=1", "-s", "lr_img=0.01", "-s", "iterations=3"]
    for n in (1, 2):
        r = torchrun(n, "distill", "--method", "csdm", *ARGS, *extra, "--out", str(tmp_path / f"p{n}.pt"))
        assert r.returncode == 0, r.stderr[-3000:]
    assert torch.equal(ld.load_set(tmp_path / "p1.pt").images, ld.load_set(tmp_path / "p2.pt").images)


def test_a_killed_rank_stops_the_others_cleanly_and_resume_gives_the_uninterrupted_set(tmp_path):
    args = ["distill", "--method", "dm", *ARGS, "-s", "iterations=10"]
    out = tmp_path / "k.pt"
    r = torchrun(2, *args, "--out", str(out), script=str(HERE / "dist" / "kill_rank.py"),
                 env={"KILL_RANK": "1", "KILL_AT": "6"}, timeout=120)
    assert r.returncode != 0
    assert "ltdistill: error: rank 0 of 2" in r.stderr and "--resume" in r.stderr
    manifest = json.loads((tmp_path / "k.ckpt.json").read_text())
    assert manifest["iteration"] == 4 and manifest["world_size"] == 2  # the last complete checkpoint
    assert not out.exists()
    r = torchrun(2, *args, "--out", str(out), "--resume")
    assert r.returncode == 0, r.stderr[-3000:]
    ref = one_process(*args, "--out", str(tmp_path / "ref.pt"))
    assert ref.returncode == 0, ref.stderr[-3000:]
    assert torch.equal(ld.load_set(out).images, ld.load_set(tmp_path / "ref.pt").images)
    losses = [json.loads(x)["iteration"] for x in (tmp_path / "k.loss.jsonl").read_text().splitlines()]
    assert losses == [2, 4, 6, 8, 10]  # the resumed run's log is continuous


def test_a_sharded_checkpoint_resumes_in_one_process(tmp_path):
    args = ["distill", "--method", "csdm", *ARGS, "-s", "iterations=6"]
    r = torchrun(2, *args, "--out", str(tmp_path / "k.pt"), script=str(HERE / "dist" / "kill_rank.py"),
                 env={"KILL_RANK": "0", "KILL_AT": "4"}, timeout=120)
    assert r.returncode != 0
    r = one_process(*args, "--out", str(tmp_path / "k.pt"), "--resume")
    assert r.returncode == 0, r.stderr[-3000:]
    ref = one_process(*args, "--out", str(tmp_path / "ref.pt"))
    assert ref.returncode == 0, ref.stderr[-3000:]
    assert torch.equal(ld.load_set(tmp_path / "k.pt").images, ld.load_set(tmp_path / "ref.pt").images)


def test_evaluation_runs_spread_over_ranks_give_one_process_numbers(tmp_path):
    s = tmp_path / "s.pt"
    assert one_process("distill", "--method", "random", *ARGS[:-8], "--out", str(s)).returncode == 0
    ev = ["evaluate", str(s), "--epochs", "3", "--runs", "3", "--device", "cpu", "-s", "threads=1",
          "-s", "compile=off"]
    r = torchrun(2, *ev, "--json", str(tmp_path / "two.json"))
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("wrote") == 1  # rank 0 alone reports and writes
    r = one_process(*ev, "--json", str(tmp_path / "one.json"))
    assert r.returncode == 0, r.stderr[-3000:]
    one, two = (json.loads((tmp_path / f"{k}.json").read_text()) for k in ("one", "two"))
    assert [x["acc"] for x in one["runs"]] == [x["acc"] for x in two["runs"]]
    assert one["per_class"] == two["per_class"] and two["config"]["world_size"] == 2


def _api_worker(rank: int, world: int, init: str, out: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    from ltdistill.config import apply_overrides
    from ltdistill.errors import ConfigError

    data = ld.load_lt_data("digits", imbalance=10)
    cfg = apply_overrides(ld.make_config("csdm", ipc=2, seed=3, device="cpu"),
                          ["iterations=3", "batch_real=16", "threads=1"])
    s = ld.distill(cfg, data)
    res = ld.evaluate_set(s, data, ld.EvalConfig(epochs=2, runs=3, device="cpu", threads=1, compile="off"))
    try:
        ld.distill(apply_overrides(ld.make_config("ncfm", ipc=2, device="cpu"),
                                   ["iterations=1", "adversarial=true", "threads=1"]), data)
        refused = ""
    except ConfigError as e:
        refused = str(e)
    if rank == 0:
        torch.save({"images": s.images, "accs": [r.acc for r in res.runs], "refused": refused}, out)
    dist.destroy_process_group()


def test_python_api_inside_a_group_the_user_manages(tmp_path):
    import torch.multiprocessing as mp

    out = tmp_path / "api.pt"
    init = f"file://{tmp_path / 'store'}"
    mp.spawn(_api_worker, args=(2, init, str(out)), nprocs=2, join=True)
    got = torch.load(out, weights_only=True)
    from ltdistill.config import apply_overrides

    torch.set_num_threads(1)
    data = ld.load_lt_data("digits", imbalance=10)
    s = ld.distill(apply_overrides(ld.make_config("csdm", ipc=2, seed=3, device="cpu"),
                                   ["iterations=3", "batch_real=16", "threads=1"]), data)
    res = ld.evaluate_set(s, data, ld.EvalConfig(epochs=2, runs=3, device="cpu", threads=1, compile="off"))
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    assert torch.equal(got["images"], s.images)
    assert got["accs"] == [r.acc for r in res.runs]
    assert "cannot be sharded" in got["refused"]
