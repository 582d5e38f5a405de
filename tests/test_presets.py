"""Presets: deep merging, method-specific keys, and the presets that name a benchmark cell
reproduce it exactly (compared with bench/accuracy.py's own cell configs)."""

from __future__ import annotations

import dataclasses
import json

import pytest

from ltdistill.cli import build_distill_config, build_eval_config, build_parser, main
from ltdistill.config import deep_merge, list_presets, load_yaml, to_dict
from ltdistill.errors import ConfigError

from .conftest import REPO
from .test_bench_tools import _bench


def _distill_cfg(*argv: str, notes: list | None = None):
    return build_distill_config(build_parser().parse_args(["distill", *argv]), notes)


def test_deep_merge_later_keys_win_key_by_key():
    a = {"options": {"extractor": "pool", "factor": 2, "iterations": 20000}, "ipc": 10}
    b = {"options": {"iterations": 1000}, "eval": {"epochs": 300}}
    assert deep_merge(a, b) == {"options": {"extractor": "pool", "factor": 2, "iterations": 1000}, "ipc": 10,
                                "eval": {"epochs": 300}}
    assert a["options"]["iterations"] == 20000  # inputs untouched


def test_stacked_presets_keep_the_second_pipeline():
    cfg = _distill_cfg("--preset", "pipeline-ncfm", "--preset", "cpu", "--method", "csdm")
    o = cfg.options
    assert (o.extraction.extractor, o.synthetic.factor, o.synthetic.optimizer, o.extraction.calib_weight) == (
        "pool", 2, "adamw", 1.0)
    assert (o.iterations, o.batch_real, o.num_freqs) == (1000, 64, 4096)


def test_preset_keys_a_method_lacks_are_skipped_and_named():
    notes: list[str] = []
    cfg = _distill_cfg("--preset", "pipeline-ncfm", "--method", "dm", notes=notes)
    assert cfg.options.extraction.extractor == "pool" and not hasattr(cfg.options, "num_freqs")
    assert notes == ["preset options not used by method 'dm': num_freqs"]
    notes = []
    cfg = _distill_cfg("--preset", "cpu", "--method", "random", notes=notes)  # random has no options
    assert "iterations" in notes[0] and "batch_real" in notes[0]


def test_a_key_no_method_knows_is_still_an_error(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("options:\n  num_freq: 4096\n")
    with pytest.raises(ConfigError, match="unknown config key 'options.num_freq'"):
        _distill_cfg("--preset", str(f), "--method", "csdm")
    f.write_text("per_method:\n  nosuch:\n    options:\n      lr_img: 1\n")
    with pytest.raises(ConfigError, match="unknown method"):
        _distill_cfg("--preset", str(f), "--method", "csdm")


def test_per_method_section_applies_to_its_method_only():
    assert _distill_cfg("--preset", "pipeline-ncfm", "--method", "csdm").options.loss_scale == 1800
    assert _distill_cfg("--preset", "pipeline-ncfm", "--method", "ncfm").options.loss_scale == 300
    # an explicit override still wins over the preset
    assert _distill_cfg("--preset", "pipeline-ncfm", "--method", "csdm", "-s", "loss_scale=5").options.loss_scale == 5


def test_split_seed_zero_is_kept():
    assert _distill_cfg("--split-seed", "0").data.split_seed == 0


def test_spectral_defaults_are_the_benchmarked_settings():
    for m in ("mmd", "sdd", "csdm", "ncfm"):
        assert _distill_cfg("--method", m).options.synthetic.lr_img == 10.0
    assert _distill_cfg("--method", "dm").options.synthetic.lr_img == 1.0


def _cells_of(proto: str, pipeline: str, variants: dict) -> list[str]:
    """Methods the benchmark has a cell for under (protocol, pipeline) with the preset's variant."""
    rows = [json.loads(x) for x in (REPO / "bench/results/accuracy.jsonl").read_text().splitlines() if x.strip()]
    return sorted({r["method"] for r in rows if r["protocol"] == proto and r["pipeline"] == pipeline
                   and r["net"] == "convnet" and r["labels"] == "hard" and r.get("seed", 0) == 0
                   and r.get("variant", "") == variants.get(r["method"], "") and r["method"] != "full"})


REPRODUCING = [p for p in list_presets() if "reproduces" in load_yaml(p)]


def test_some_presets_name_benchmark_cells():
    assert {"cpu", "pipeline-ncfm-cpu"} <= set(REPRODUCING)


@pytest.mark.parametrize("preset", REPRODUCING)
def test_preset_reproduces_its_benchmark_cells(preset):
    acc = _bench("accuracy")
    meta = load_yaml(preset)["reproduces"]
    proto, pipeline, variants = meta["protocol"], meta["pipeline"], meta.get("variants") or {}
    methods = _cells_of(proto, pipeline, variants)
    assert len(methods) >= 3, methods
    for imb in (10, 100, 200):
        for m in methods:
            variant = variants.get(m, "")
            overrides = acc.variant_overrides(variant, m) if variant else []
            want = acc.distill_config(imb, m, proto, "/data", 0, pipeline, None, overrides)
            got = _distill_cfg("--preset", f"cifar10-lt-if{imb}", "--preset", preset, "--method", m,
                               "--data-root", "/data")
            assert to_dict(got) == to_dict(want), (preset, m, imb)
    args = build_parser().parse_args(["evaluate", "x.pt", "--preset", preset])
    got_eval = build_eval_config(args)
    want_eval = acc.eval_config("convnet", "hard", proto, 0, "", pipeline)
    # labels: the cell says "hard" for a hard-label set, the preset leaves "auto" (= hard on such a set)
    assert dataclasses.replace(got_eval, labels="hard") == want_eval


def test_print_config_of_stacked_presets_cli(capsys):
    assert main(["distill", "--preset", "pipeline-ncfm", "--method", "dm", "--print-config"]) == 0
    out = capsys.readouterr()
    assert json.loads(out.out)["options"]["extraction"]["extractor"] == "pool"
    assert "not used by method 'dm': num_freqs" in out.err


STRONGEST_POINTS = [
    {"method": "csdm", "labels": "teacher", "eval": "ncfm", "eval_length": "3x", "calibration": "fused", "factor": 2,
     "budget": "1x"},
    {"method": "dm", "labels": "hard", "eval": "dm", "eval_length": "1x", "calibration": "step", "factor": 4,
     "budget": "4x-batch"},
    {"method": "csdm", "labels": "teacher", "eval": "ncfm", "eval_length": "3x", "teacher_length": "3x",
     "calibration": "fused", "factor": 2, "budget": "1x", "label_mix": 0.5},  # bench/strongest.py --follow-up
]


@pytest.mark.parametrize("point", STRONGEST_POINTS, ids=["csdm-teacher", "dm-hard", "csdm-teacher-mix"])
def test_strongest_preset_builds_the_test_stages_configs(point, tmp_path):
    """bench/strongest.py's preset text, read back by the CLI, is the distillation, evaluation
    and teacher config its test stage runs: `ltdistill run --preset strongest-cpu` is that recipe."""
    st = _bench("strongest")
    path = tmp_path / "strongest.yaml"
    path.write_text(st.preset_text(point, score=50.0))
    cfg, ecfg, tcfg = st.configs(point, "strongest-v1", "/data", 0, "test", 100)
    assert to_dict(_distill_cfg("--preset", str(path), "--data-root", "/data")) == to_dict(cfg)
    assert build_eval_config(build_parser().parse_args(["evaluate", "x.pt", "--preset", str(path)])) == ecfg
    teacher_args = build_parser().parse_args(["teacher", "--dataset", "cifar10", "--out", "t.pt", "--preset", str(path)])
    assert (("teacher" in load_yaml(str(path))) == (tcfg is not None))
    if tcfg is not None:
        assert build_eval_config(teacher_args, "teacher") == tcfg
    with pytest.raises(SystemExit, match="ltdistill label"):
        st.preset_text({**point, "labels": "adsa"})


@pytest.mark.parametrize("preset", [p for p in list_presets() if "chosen_by" in load_yaml(p)])
def test_a_chosen_preset_is_what_its_search_chose(preset):
    """A committed preset with ``chosen_by`` is exactly what bench/strongest.py writes for
    the point and score it names (regenerate it after the search changes)."""
    st = _bench("strongest")
    meta = load_yaml(preset)["chosen_by"]
    want = st.preset_text(meta["point"], meta["protocol"], meta.get("validation_balanced_acc"))
    assert (REPO / "src" / "ltdistill" / "presets" / f"{preset}.yaml").read_text() == want
