"""CLI end to end on digits, and every bad input: one clear line, exit code 2, no traceback."""

import json

import pytest
import torch

from ltdistill.cli import main
from tests.helpers import fake_images, write_tar


def run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_distill_evaluate_export_info(tmp_path, capsys):
    s = tmp_path / "set.pt"
    code, out, _ = run(capsys, "distill", "--dataset", "digits", "--imbalance", "10", "--ipc", "3",
                       "--method", "kcenter", "--seed", "2", "--out", str(s), "--quiet", "-s", "device=cpu")
    assert code == 0 and "class counts [124, 96" in out
    assert s.is_file() and s.with_suffix(".png").is_file()
    cfg = json.loads(s.with_suffix(".config.json").read_text())
    assert cfg["method"] == "kcenter" and cfg["ipc"] == 3 and cfg["data"]["imbalance"] == 10
    j = tmp_path / "r.json"
    code, out, _ = run(capsys, "evaluate", str(s), "--epochs", "5", "--runs", "2", "--json", str(j), "--quiet")
    assert code == 0 and "accuracy (hard labels, 2 runs)" in out and "tail" in out
    r = json.loads(j.read_text())
    assert {"acc_mean", "acc_std", "per_class", "groups", "runs", "config", "dataset"} <= set(r)
    assert len(r["per_class"]) == 10 and set(r["groups"]) == {"head", "medium", "tail"}
    code, out, _ = run(capsys, "export", str(s), str(tmp_path / "exp"))
    assert code == 0 and len(list((tmp_path / "exp").glob("*/*.png"))) == 30
    code, out, _ = run(capsys, "info", str(s))
    assert code == 0 and json.loads(out)["ipc"] == 3


def test_full_reference_cli(capsys):
    code, out, _ = run(capsys, "evaluate", "--full", "--dataset", "digits", "--imbalance", "10",
                       "--epochs", "2", "--runs", "1", "--quiet")
    assert code == 0 and "full digits-LT IF 10 (503 images)" in out


def test_evaluate_checkpoint_is_removed_when_done_and_a_foreign_one_is_a_clear_error(tmp_path, capsys):
    ck = tmp_path / "full.ckpt"
    argv = ["evaluate", "--full", "--dataset", "digits", "--imbalance", "10", "--epochs", "2", "--runs", "2",
            "--quiet", "--checkpoint", str(ck)]
    code, out, _ = run(capsys, *argv)
    assert code == 0 and "full digits-LT IF 10" in out and not ck.exists()
    ck.write_bytes(b"not a checkpoint")
    code, _, err = run(capsys, *argv)
    assert code == 2 and f"evaluation checkpoint {ck} cannot be read" in err and "Traceback" not in err


def test_help_lists_registries(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "methods: " in out and "random" in out and "csdm" in out and "resnet18" in out


def test_print_config_and_list(capsys):
    code, out, _ = run(capsys, "distill", "--method", "herding", "--print-config", "-s", "embed_epochs=3")
    assert code == 0 and json.loads(out)["options"]["embed_epochs"] == 3
    code, out, _ = run(capsys, "list", "--keys", "kcenter")
    assert code == 0 and "options.net" in out


def _bad_tar_root(tmp_path):
    x, y = fake_images(2, 10)
    names = [f"c{i}" for i in range(10)]
    write_tar(tmp_path, "train", x, y, names)
    write_tar(tmp_path, "test", x, y, names)
    return tmp_path


BAD = {
    "missing data root": (["distill", "--data-root", "/no/such/dir"], "does not exist"),
    "ipc 0": (["distill", "--dataset", "digits", "--ipc", "0"], "ipc must be at least 1"),
    "unknown method": (["distill", "--dataset", "digits", "--method", "magic"], "unknown method 'magic'"),
    "unknown override": (["distill", "--dataset", "digits", "-s", "lr=3"], "unknown config key 'lr'"),
    "bad override type": (["distill", "--dataset", "digits", "-s", "ipc=x"], "expects an integer"),
    "unknown dataset": (["distill", "--dataset", "mnist"], "unknown dataset 'mnist'"),
    "unknown preset": (["distill", "--preset", "nope"], "no config file or preset"),
    "missing set": (["evaluate", "/no/set.pt"], "no distilled set"),
    "no set given": (["evaluate"], "give a distilled set"),
    "unknown device": (["distill", "--dataset", "digits", "--device", "tpu9"], "device"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_one_clear_line(case, capsys, tmp_path):
    argv, msg = BAD[case]
    code, out, err = run(capsys, *argv, "--out", str(tmp_path / "o.pt")) if argv[0] == "distill" else run(capsys, *argv)
    assert code == 2
    assert err.startswith("ltdistill: error:") and msg in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_unknown_net_and_too_few_images(capsys, tmp_path):
    s = tmp_path / "s.pt"
    assert run(capsys, "distill", "--dataset", "digits", "--ipc", "1", "--out", str(s), "--quiet")[0] == 0
    code, _, err = run(capsys, "evaluate", str(s), "--net", "lenet5")
    assert code == 2 and "unknown net 'lenet5'" in err
    root = _bad_tar_root(tmp_path / "d")
    code, _, err = run(capsys, "distill", "--dataset", "cifar10", "--data-root", str(root), "--imbalance", "1",
                       "--out", str(tmp_path / "x.pt"))
    assert code == 2 and "has 2 training images but the long-tailed split" in err


def test_unknown_artifact_version_cli(capsys, tmp_path):
    s = tmp_path / "s.pt"
    run(capsys, "distill", "--dataset", "digits", "--ipc", "1", "--out", str(s), "--quiet")
    d = torch.load(s, weights_only=True)
    d["format_version"] = 7
    torch.save(d, s)
    code, _, err = run(capsys, "evaluate", str(s))
    assert code == 2 and "format version 7" in err


def test_demo_quick(tmp_path, capsys):
    code, out, _ = run(capsys, "demo", "--quick", "--out", str(tmp_path / "demo"), "--quiet")
    assert code == 0 and "full-LT-data" in out and "random" in out
    res = json.loads((tmp_path / "demo" / "results.json").read_text())
    assert set(res["results"]) >= {"random", "kcenter", "herding", "full-LT-data"}


TINY_RUN = """method: dm
ipc: 2
options:
  iterations: 3
  batch_real: 16
teacher:
  epochs: 2
  logit_adjust: 1.0
eval:
  epochs: 3
  runs: 1
  teacher_hard_epochs: 1
"""


def test_run_distills_trains_the_presets_teacher_evaluates_and_continues(tmp_path, capsys):
    """``ltdistill run``: one folder with the set, the teacher of the preset's ``teacher``
    section (its settings, not the evaluation's) and the result of an evaluation taught by it;
    a rerun redoes nothing, a lost result is re-evaluated alone, other settings are refused."""
    preset = tmp_path / "tiny.yaml"
    preset.write_text(TINY_RUN)
    out = tmp_path / "run"
    argv = ["run", "--dataset", "digits", "--imbalance", "10", "--preset", str(preset), "--out", str(out),
            "--quiet", "--device", "cpu", "--seed", "1"]
    code, stdout, _ = run(capsys, *argv)
    assert code == 0 and "accuracy (teacher labels, 1 runs)" in stdout
    r = json.loads((out / "result.json").read_text())
    assert r["method"] == "dm" and r["config"]["teacher"] == str(out / "teacher.pt") and len(r["runs"]) == 1
    t = torch.load(out / "teacher.pt", weights_only=True)
    assert t["config"]["epochs"] == 2 and t["config"]["logit_adjust"] == 1.0 and t["seed"] == 1
    assert (out / "per_class.png").is_file() and not (out / "eval.ckpt").exists()
    stamps = {p: p.stat().st_mtime_ns for p in (out / "set.pt", out / "teacher.pt", out / "result.json")}
    code, stdout, err = run(capsys, *argv)
    assert code == 0 and "finished run" in stdout and "using the finished set" in err
    assert all(p.stat().st_mtime_ns == m for p, m in stamps.items())
    (out / "result.json").unlink()
    code, stdout, _ = run(capsys, *argv)
    assert code == 0 and json.loads((out / "result.json").read_text())["acc_mean"] == r["acc_mean"]
    assert all(p.stat().st_mtime_ns == m for p, m in stamps.items() if p.name != "result.json")
    code, _, err = run(capsys, *argv, "-s", "options.iterations=4")
    assert code == 2 and "holds a run with other settings" in err and "Traceback" not in err


def test_teacher_command_reads_the_presets_teacher_section(tmp_path, capsys):
    preset = tmp_path / "tiny.yaml"
    preset.write_text(TINY_RUN)
    out = tmp_path / "t.pt"
    code, _, _ = run(capsys, "teacher", "--dataset", "digits", "--imbalance", "10", "--preset", str(preset),
                     "--out", str(out), "--quiet")
    assert code == 0 and torch.load(out, weights_only=True)["config"]["epochs"] == 2
