"""Pictures and experiment logging: loss plot, per-class plots, compare, TensorBoard and
W&B (offline), and the one-line error when an extra is missing."""

from __future__ import annotations

import glob
import json
import struct

import pytest
from PIL import Image

from ltdistill.cli import main

DIGITS = ("--dataset", "digits", "--imbalance", "10", "--ipc", "2", "-s", "device=cpu")
SHORT = ("--method", "dm", "-s", "iterations=20", "-s", "batch_real=16", "-s", "log_every=5")


def run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def two_results(tmp_path_factory):
    """Two evaluated digits sets (dm, random) with their JSON results."""
    d = tmp_path_factory.mktemp("pics")
    for m, extra in (("dm", SHORT[2:]), ("random", ())):
        assert main(["distill", *DIGITS, "--method", m, *extra, "--out", str(d / f"{m}.pt"), "--quiet"]) == 0
        assert main(["evaluate", str(d / f"{m}.pt"), "--epochs", "3", "--runs", "2", "--json", str(d / f"{m}.json"),
                     "--quiet", "--plot", str(d / f"{m}_per_class.png")]) == 0
    return d


def test_distill_writes_the_loss_plot(two_results):
    png = two_results / "dm.loss.png"
    im = Image.open(png)
    assert im.format == "PNG" and im.size == (600, 340)
    assert not (two_results / "random.loss.png").exists()  # nothing iterative, no curve


def test_evaluate_plot_and_result_fields(two_results):
    im = Image.open(two_results / "dm_per_class.png")
    assert im.format == "PNG" and im.size[0] >= 600 and im.size[1] == 420
    r = json.loads((two_results / "dm.json").read_text())
    assert r["group_classes"] == {"head": [0, 1, 2], "medium": [3, 4, 5, 6], "tail": [7, 8, 9]}
    assert len(r["class_names"]) == 10 and len(r["runs"]) == 2


def test_compare_table_and_plot(two_results, capsys):
    png = two_results / "cmp.png"
    code, out, _ = run(capsys, "compare", str(two_results / "dm.json"), str(two_results / "random.json"),
                       "--plot", str(png))
    assert code == 0
    lines = out.splitlines()
    assert "dm" in lines[0] and "random" in lines[0]
    assert lines[2].startswith("overall") and any(x.startswith("tail") for x in lines)
    per_class = [x for x in lines[lines.index("per class (training count):") + 1 :] if x.startswith("  ")]
    assert len(per_class) == 10 and per_class[-1].split()[:2] == ["9", "(12)"]  # one row per class, head to tail
    assert Image.open(png).size[1] == 420


def test_compare_bad_input(tmp_path, capsys):
    (tmp_path / "x.json").write_text("{not json")
    code, _, err = run(capsys, "compare", str(tmp_path / "x.json"))
    assert code == 2 and "not a JSON result file" in err
    code, _, err = run(capsys, "compare", str(tmp_path / "missing.json"))
    assert code == 2 and "no result file" in err


def test_loss_plot_is_log_scaled_over_decades(tmp_path):
    from ltdistill.plots import plot_loss

    log = tmp_path / "l.jsonl"
    log.write_text("".join(json.dumps({"iteration": i, "loss": 10.0 ** (4 - i / 10)}) + "\n" for i in range(1, 50)))
    import matplotlib.pyplot as plt

    seen = {}
    orig = plt.Axes.set_yscale

    def spy(self, v, **kw):
        seen["scale"] = v
        return orig(self, v, **kw)

    plt.Axes.set_yscale = spy
    try:
        plot_loss(log, tmp_path / "l.png")
    finally:
        plt.Axes.set_yscale = orig
    assert seen.get("scale") == "log" and (tmp_path / "l.png").is_file()


def test_tensorboard_events_hold_the_tags(tmp_path, capsys):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tb = tmp_path / "tb"
    code, _, _ = run(capsys, "distill", *DIGITS, *SHORT, "--out", str(tmp_path / "s.pt"), "--quiet",
                     "--tensorboard", str(tb / "distill"), "--log-images-every", "10")
    assert code == 0
    code, _, _ = run(capsys, "evaluate", str(tmp_path / "s.pt"), "--epochs", "4", "--runs", "2", "--quiet",
                     "--tensorboard", str(tb / "eval"))
    assert code == 0
    ea = EventAccumulator(str(tb / "distill"), size_guidance={"images": 0, "scalars": 0})
    ea.Reload()
    assert [e.step for e in ea.Scalars("distill/loss")] == [5, 10, 15, 20]
    assert [e.step for e in ea.Scalars("distill/lr_img")] == [5, 10, 15, 20]
    assert [e.step for e in ea.Images("distill/synthetic")] == [10, 20]
    ev = EventAccumulator(str(tb / "eval"), size_guidance={"scalars": 0})
    ev.Reload()
    tags = set(ev.Tags()["scalars"])
    assert {"eval/acc", "eval/head", "eval/medium", "eval/tail", "eval/train_loss", "eval/lr",
            "eval/acc_mean"} <= tags
    assert [e.step for e in ev.Scalars("eval/acc")] == [0, 1]
    assert len(ev.Scalars("eval/train_loss")) == 8  # 4 epochs x 2 runs


def _wandb_keys(path: str) -> set[tuple[str, str]]:
    """History and summary keys of an offline W&B run file (LevelDB-style log of protobuf
    records: 7-byte header, 32 KiB blocks, 7-byte record headers of crc, length, type)."""
    from wandb.proto import wandb_internal_pb2 as pb

    b = open(path, "rb").read()
    assert b[:4] == b":W&B"
    pos, block, recs, buf = 7, 32768, [], b""
    while pos + 7 <= len(b):
        if block - pos % block < 7:
            pos += block - pos % block
            continue
        _, n, kind = struct.unpack("<IHB", b[pos : pos + 7])
        pos += 7
        if n == 0 and kind == 0:
            break
        data, pos = b[pos : pos + n], pos + n
        if kind == 1:
            recs.append(data)
        elif kind == 2:
            buf = data
        elif kind == 3:
            buf += data
        elif kind == 4:
            recs.append(buf + data)
    keys = set()
    for d in recs:
        r = pb.Record()
        r.ParseFromString(d)
        kind = r.WhichOneof("record_type")
        if kind == "history":
            keys |= {(kind, i.key or "/".join(i.nested_key)) for i in r.history.item}
        elif kind == "summary":
            keys |= {(kind, i.key or "/".join(i.nested_key)) for i in r.summary.update}
    return keys


def test_wandb_offline_run_has_the_keys(tmp_path, capsys, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DISABLE_GIT", "true")
    code, _, _ = run(capsys, "distill", *DIGITS, *SHORT, "--out", str(tmp_path / "s.pt"), "--quiet",
                     "--wandb", "ltdistill-test", "--log-images-every", "10")
    assert code == 0
    runs = glob.glob(str(tmp_path / "wandb" / "offline-run-*" / "run-*.wandb"))
    assert len(runs) == 1
    keys = _wandb_keys(runs[0])
    assert {("history", "distill/loss"), ("history", "distill/lr_img"), ("history", "step")} <= keys
    assert any(k == "history" and v.startswith("distill/synthetic") for k, v in keys)  # an image: nested keys


def test_missing_extra_is_one_line(tmp_path, capsys, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in ("tensorboard", "wandb")
                        else real(name, *a))
    code, _, err = run(capsys, "distill", *DIGITS, "--out", str(tmp_path / "s.pt"), "--tensorboard", str(tmp_path))
    assert code == 2 and err == "ltdistill: error: --tensorboard needs the tensorboard extra: " \
                                "pip install 'ltdistill[tensorboard]'\n"
    code, _, err = run(capsys, "evaluate", str(tmp_path / "s.pt"), "--wandb", "p")
    assert code == 2 and "--wandb needs the wandb extra: pip install 'ltdistill[wandb]'" in err
    assert not (tmp_path / "s.pt").exists()


def test_resumed_run_has_one_continuous_loss_curve(tmp_path, capsys):
    base = ["distill", *DIGITS, "--method", "dm", "-s", "batch_real=8", "-s", "log_every=2", "-s", "checkpoint_every=2",
            "--out", str(tmp_path / "s.pt"), "--quiet"]
    assert run(capsys, *base, "-s", "iterations=4", "--keep-checkpoint")[0] == 0
    assert run(capsys, *base, "-s", "iterations=8", "--resume")[0] == 0
    log = [json.loads(x) for x in (tmp_path / "s.loss.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in log] == [2, 4, 6, 8]
    assert Image.open(tmp_path / "s.loss.png").size == (600, 340)
