"""What a new user meets: unwritable outputs, file modes, leftover checkpoints, progress in
logs, exports of multi-formation sets, ADSA at its grid's edge, provenance."""

from __future__ import annotations

import io
import os
import stat
import warnings

import pytest
import torch

from ltdistill.artifact import DistilledSet, export_imagefolder, load_set, save_set
from ltdistill.calibration import adsa_search
from ltdistill.cli import main
from ltdistill.progress import PlainProgress, progress_bar
from ltdistill.utils import atomic_write_bytes, check_writable


def run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


DIGITS = ("--dataset", "digits", "--imbalance", "10", "--ipc", "2", "--quiet", "-s", "device=cpu")


@pytest.mark.parametrize("cmd", [
    ["distill", *DIGITS, "--out", "/proc/ltdistill-test/set.pt"],
    ["demo", "--quick", "--out", "/proc/ltdistill-test"],
    ["teacher", "--dataset", "digits", "--out", "/proc/ltdistill-test/t.pt", "--epochs", "1"],
])
def test_unwritable_output_is_one_line_before_any_work(capsys, cmd):
    code, out, err = run(capsys, *cmd)
    assert code == 2 and err.startswith("ltdistill: error: cannot write --out /proc/ltdistill-test")
    assert "Traceback" not in err and err.count("\n") == 1 and "distilled" not in out


def test_output_that_is_a_folder(tmp_path, capsys):
    code, _, err = run(capsys, "distill", *DIGITS, "--out", str(tmp_path))
    assert code == 2 and "is a folder" in err


def test_outputs_respect_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_bytes(tmp_path / "a.bin", b"x")
        assert stat.S_IMODE((tmp_path / "a.bin").stat().st_mode) == 0o644
        os.umask(0o077)
        atomic_write_bytes(tmp_path / "b.bin", b"x")
        assert stat.S_IMODE((tmp_path / "b.bin").stat().st_mode) == 0o600
    finally:
        os.umask(old)


def test_checkpoint_removed_after_success_unless_kept(tmp_path, capsys):
    base = ["distill", *DIGITS, "--method", "dm", "-s", "iterations=3", "-s", "checkpoint_every=1",
            "-s", "batch_real=8"]
    code, _, _ = run(capsys, *base, "--out", str(tmp_path / "a.pt"))
    assert code == 0 and (tmp_path / "a.pt").is_file() and not (tmp_path / "a.ckpt").exists()
    assert (tmp_path / "a.loss.jsonl").is_file()
    code, _, _ = run(capsys, *base, "--out", str(tmp_path / "b.pt"), "--keep-checkpoint")
    assert code == 0 and (tmp_path / "b.ckpt").is_file()


def test_plain_progress_lines_when_not_a_terminal():
    buf = io.StringIO()
    with progress_bar(total=1000, desc="distill", stream=buf) as bar:
        assert isinstance(bar, PlainProgress)
        for _ in range(1000):
            bar.update(1)
            bar.set_postfix(loss="1.0")
    lines = buf.getvalue().splitlines()
    assert len(lines) == 20  # every 5 %
    assert lines[0].startswith("distill: 50/1000 (5%) loss=1.0") and lines[-1].startswith("distill: 1000/1000 (100%)")
    assert "\r" not in buf.getvalue()


def test_check_writable_creates_the_folder(tmp_path):
    p = check_writable(tmp_path / "new" / "deeper" / "set.pt")
    assert p.parent.is_dir() and list(p.parent.iterdir()) == []


def _mosaic_set(factor: int = 2) -> DistilledSet:
    g = torch.Generator().manual_seed(0)
    return DistilledSet(images=torch.randn(4, 3, 16, 16, generator=g), labels=torch.tensor([0, 0, 1, 1]),
                        class_names=["a", "b"], mean=[0.5] * 3, std=[0.25] * 3, dataset={"name": "toy"},
                        method="dm", config={}, seed=0, factor=factor)


def test_export_writes_decoded_tiles_by_default(tmp_path, capsys):
    from PIL import Image

    s = _mosaic_set()
    export_imagefolder(s, tmp_path / "dec")
    files = sorted((tmp_path / "dec").glob("*/*.png"))
    assert len(files) == 16 and Image.open(files[0]).size == (16, 16)  # tiles upsampled, as evaluation sees them
    save_set(s, tmp_path / "s.pt")
    code, out, _ = run(capsys, "export", str(tmp_path / "s.pt"), str(tmp_path / "raw"), "--raw")
    files = sorted((tmp_path / "raw").glob("*/*.png"))
    assert code == 0 and "mosaics" in out and len(files) == 4 and Image.open(files[0]).size == (16, 16)


def test_adsa_warns_when_tau_is_on_the_grid_edge():
    torch.manual_seed(0)
    labels = torch.arange(4).repeat_interleave(5)
    prior = torch.tensor([0.7, 0.2, 0.07, 0.03])
    # logits that favour the head strongly: the spread keeps falling past a tiny grid
    logits = torch.randn(20, 4) + 6 * torch.log(prior)
    with pytest.warns(UserWarning, match="edge of its search grid"):
        res = adsa_search(logits, labels, prior, hi=0.5)
    assert res.at_edge and res.tau == pytest.approx(0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = adsa_search(logits, labels, prior, hi=12.0)
    assert not res.at_edge


def test_artifact_records_version_and_commit(tmp_path, capsys):
    code, _, _ = run(capsys, "distill", *DIGITS, "--out", str(tmp_path / "s.pt"))
    prov = load_set(tmp_path / "s.pt").provenance
    assert code == 0 and prov["library_version"]
    if (os.path.isdir(os.path.join(os.path.dirname(__file__), "..", ".git"))):
        assert prov["commit"] and len(prov["commit"].split("+")[0]) >= 7


def test_report_without_matplotlib_writes_the_rest(tmp_path, monkeypatch, capsys):
    import shutil

    from .conftest import REPO
    from .test_bench_tools import _bench

    report = _bench("report")
    shutil.copy(REPO / "bench/results/accuracy.jsonl", tmp_path / "accuracy.jsonl")
    monkeypatch.setattr(report, "have_matplotlib", lambda: False)
    assert report.main(["--results", str(tmp_path), "--no-readme"]) == 0
    out = capsys.readouterr().out
    assert "skipped per_class_if100_cpu-v1.png: matplotlib is not installed" in out
    assert (tmp_path / "ACCURACY.md").is_file() and not list(tmp_path.glob("*.png"))


def test_readme_is_short_and_its_tables_are_generated():
    import json

    from .conftest import REPO
    from .test_bench_tools import _bench

    report = _bench("report")
    text = (REPO / "README.md").read_text()
    assert len(text) < 10_000
    rows = [json.loads(x) for x in (REPO / "bench/results/accuracy.jsonl").read_text().splitlines() if x.strip()]
    # regenerating the blocks changes nothing: the README's numbers are the JSONL's
    assert report.replace_block(text, "results", report.readme_results(rows)) == text
    assert report.replace_block(text, "demo", report.readme_demo(REPO / "bench/results/demo.json")) == text
