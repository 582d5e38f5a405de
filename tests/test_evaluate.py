import dataclasses
import math

import pytest
import torch

from ltdistill.errors import ArtifactError, ConfigError
from ltdistill.evaluate import EvalConfig, evaluate_full, evaluate_set, format_result, train_net
from ltdistill.methods import distill, make_config

FAST = EvalConfig(epochs=30, runs=2, device="cpu")


@pytest.fixture(scope="module")
def rand_set(digits_lt):
    return distill(make_config("random", ipc=5, seed=0), digits_lt)


def test_eval_learns_and_reports_groups(rand_set, digits_lt):
    res = evaluate_set(rand_set, digits_lt, FAST)
    assert len(res.runs) == 2 and res.label_track == "hard"
    assert res.acc_mean > 50  # chance is 10 %; digits are easy even from 50 images
    assert len(res.per_class_mean) == 10
    runs = [r.acc for r in res.runs]
    assert math.isclose(res.acc_mean, sum(runs) / 2, rel_tol=1e-9)
    # class-balanced test split: overall accuracy is the mean of per-class accuracies
    for r in res.runs:
        assert math.isclose(r.acc, sum(r.per_class) / 10, rel_tol=1e-6)
    head = sum(res.per_class_mean[:3]) / 3
    assert math.isclose(res.groups["head"], head, rel_tol=1e-9)
    assert "tail" in format_result(res, digits_lt.class_names)


def test_eval_is_seeded(rand_set, digits_lt):
    cfg = EvalConfig(epochs=5, runs=1, device="cpu", seed=4)
    a, b = evaluate_set(rand_set, digits_lt, cfg), evaluate_set(rand_set, digits_lt, cfg)
    assert a.runs[0].per_class == b.runs[0].per_class and a.runs[0].final_loss == b.runs[0].final_loss


def test_soft_labels_track(rand_set, digits_lt):
    s = distill(make_config("random", ipc=5, seed=0), digits_lt)
    s.soft_labels = torch.nn.functional.one_hot(s.labels, 10).float()
    cfg = EvalConfig(epochs=5, runs=1, device="cpu")
    soft, hard = evaluate_set(s, digits_lt, cfg), evaluate_set(rand_set, digits_lt, cfg)
    assert soft.label_track == "soft"
    # one-hot soft labels are hard labels: same seed, same training, same result
    assert soft.runs[0].per_class == pytest.approx(hard.runs[0].per_class)
    with pytest.raises(ConfigError, match="no soft labels"):
        evaluate_set(rand_set, digits_lt, EvalConfig(labels="soft", runs=1, epochs=1))


def test_full_dataset_reference(digits_lt):
    res = evaluate_full(digits_lt, EvalConfig(epochs=20, runs=1, device="cpu"))
    assert res.acc_mean > 50


def test_nan_loss_is_a_clear_error(digits_lt):
    from ltdistill.errors import TrainingError

    x = torch.full((10, 1, 8, 8), float("nan"))
    with pytest.raises(TrainingError, match="diverged"):
        train_net(x, torch.arange(10), digits_lt, EvalConfig(epochs=1, runs=1, device="cpu", dsa=False), 0)


def test_set_for_another_dataset_is_refused(rand_set, digits_lt):
    other = dataclasses.replace(rand_set, class_names=[f"x{i}" for i in range(10)])
    with pytest.raises(ArtifactError, match="do not match"):
        evaluate_set(other, digits_lt, FAST)


@pytest.mark.parametrize("net", ["convnet", "convnet_bn"])
def test_runs_trained_together_equal_runs_one_by_one(net, rand_set, digits_lt):
    """Batched (vmap) training of R nets gives each net the one-by-one result (float tolerance)."""
    cfg = EvalConfig(net=net, epochs=8, runs=3, device="cpu", batch_size=16)
    together = evaluate_set(rand_set, digits_lt, dataclasses.replace(cfg, batched_runs=True))
    alone = evaluate_set(rand_set, digits_lt, cfg)
    for a, b in zip(together.runs, alone.runs):
        assert a.final_loss == pytest.approx(b.final_loss, rel=1e-4)
        assert sum(abs(p - q) for p, q in zip(a.per_class, b.per_class)) <= 2 * 2.0  # at most ~2 test images differ


def test_bf16_evaluation_learns_close_to_fp32(rand_set, digits_lt):
    """bf16 autocast changes numerics, not the outcome: same task, accuracy within a few points."""
    fp32 = evaluate_set(rand_set, digits_lt, FAST)
    bf16 = evaluate_set(rand_set, digits_lt, dataclasses.replace(FAST, bf16=True))
    assert all(math.isfinite(r.final_loss) for r in bf16.runs)
    assert bf16.acc_mean > 50
    assert abs(bf16.acc_mean - fp32.acc_mean) < 8


def test_best_test_selection_is_opt_in_labelled_and_leaves_the_final_number(digits_lt):
    import dataclasses

    import ltdistill as ld
    from ltdistill.evaluate import SELECTION_LABEL, format_result

    s = ld.distill(ld.make_config("random", ipc=3, seed=1, device="cpu"), digits_lt)
    base = ld.EvalConfig(epochs=6, runs=2, compile="off", device="cpu")
    assert base.selection == "final"
    final = ld.evaluate_set(s, digits_lt, base)
    assert final.best_test_acc is None and "best_test_acc" not in final.to_dict()
    for batched in (False, True):
        cfg = dataclasses.replace(base, selection="best-test", selection_every=2, batched_runs=batched)
        best = ld.evaluate_set(s, digits_lt, cfg)
        if not batched:
            assert [r.acc for r in best.runs] == [r.acc for r in final.runs]  # the final epoch is untouched
            assert best.acc_mean == final.acc_mean
        assert all(r.best_test_acc >= r.acc for r in best.runs)
        d = best.to_dict()
        assert d["best_test_acc"] == best.best_test_acc and d["best_test_selection"] == SELECTION_LABEL
        assert "selected on the test set" in format_result(best, digits_lt.class_names)
    with pytest.raises(ConfigError, match="selection must be final or best-test"):
        ld.evaluate_set(s, digits_lt, dataclasses.replace(base, selection="best"))


def test_online_teacher_relabels_batches_except_the_hard_epochs(rand_set, digits_lt, tmp_path):
    """NCFM's --softlabel: the teacher's softmax on every augmented batch; in the last
    teacher_hard_epochs epochs the set's own labels. All epochs hard = the plain run, bit for bit."""
    from ltdistill.teacher import save_teacher, train_teacher

    t = train_teacher(digits_lt, EvalConfig(epochs=2, runs=1, device="cpu"), seed=0)
    save_teacher(t, tmp_path / "t.pt")
    base = EvalConfig(epochs=3, runs=1, device="cpu")
    plain = evaluate_set(rand_set, digits_lt, base)
    all_hard = evaluate_set(rand_set, digits_lt, dataclasses.replace(base, teacher=str(tmp_path / "t.pt"),
                                                                     teacher_hard_epochs=3))
    taught = evaluate_set(rand_set, digits_lt, dataclasses.replace(base, teacher=str(tmp_path / "t.pt"),
                                                                   teacher_hard_epochs=1))
    assert all_hard.runs[0].final_loss == plain.runs[0].final_loss and all_hard.acc_mean == plain.acc_mean
    assert taught.label_track == "teacher" and taught.runs[0].per_class != plain.runs[0].per_class
    with pytest.raises(ConfigError, match="teacher_hard_epochs"):
        evaluate_set(rand_set, digits_lt, dataclasses.replace(base, teacher=str(tmp_path / "t.pt"),
                                                              teacher_hard_epochs=4))
    from ltdistill.nets import create_net

    save_teacher({**t, "state_dict": create_net("convnet", 1, 5, 8).state_dict()}, tmp_path / "bad.pt")
    with pytest.raises(ConfigError, match="does not fit"):
        evaluate_set(rand_set, digits_lt, dataclasses.replace(base, teacher=str(tmp_path / "bad.pt")))


def test_teacher_mix_weights_and_targets_against_the_formula():
    """λ_c = (n_c / n_max) ** γ; a sample's target is λ·teacher + (1 − λ)·its set label, λ
    averaged under a CutMix-mixed label; γ = 0 gives the teacher's labels exactly."""
    from ltdistill.evaluate import mix_teacher_labels, teacher_mix_weights

    counts = [400, 100, 25, 4]
    w = teacher_mix_weights(counts, 0.5)
    assert torch.allclose(w, torch.tensor([(n / 400) ** 0.5 for n in counts]))
    assert torch.equal(teacher_mix_weights(counts, 0.0), torch.ones(4))
    g = torch.Generator().manual_seed(0)
    t = torch.softmax(torch.randn(5, 4, generator=g), 1)
    s = torch.nn.functional.one_hot(torch.tensor([0, 1, 2, 3, 3]), 4).float()
    s[4] = torch.tensor([0.0, 0.3, 0.0, 0.7])  # a CutMix-mixed label: 30 % class 1, 70 % class 3
    got = mix_teacher_labels(t, s, w)
    for i in range(5):
        lam = sum(float(s[i, c]) * float(w[c]) for c in range(4))
        assert torch.allclose(got[i], lam * t[i] + (1 - lam) * s[i])
    assert torch.allclose(got.sum(1), torch.ones(5))
    assert torch.equal(got[0], t[0])  # the largest class: the teacher's label alone
    assert torch.equal(mix_teacher_labels(t, s, teacher_mix_weights(counts, 0.0)), t)


def test_teacher_mix_trains_on_the_mixed_labels(rand_set, digits_lt, tmp_path):
    """teacher_mix changes training on long-tailed counts; on equal counts (every λ = 1) it is
    the teacher's labels, bit for bit; it needs a teacher and a non-negative exponent."""
    from ltdistill.teacher import save_teacher, train_teacher

    t = train_teacher(digits_lt, EvalConfig(epochs=2, runs=1, device="cpu"), seed=0)
    save_teacher(t, tmp_path / "t.pt")
    base = EvalConfig(epochs=2, runs=1, device="cpu", teacher=str(tmp_path / "t.pt"))
    taught = evaluate_set(rand_set, digits_lt, base)
    mixed = evaluate_set(rand_set, digits_lt, dataclasses.replace(base, teacher_mix=1.0))
    assert mixed.runs[0].final_loss != taught.runs[0].final_loss and mixed.config["teacher_mix"] == 1.0
    flat = dataclasses.replace(digits_lt, class_counts=[max(digits_lt.class_counts)] * digits_lt.num_classes)
    same = evaluate_set(rand_set, flat, dataclasses.replace(base, teacher_mix=1.0))
    assert same.runs[0].final_loss == taught.runs[0].final_loss and same.acc_mean == taught.acc_mean
    with pytest.raises(ConfigError, match="teacher_mix must be >= 0"):
        evaluate_set(rand_set, digits_lt, dataclasses.replace(base, teacher_mix=-1.0))
    with pytest.raises(ConfigError, match="give a teacher"):
        evaluate_set(rand_set, digits_lt, EvalConfig(epochs=1, runs=1, device="cpu", teacher_mix=0.5))


def test_evaluation_profiles_are_named_and_later_settings_win():
    from ltdistill.cli import build_eval_config, build_parser

    args = build_parser().parse_args(["evaluate", "s.pt", "--profile", "ncfm"])
    cfg = build_eval_config(args)
    assert (cfg.profile, cfg.optimizer, cfg.cutmix_p, cfg.rrc, cfg.epochs) == ("ncfm", "adamw", 0.5, True, 2000)
    args = build_parser().parse_args(["evaluate", "s.pt", "--profile", "ncfm", "--preset", "eval-cpu-v1"])
    assert (build_eval_config(args).epochs, build_eval_config(args).optimizer) == (300, "adamw")
    dm = build_eval_config(build_parser().parse_args(["evaluate", "s.pt", "--profile", "dm"]))
    assert dataclasses.replace(dm, profile="dm") == EvalConfig()  # the dm profile is the defaults, written out


def test_logit_adjusted_loss_by_hand(digits_lt):
    """logits 0, prior (0.9, 0.1): the adjusted loss of a class-1 sample is -log(0.1), of a
    class-0 sample -log(0.9); tau 0 is plain cross-entropy; a balanced set's prior is uniform."""
    from ltdistill.evaluate import label_log_prior, training_loss

    lp = label_log_prior(torch.tensor([0] * 9 + [1]), 2)
    assert torch.allclose(lp, torch.tensor([0.9, 0.1]).log())
    z = torch.zeros(2, 2)
    onehot = torch.eye(2)
    assert torch.isclose(training_loss(z[:1], onehot[1:], lp, 1.0), -torch.tensor(0.1).log())
    assert torch.isclose(training_loss(z[:1], onehot[:1], lp, 1.0), -torch.tensor(0.9).log())
    assert torch.isclose(training_loss(z, onehot, lp, 0.0), torch.tensor(2.0).log())
    assert torch.allclose(label_log_prior(torch.arange(10).repeat(3), 10), torch.full((10,), 0.1).log())
    assert torch.allclose(label_log_prior(torch.full((4, 10), 0.1), 10), torch.full((10,), 0.1).log())
    res = evaluate_full(digits_lt, EvalConfig(epochs=2, runs=1, device="cpu", logit_adjust=1.0))
    assert res.acc_mean > 10 and res.config["logit_adjust"] == 1.0


class _Interrupt(Exception):
    pass


def _interrupt_after(monkeypatch, n: int):
    """Let the evaluation write ``n`` checkpoints, then stop it as a kill would."""
    import ltdistill.evaluate as E

    real, count = E.atomic_torch_save, [0]

    def save(obj, path):
        real(obj, path)
        count[0] += 1
        if count[0] == n:
            raise _Interrupt

    monkeypatch.setattr(E, "atomic_torch_save", save)
    return count


@pytest.mark.parametrize("cfg", [
    # SGD, lr x0.1 and a fresh optimiser at half (interrupted after it), best-test checkpoints, 2 run groups
    EvalConfig(epochs=8, runs=2, device="cpu", selection="best-test", selection_every=2, compile="off"),
    # the ncfm profile's AdamW, multistep, CutMix and random-resized crop
    EvalConfig(epochs=8, runs=1, device="cpu", compile="off", profile="ncfm", optimizer="adamw", lr=0.001,
               schedule="multistep", cutmix_p=0.5, rrc=True),
    # the runs trained together through vmap (stacked weights)
    EvalConfig(epochs=8, runs=2, device="cpu", compile="off", batched_runs=True),
], ids=["dm-best-test", "ncfm", "batched"])
def test_an_interrupted_evaluation_resumes_to_the_uninterrupted_result(cfg, rand_set, digits_lt, tmp_path,
                                                                       monkeypatch):
    ref = evaluate_set(rand_set, digits_lt, cfg)
    ck = tmp_path / "eval.ckpt"
    _interrupt_after(monkeypatch, 3)  # after epoch 3 of 8 of the first group (8 epochs: one checkpoint per epoch)
    with pytest.raises(_Interrupt):
        evaluate_set(rand_set, digits_lt, cfg, checkpoint=ck)
    assert ck.is_file()
    monkeypatch.undo()
    if cfg.runs == 2 and not cfg.batched_runs:  # again in the second group (epoch 5: past the lr reset)
        count = _interrupt_after(monkeypatch, 10)  # epochs 4-7 and the first group's end, then 1-5
        with pytest.raises(_Interrupt):
            evaluate_set(rand_set, digits_lt, cfg, checkpoint=ck)
        assert count[0] == 10
        monkeypatch.undo()
    got = evaluate_set(rand_set, digits_lt, cfg, checkpoint=ck)
    assert not ck.exists()  # removed once the evaluation finished
    for a, b in zip(ref.runs, got.runs, strict=True):
        assert (a.acc, a.per_class, a.final_loss, a.best_test_acc, a.test_curve) == \
               (b.acc, b.per_class, b.final_loss, b.best_test_acc, b.test_curve)


def test_an_interrupted_teacher_training_resumes_to_the_same_teacher(digits_lt, tmp_path, monkeypatch):
    """train_teacher(checkpoint=...): killed after 3 of 8 epochs (logit-adjusted SGD, the reset
    at half still ahead), resumed to the bit-identical weights; another training's file is refused."""
    import ltdistill.teacher as T

    cfg = EvalConfig(epochs=8, runs=1, device="cpu", compile="off", logit_adjust=1.0)
    ref = T.train_teacher(digits_lt, cfg, seed=3)
    ck = tmp_path / "teacher.ckpt"
    real, count = T.atomic_torch_save, [0]

    def save(obj, path):
        real(obj, path)
        count[0] += 1
        if count[0] == 3:
            raise _Interrupt

    monkeypatch.setattr(T, "atomic_torch_save", save)
    with pytest.raises(_Interrupt):
        T.train_teacher(digits_lt, cfg, seed=3, checkpoint=ck)
    monkeypatch.undo()
    assert ck.is_file()
    with pytest.raises(ArtifactError, match="belongs to another teacher training"):
        T.train_teacher(digits_lt, cfg, seed=4, checkpoint=ck)
    got = T.train_teacher(digits_lt, cfg, seed=3, checkpoint=ck)
    assert not ck.exists() and got["final_loss"] == ref["final_loss"]
    for k, v in ref["state_dict"].items():
        assert torch.equal(v, got["state_dict"][k]), k


def test_an_evaluation_checkpoint_of_another_evaluation_is_refused(rand_set, digits_lt, tmp_path, monkeypatch):
    cfg = EvalConfig(epochs=4, runs=1, device="cpu", compile="off")
    ck = tmp_path / "eval.ckpt"
    _interrupt_after(monkeypatch, 1)
    with pytest.raises(_Interrupt):
        evaluate_set(rand_set, digits_lt, cfg, checkpoint=ck)
    monkeypatch.undo()
    with pytest.raises(ArtifactError, match="belongs to another evaluation"):
        evaluate_set(rand_set, digits_lt, dataclasses.replace(cfg, lr=0.02), checkpoint=ck)
    ck.write_bytes(b"torn")
    with pytest.raises(ArtifactError, match="cannot be read"):
        evaluate_set(rand_set, digits_lt, cfg, checkpoint=ck)
