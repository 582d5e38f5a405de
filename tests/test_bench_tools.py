"""The benchmark's bookkeeping: the tuned settings are exactly what the stored
coordinate search chose, an unfinished search is refused, and the report compares a
speed variant with the default row of its own pipeline."""

from __future__ import annotations

import importlib
import json
import sys

import pytest

from .conftest import REPO


def _bench(name: str):
    """Import ``bench/<name>.py`` (the scripts are not a package) without leaving bench/ on sys.path."""
    sys.path.insert(0, str(REPO / "bench"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(REPO / "bench"))


@pytest.fixture(scope="module")
def tune():
    return _bench("tune")


def _write(path, method, scores):
    """One stored trial per (point, score); points as bench/tune.py records them."""
    with open(path, "w") as f:
        for point, score in scores:
            f.write(json.dumps({"method": method, "protocol": "tune-v1", "seed": 0, "point": point,
                                "val_balanced_acc": score}) + "\n")


def test_best_overrides_replays_the_coordinate_search(tune, tmp_path, monkeypatch):
    monkeypatch.setitem(tune.SEARCH, "toy", [("lr_img", [10, 3, 30]), ("sigma", [1.0, 2.0])])
    f = tmp_path / "tuning.jsonl"
    _write(f, "toy", [
        ({"lr_img": 10, "sigma": 1.0}, 40.0),
        ({"lr_img": 3, "sigma": 1.0}, 41.0),   # best lr
        ({"lr_img": 30, "sigma": 1.0}, 39.0),
        ({"lr_img": 3, "sigma": 2.0}, 40.5),   # worse: sigma stays 1.0
        ({"lr_img": 30, "sigma": 2.0}, 99.0),  # never on the search path: must not be picked
    ])
    assert tune.best_overrides("toy", results=f) == ["lr_img=3", "sigma=1.0"]


def test_ties_keep_the_default_value(tune, tmp_path, monkeypatch):
    monkeypatch.setitem(tune.SEARCH, "toy", [("lr_img", [10, 3])])
    f = tmp_path / "tuning.jsonl"
    _write(f, "toy", [({"lr_img": 10}, 40.0), ({"lr_img": 3}, 40.0)])
    assert tune.best_overrides("toy", results=f) == ["lr_img=10"]


def test_unfinished_or_unknown_search_is_refused(tune, tmp_path, monkeypatch):
    monkeypatch.setitem(tune.SEARCH, "toy", [("lr_img", [10, 3]), ("sigma", [1.0, 2.0])])
    f = tmp_path / "tuning.jsonl"
    _write(f, "toy", [({"lr_img": 10, "sigma": 1.0}, 40.0), ({"lr_img": 3, "sigma": 1.0}, 41.0)])
    with pytest.raises(SystemExit, match="has not finished"):
        tune.best_overrides("toy", results=f)
    with pytest.raises(SystemExit, match="no tuning search"):
        tune.best_overrides("no-such-method", results=f)


def test_speed_variant_is_compared_with_its_own_pipeline():
    report = _bench("report")

    def row(pipeline, acc, variant=""):
        r = {"imbalance": 100, "method": "csdm", "net": "convnet", "labels": "hard", "pipeline": pipeline,
             "acc_mean": acc, "acc_std": 0.1, "tail": acc, "distill_seconds": 1.0}
        return {**r, "variant": variant} if variant else r

    rows = [row("dm", 44.3), row("ncfm", 53.3)]
    table = report.variant_table([row("dm", 44.0, "bf16")], rows)
    line = next(x for x in table if "bf16" in x)
    assert "44.3" in line and "53.3" not in line


def test_csdm_against_random_and_dm_calls_ties_by_the_spread():
    report = _bench("report")

    def r(acc, std):
        return {"acc_mean": acc, "acc_std": std}

    cell = {("csdm", "dm", "default", 100): r(44.3, 0.3), ("dm", "dm", "default", 100): r(44.7, 0.5),
            ("random", "dm", "default", 100): r(32.0, 0.5),
            ("csdm", "ncfm", "default", 10): r(60.0, 0.6), ("dm", "ncfm", "default", 10): r(58.0, 0.2),
            ("random", "ncfm", "factor-2 mosaics", 10): r(43.3, 0.9),
            ("csdm", "ncfm", "default", 200): r(51.4, 0.6),  # no dm row: not listed
            ("csdm", "dm", report.SETTINGS["reversed"], 100): r(50.0, 0.1)}  # an ablation: not listed
    lines = [x for x in report.above_random_and_dm(cell) if x.startswith("| dm") or x.startswith("| ncfm")]
    assert len(lines) == 2
    assert "tie (-0.4)" in lines[0] and "above (+12.3)" in lines[0]
    assert "above (+2.0)" in lines[1] and "above (+16.7)" in lines[1]
    assert report.above_random_and_dm({("csdm", "dm", "default", 100): r(1, 1)}) == []


def test_budget_rows_sit_beside_their_base_protocol_rows():
    report = _bench("report")

    def row(method, proto, acc, tail, iters):
        return {"imbalance": 100, "method": method, "net": "convnet", "labels": "hard", "pipeline": "dm",
                "protocol": proto, "acc_mean": acc, "acc_std": 0.2, "tail": tail, "iterations": iters}

    rows = [row("dm", "cpu-v1", 44.0, 48.0, 1000), row("csdm", "cpu-v1", 44.5, 50.0, 1000),
            row("dm", "cpu-v1-it4000", 45.0, 49.0, 4000), row("csdm", "cpu-v1-it4000", 47.0, 53.0, 4000),
            row("mmd", "cpu-v1", 10.0, 10.0, 1000)]  # no long row: not listed
    out = report.budget_section(rows)
    table = [x for x in out if x.startswith("| 100")]
    assert len(table) == 2 and "44.5 ± 0.2" in table[0] and "47.0 ± 0.2" in table[0]
    assert any("`cpu-v1`: +0.5 overall, +2.0 tail" in x for x in out)
    assert any("`cpu-v1-it4000`: +2.0 overall, +4.0 tail" in x for x in out)
    assert report.budget_section(rows[:2]) == []


def test_gradbal_scale_follows_the_stored_ratios(tmp_path):
    accuracy = _bench("accuracy")
    path = tmp_path / "grad_balance.json"
    path.write_text(json.dumps({"mean_ratio": {"dm": 11.0, "csdm": 1.5, "ncfm": 9.0}}))
    assert accuracy.gradbal_overrides("csdm", path) == ["loss_scale=1800"]
    with pytest.raises(SystemExit, match="csdm only"):
        accuracy.gradbal_overrides("dm", path)
    path.write_text(json.dumps({"mean_ratio": {"dm": 11.0}}))
    with pytest.raises(SystemExit, match="lacks"):
        accuracy.gradbal_overrides("csdm", path)


@pytest.fixture()
def accuracy(monkeypatch, tmp_path):
    mod = _bench("accuracy")
    monkeypatch.setattr(mod, "SETS", tmp_path / "sets")  # main() rebinds these with --out-dir
    monkeypatch.setattr(mod, "RESULTS", tmp_path / "accuracy.jsonl")
    return mod


def test_lock_is_exclusive_and_a_dead_holders_lock_is_taken_over(accuracy, tmp_path):
    lock = tmp_path / "x.lock"
    with accuracy.held(lock, wait=False) as mine:
        assert mine and lock.read_text() == str(__import__("os").getpid())
        with accuracy.held(lock, wait=False) as again:  # a live holder (this process): refused
            assert not again
        assert lock.exists()  # the refused claim must not release the holder's lock
    assert not lock.exists()
    import subprocess
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    lock.write_text(dead)  # left by a process that has exited
    assert accuracy.try_lock(lock) and lock.read_text() != dead


def test_a_resumed_evaluation_counts_the_runs_own_seconds(accuracy):
    """After a resume the call's wall time misses the part before the checkpoint: the runs'
    seconds (which carry it) are the row's, whole; a fresh call keeps its wall time."""
    import time
    from types import SimpleNamespace

    res = SimpleNamespace(runs=[SimpleNamespace(seconds=1200.0), SimpleNamespace(seconds=1300.0)])
    assert accuracy.eval_seconds(res, time.perf_counter() - 5.0, resumed=True) == 2500.0
    fresh = accuracy.eval_seconds(res, time.perf_counter() - 5.0, resumed=False)
    assert 5.0 <= fresh < 60.0


def test_a_cell_held_by_another_worker_is_skipped(accuracy, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(accuracy.GRIDS, "toy", [(100, "random", "convnet", "hard")])
    ran = []
    monkeypatch.setattr(accuracy, "run_cell", lambda *a, **k: ran.append(a) or {})
    key = ("cifar10", 100, 10, "random", "hard", "dm", "dm", "convnet", "cpu-v1", "", 0)
    lock = tmp_path / "sets" / accuracy.cell_lock_path(key).name
    lock.parent.mkdir()
    lock.write_text(str(__import__("os").getpid()))  # held by a live process
    assert accuracy.main(["--data-root", str(tmp_path), "--grid", "toy", "--out-dir", str(tmp_path)]) == 0
    assert ran == [] and "running in another worker" in capsys.readouterr().out
    assert lock.exists()


def test_a_row_of_another_seed_does_not_count_as_done(accuracy, tmp_path, monkeypatch, capsys):
    """Rows written before seeds were varied carry seed 0; a --seed 1 run must still run the cell."""
    monkeypatch.setitem(accuracy.GRIDS, "toy", [(100, "random", "convnet", "hard")])
    row = {"dataset": "cifar10", "imbalance": 100, "ipc": 10, "method": "random", "labels": "hard",
           "pipeline": "dm", "eval_profile": "dm", "net": "convnet", "protocol": "cpu-v1"}
    (tmp_path / "accuracy.jsonl").write_text(json.dumps(row) + "\n")  # no seed field: seed 0
    ran = []
    fake = {"acc_mean": 1.0, "acc_std": 0.0, "head": 0.0, "medium": 0.0, "tail": 0.0, "distill_seconds": 0,
            "eval_seconds": 0}
    monkeypatch.setattr(accuracy, "run_cell", lambda *a, **k: ran.append(a[-3]) or {**row, **fake, "seed": a[-3]})
    argv = ["--data-root", str(tmp_path), "--grid", "toy", "--out-dir", str(tmp_path)]
    assert accuracy.main(argv) == 0 and ran == []
    assert "skip (done)" in capsys.readouterr().out
    assert accuracy.main(argv + ["--seed", "1"]) == 0 and ran == [1]
    assert accuracy.main(argv + ["--seed", "1"]) == 0 and ran == [1]  # now done for seed 1 as well


def test_seeds_section_pairs_csdm_and_dm_by_seed():
    report = _bench("report")

    def row(method, seed, acc, tail):
        return {"imbalance": 100, "method": method, "net": "convnet", "labels": "hard", "pipeline": "dm",
                "protocol": "cpu-v1", "acc_mean": acc, "acc_std": 0.3, "tail": tail, "seed": seed}

    rows = [row("dm", 0, 44.0, 48.0), row("csdm", 0, 43.0, 50.0), row("dm", 1, 45.0, 47.0),
            row("csdm", 1, 46.0, 51.0), row("random", 0, 30.0, 40.0)]
    out = report.seeds_section(rows)
    table = [x for x in out if x.startswith("| cpu-v1")]
    assert len(table) == 2  # random has one seed only: not listed
    assert "s0 43.0, s1 46.0" in table[0] and "44.5 ± 2.1" in table[0]
    pair = [x for x in out if x.startswith("- CSDM − DM")]
    assert len(pair) == 1 and "s0 -1.0, s1 +1.0" in pair[0] and "mean +0.0 ± 1.4" in pair[0]
    assert "(tail +3.0 ± 1.4)" in pair[0] and "1 of 2 seeds overall, in 2 of 2 on the tail" in pair[0]
    assert report.seeds_section([r for r in rows if r["seed"] == 0]) == []


def test_the_reversed_alpha_variant_turns_the_map_round_for_csdm_only():
    accuracy = _bench("accuracy")
    assert accuracy.variant_overrides("reversed", "csdm") == ["alpha_head=0.3", "alpha_tail=0.9"]
    with pytest.raises(SystemExit, match="csdm only"):
        accuracy.variant_overrides("reversed", "dm")


def test_ablation_lines_subtract_each_group():
    report = _bench("report")

    def r(acc, head, med, tail):
        return {"acc_mean": acc, "acc_std": 0.3, "head": head, "medium": med, "tail": tail}

    cell = {("csdm", "dm", "default", 100): r(44.3, 45.9, 37.8, 51.5),
            ("sdd", "dm", "default", 100): r(44.4, 48.3, 37.1, 50.3),
            ("csdm", "dm", report.SETTINGS["reversed"], 100): r(44.4, 50.3, 37.4, 48.0),
            ("csdm", "dm", "default", 10): r(45.8, 47.4, 36.8, 56.1)}  # no ablation at IF 10: no line
    lines = [x for x in report.ablation_lines(cell) if x.startswith("- ")]
    assert len(lines) == 2
    assert "minus sdd: overall -0.1, head -2.4, medium +0.7, tail +1.2" in lines[0]
    assert "α reversed" in lines[1] and "head -4.4" in lines[1] and "tail +3.5" in lines[1]
    assert report.ablation_lines({("csdm", "dm", "default", 100): cell[("csdm", "dm", "default", 100)]}) == []


def test_strongest_search_is_coordinate_wise_on_validation_and_caps_the_budget():
    """bench/strongest.py: one ingredient at a time from the start point, ties to the earlier
    value; the ablation sets each chosen ingredient back once; a budget over 4x cpu-v1 is refused."""
    st = _bench("strongest")
    seen = []

    def score(pt):
        seen.append(dict(pt))
        return {"csdm": 2.0}.get(pt["method"], 1.0) + (0.5 if pt["labels"] == "teacher" else 0.0)

    best = st.search(score)
    assert best == {"method": "csdm", "calibration": "fused", "factor": 2, "labels": "teacher", "eval": "ncfm",
                    "eval_length": "1x", "teacher_length": "1x", "budget": "1x"}
    assert any(p["teacher_length"] == "3x" for p in seen)  # tried: the chosen labels come from a teacher
    seen.clear()
    assert st.search(lambda pt: seen.append(dict(pt)) or {"csdm": 2.0}.get(pt["method"], 1.0))["labels"] == "hard"
    assert not any(p["teacher_length"] != "1x" for p in seen)  # hard labels: no teacher to lengthen
    assert seen[0] == st.START == {k: v[0] for k, v in reversed(st.INGREDIENTS)}  # pipeline ncfm's cell
    assert st.search(lambda pt: None) is None
    abl = dict(st.ablations(best))
    assert abl["method: csdm -> dm"]["method"] == "dm" and abl["labels: teacher -> hard"]["labels"] == "hard"
    assert abl["calibration: fused -> step"]["calibration"] == "step"  # a start value chosen: the next one
    assert len(abl) == len(st.values_of(st.SEARCHED)) == 6  # one removal per searched ingredient
    assert "factor: 2 -> 4" not in abl and "budget: 1x -> 4x-iterations" not in abl
    # the default search stops after the calibration: factor, budget and 6x keep their start values
    seen.clear()
    length = {"1x": 0.0, "3x": 1.0, "6x": 1.5}
    more = {"factor": {2: 0.0, 4: 2.0}, "budget": {"1x": 0.0, "4x-iterations": 0.0, "4x-batch": 3.0}}

    def score_all(pt):
        seen.append(dict(pt))
        return score(pt) + length[pt["eval_length"]] + sum(more[k][pt[k]] for k in more)

    best_default = st.search(score_all)
    assert (best_default["factor"], best_default["budget"], best_default["eval_length"]) == (2, "1x", "3x")
    assert all(p["factor"] == 2 and p["budget"] == "1x" and p["eval_length"] != "6x" for p in seen)
    # --extended: the second pass over the evaluation length, last, from the final point
    seen.clear()
    best6 = st.search(score_all, st.INGREDIENTS)
    assert (best6["eval_length"], best6["factor"], best6["budget"]) == ("6x", 4, "4x-batch") and seen[-1] == best6
    assert [p["eval_length"] for p in seen].index("6x") > max(i for i, p in enumerate(seen)
                                                              if p["budget"] == "4x-iterations")
    abl6 = dict(st.ablations(best6, st.INGREDIENTS))
    assert abl6["eval_length: 6x -> 1x"]["eval_length"] == "1x" and abl6["factor: 4 -> 2"]["factor"] == 2
    assert len(abl6) == len(st.VALUES)  # one removal per ingredient, however many passes it has
    seen.clear()
    assert st.search(lambda pt: seen.append(dict(pt)) or score(pt) + min(length[pt["eval_length"]], 1.0),
                     st.INGREDIENTS)["eval_length"] == "3x"  # a tie in the second pass keeps the first pass's choice
    proto = dict(st.PROTOCOLS["strongest-v1"], max_budget=1000 * 64)
    with pytest.raises(SystemExit, match="exceeds"):
        st.recipe({**best, "budget": "4x-batch"}, proto)
    method, over, ev, labels = st.recipe(best, st.PROTOCOLS["strongest-v1"])
    assert method == "csdm" and "calib_mode=fused" in over and "factor=2" in over and ev["profile"] == "ncfm"
    # the set is keyed by what shapes it: label and evaluation trials reuse it, a new factor does not
    proto = st.PROTOCOLS["strongest-v1"]
    key = [st.set_path("strongest-v1", "validation", 100, 0, *st.recipe(p, proto)[:2])
           for p in (best, {**best, "labels": "adsa", "eval": "dm"}, {**best, "factor": 4})]
    assert key[0] == key[1] != key[2]
    # an ingredient added later is keyed only away from its first value (older rows still match)
    k = st.key_of(best, "strongest-v1", 0, "validation", 100)
    assert k == st.key_of({x: v for x, v in best.items() if x != "eval_length"}, "strongest-v1", 0, "validation", 100)
    assert k != st.key_of({**best, "eval_length": "3x"}, "strongest-v1", 0, "validation", 100)


def test_strongest_test_rows_reuse_the_chosen_set_and_teacher_first():
    """The test stage: the chosen recipe first (report.py reads it so), then the ablation rows
    that reuse its set and teacher (no teacher, then shorter evaluations, first), then a new
    teacher, then a new set, then IF 10 and 200; every ablation row exactly once."""
    st = _bench("strongest")
    best = {**st.START, "method": "csdm", "labels": "teacher", "eval_length": "3x", "teacher_length": "3x"}
    rows = st.test_rows(best, "strongest-v1")
    names = [n for n, _, _ in rows]
    assert rows[0] == ("chosen", best, 100)
    assert names[1:7] == ["labels: teacher -> hard", "eval_length: 3x -> 1x", "eval: ncfm -> dm",
                          "teacher_length: 3x -> 1x", "method: csdm -> dm", "calibration: fused -> step"]
    assert sorted(names[1:7]) == sorted(n for n, _ in st.ablations(best))
    assert [(n, imb) for n, p, imb in rows[7:] if p == best] == [("chosen at IF 10", 10), ("chosen at IF 200", 200)]


def test_grid_strongest_runs_the_search_then_the_test_stage(monkeypatch, tmp_path):
    """``bench/accuracy.py --grid strongest`` is bench/strongest.py's validation search and then
    its test stage (its own protocol and file), and refuses to mix with the cpu-v1 grids."""
    acc, st = _bench("accuracy"), _bench("strongest")
    calls = []
    monkeypatch.setattr(st, "main", lambda argv: calls.append(argv) or 0)
    monkeypatch.setitem(sys.modules, "strongest", st)
    assert acc.main(["--grid", "strongest", "--data-root", "D", "--seed", "3", "--out-dir", str(tmp_path)]) == 0
    out = ["--seed", "3", "--out", str(tmp_path / "strongest.jsonl")]
    assert calls == [["search", "--data-root", "D", *out], ["test", "--data-root", "D", *out]]
    with pytest.raises(SystemExit):
        acc.main(["--grid", "strongest", "--grid", "smoke", "--data-root", "D"])
    assert len(calls) == 2


def test_protocol_tables_pick_each_protocols_rows_and_label_best_test():
    """report.py's two-protocol tables: pipeline dm rows prefer the best-test variant, the
    code table takes only variant code, pipeline ncfm's random is its mosaic row, and what
    best-test adds is the difference of the same rows."""
    report = _bench("report")

    def row(method, imb, pipeline, variant="", acc=40.0, tail=45.0, best=None):
        r = {"protocol": "cpu-v1", "labels": "hard", "net": "convnet", "seed": 0, "imbalance": imb, "method": method,
             "pipeline": pipeline, "acc_mean": acc, "acc_std": 0.5, "tail": tail, "eval_epochs": 300}
        if variant:
            r["variant"] = variant
        if best is not None:
            r["best_test_acc"] = best
        return r

    rows = [row("dm", 100, "dm", acc=44.0), row("dm", 100, "dm", "best-test", acc=44.5, best=46.0),
            row("csdm", 100, "dm", "best-test", acc=44.0, tail=50.0, best=45.0),
            row("random", 100, "ncfm", acc=35.0), row("random", 100, "ncfm", "mosaic", acc=43.0),
            row("dm", 100, "ncfm", "code", acc=56.0, best=58.5), row("dm", 100, "ncfm", acc=55.0)]
    text = "\n".join(report.protocols_section(rows))
    dm_table, code_table, fused_table = text.split("### ")[1:4]
    assert "| dm | 44.5 ± 0.5 | 45.0 | 46.0 |" in dm_table and "CSDM − DM -0.5 overall, +5.0 on the tail" in dm_table
    assert "dm IF 100 +1.5" in dm_table and "csdm IF 100 +1.0" in dm_table
    assert "| dm | 56.0 ± 0.5 | 45.0 | 58.5 |" in code_table and "random | –" in code_table
    assert "random (its initialisation: factor-2 mosaics) | 43.0" in fused_table and "| dm | 55.0" in fused_table


def test_protocol_tables_show_the_whole_lt_references_test_curve():
    """The converged whole-LT row is the reference row of its protocol's table, and the line under
    the table quotes its recorded test curve (quarter points, spread over the last quarter)."""
    report = _bench("report")
    curve = [[e, 50.0 + min(e, 100) / 20 + (0.4 if e == 190 else 0.0)] for e in range(10, 201, 10)]
    full = {"protocol": "cpu-v1", "labels": "hard", "net": "convnet", "seed": 0, "imbalance": 100, "method": "full",
            "pipeline": "dm", "variant": "converged", "acc_mean": 55.0, "acc_std": 0.0, "tail": 26.0,
            "eval_epochs": 200, "best_test_acc": 55.4, "test_curve": curve, "final_train_loss": 0.0648}
    dm = {**full, "method": "dm", "variant": "best-test", "acc_mean": 44.0, "tail": 48.0, "eval_epochs": 300,
          "best_test_acc": 44.2}
    del dm["test_curve"]
    dm_table = "\n".join(report.protocols_section([full, dm])).split("### ")[1]
    assert "| full (whole LT training set, 200 epochs, 1 run) | 55.0 ± 0.0 | 26.0 | 55.4 |" in dm_table
    assert ("Whole-LT reference at IF 100, test accuracy at epochs 50, 100, 150, 200: 52.5, 55.0, 55.0, 55.0; "
            "the last quarter's 5 checkpoints lie within 0.4 points; final training loss 0.065") in dm_table
    assert "full IF 100 +0.4" in dm_table and "IF 10, test accuracy" not in dm_table


def test_strongest_test_table_names_each_ablation_change(tmp_path, monkeypatch):
    """report.py's strongest-v1 section: the first test row is the chosen recipe, every other
    row is labelled by what it changed from it; validation trials have their own table."""
    report = _bench("report")
    chosen = {"method": "csdm", "calibration": "fused", "factor": 2, "labels": "teacher", "eval": "ncfm",
              "budget": "1x"}

    def row(point, split, imb=100, acc=50.0):
        return {"protocol": "strongest-v1", "split": split, "imbalance": imb, "point": point, "score": acc,
                "acc_mean": acc, "acc_std": 0.3, "head": 60.0, "medium": 45.0, "tail": 48.0,
                "distill_seconds": 1.0, "eval_seconds": 1.0, "per_class": [acc] * 10, "run_accs": [acc] * 3}

    rows = [row(chosen, "validation", acc=52.0), row(chosen, "test", acc=58.0),
            row({**chosen, "labels": "hard"}, "test", acc=59.97), row(chosen, "test", imb=10, acc=63.0)]
    # the soft-label rows carry their teacher's test accuracy; its tail is CIFAR-10's classes 7-9
    rows[1]["teacher"] = {"balanced": 67.18, "per_class": [90.0] * 7 + [60.0, 63.0, 54.0]}
    monkeypatch.setattr(report, "RES", tmp_path)  # the plot goes beside the rows, not into bench/results
    path = tmp_path / "strongest.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    text = "\n".join(report.strongest_section(path, []))
    assert ("| method csdm, labels teacher, eval ncfm, eval_length 1x, teacher_length 1x, calibration fused, "
            "factor 2, budget 1x | 52.00 | 48.0 | – |") in text
    assert "The validation search has not finished." in text  # one validation trial of many
    assert "| 100 | **chosen recipe** | 58.00 ± 0.30 | 60.0 | 45.0 | 48.0 | 67.2 | 59.0 |" in text
    # two decimals: a row just below the 60 % target must not read as 60.0; no teacher: "–"
    assert "| 100 | labels: teacher → hard | 59.97 ± 0.30 | 60.0 | 45.0 | 48.0 | – | – |" in text
    assert "| 10 | **chosen recipe** | 63.00 ± 0.30 |" in text
    assert "≥ 60 % at IF 100, mean of ≥ 3 runs, final epoch — not reached: 58.00 ± 0.30 over 3 runs" in text


def test_strongest_follow_up_pass_mixes_labels_from_the_chosen_point_and_keeps_older_keys():
    """--follow-up: a search pass over label_mix (EvalConfig.teacher_mix) from the chosen point,
    on validation; the mix's start value is the chosen recipe's own row (same key), a point
    without a teacher carries no mix; its ablation's removal is the chosen recipe."""
    st = _bench("strongest")
    grid = [*st.SEARCHED, *st.FOLLOW_UP]
    seen = []

    def score(pt, mix_gain=1.0):
        seen.append(dict(pt))
        return ({"csdm": 2.0}.get(pt["method"], 1.0) + (0.5 if pt["labels"] == "teacher" else 0.0)
                + mix_gain * (pt.get("label_mix", 0.0) == 0.5))

    v1 = st.search(score)
    best = st.search(score, grid)
    assert best == {**v1, "label_mix": 0.5} and "label_mix" not in v1
    mixes = [p for p in seen if "label_mix" in p]
    assert [p["label_mix"] for p in mixes] == [0.0, 0.5, 1.0] and {**mixes[0], "label_mix": 0.0} == {**v1, "label_mix": 0.0}
    key = lambda p: st.key_of(p, "strongest-v1", 0, "validation", 100)  # noqa: E731
    assert key(mixes[0]) == key(v1) != key(best)  # the start value: the chosen recipe's existing trial
    assert st.search(lambda pt: score(pt, mix_gain=0.0), grid) == v1  # a tie keeps the teacher alone
    seen.clear()
    hard = st.search(lambda pt: seen.append(dict(pt)) or {"csdm": 2.0}.get(pt["method"], 1.0), grid)
    assert hard["labels"] == "hard" and not any("label_mix" in p for p in seen)  # no teacher: nothing to mix
    assert key({**best, "labels": "hard"}) == key({**v1, "labels": "hard"})
    proto = st.PROTOCOLS["strongest-v1"]
    assert st.recipe(best, proto)[2]["teacher_mix"] == 0.5 and "teacher_mix" not in st.recipe(v1, proto)[2]
    assert "teacher_mix" not in st.recipe({**best, "labels": "hard"}, proto)[2]
    abl = dict(st.ablations(best, grid))
    assert abl["label_mix: 0.5 -> 0.0"] == v1 and len(abl) == len(st.values_of(grid))
    assert dict(st.ablations(v1, grid))["label_mix: 0.0 -> 0.5"] == {**v1, "label_mix": 0.5}
    rows = st.test_rows(best, "strongest-v1", grid)
    assert rows[0] == ("chosen", best, 100) and ("label_mix: 0.5 -> 0.0", v1, 100) in rows
    assert [n for n, _, _ in st.test_rows(v1, "strongest-v1")][:7] == [n for n, _, _ in st.test_rows(
        v1, "strongest-v1", st.SEARCHED)][:7]  # without --follow-up the test stage is unchanged


def test_strongest_report_keeps_the_follow_up_rows_apart(tmp_path, monkeypatch):
    """report.py: test rows with a label mix form the follow-up's own table, labelled by what
    they change from its recipe; the first pass's table is unchanged by them."""
    report = _bench("report")
    chosen = {"method": "csdm", "calibration": "fused", "factor": 2, "labels": "teacher", "eval": "ncfm",
              "budget": "1x"}
    mixed = {**chosen, "label_mix": 0.5}

    def row(point, split, imb=100, acc=50.0):
        return {"protocol": "strongest-v1", "split": split, "imbalance": imb, "point": point, "score": acc,
                "acc_mean": acc, "acc_std": 0.3, "head": 60.0, "medium": 45.0, "tail": 48.0,
                "distill_seconds": 1.0, "eval_seconds": 1.0, "per_class": [acc] * 10, "run_accs": [acc] * 3}

    rows = [row(chosen, "validation", acc=52.0), row(mixed, "validation", acc=53.0), row(chosen, "test", acc=58.0),
            row({**chosen, "labels": "hard"}, "test", acc=55.0), row(mixed, "test", acc=61.0),
            row({**mixed, "eval": "dm"}, "test", acc=57.0)]
    monkeypatch.setattr(report, "RES", tmp_path)
    path = tmp_path / "strongest.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    text = "\n".join(report.strongest_section(path, []))
    first, follow = text.split("Follow-up pass")
    assert "| 100 | **chosen recipe** | 58.00 ± 0.30 |" in first and "61.0" not in first
    assert "label_mix 0.5 | 53.00 |" in first  # the validation trial, in the trials' table
    assert "| 100 | **chosen recipe** | 61.00 ± 0.30 |" in follow and "| 100 | eval: ncfm → dm | 57.00 ± 0.30 |" in follow
