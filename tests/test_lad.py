"""LAD (issue 16): DAM on a hand-computed example, the matching loss, the memory-bounded
unroll against the textbook one, experts (balanced sampler, frozen backbone, buffer
round-trip, resume, bad buffers) and a tiny end-to-end run through the CLI (digits)."""

from __future__ import annotations

import json
import math
import weakref
from dataclasses import replace
from functools import partial

import pytest
import torch

import ltdistill as ld
from ltdistill.cli import main
from ltdistill.config import apply_overrides
from ltdistill.errors import ConfigError, DataError
from ltdistill.experts import ExpertConfig, _balanced_batches, _epoch, check_buffer, load_expert, train_experts
from ltdistill.trajectory import FlatNet, dam_loss, match_loss, soft_ce, unroll

TINY = ["iterations=3", "syn_steps=2", "experts.epochs=3", "experts.cls_epochs=2", "max_start_epoch=1",
        "experts.num_experts=2", "log_every=1", "checkpoint_every=2"]


# ----------------------------------------------------------------------------- DAM
def test_dam_forms_on_a_hand_computed_example():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    targets = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    labels = torch.tensor([0, 1])
    counts = torch.tensor([30.0, 10.0])  # g = (0.75, 0.25)
    lam = 0.5
    # paper: P_i = softmax(L_i - lam log s); -(1/n) sum g(s_y) log P_y
    p0 = math.exp(2 - lam * math.log(30)) / (math.exp(2 - lam * math.log(30)) + math.exp(0 - lam * math.log(10)))
    p1 = math.exp(1 - lam * math.log(10)) / (math.exp(0 - lam * math.log(30)) + math.exp(1 - lam * math.log(10)))
    paper = -(0.75 * math.log(p0) + 0.25 * math.log(p1)) / 2
    assert float(dam_loss(logits, targets, labels, counts, "paper", lam)) == pytest.approx(paper, rel=1e-6)
    # code: class column k weighted by g_k, no shift
    q0 = math.exp(2) / (math.exp(2) + 1)
    q1 = math.exp(1) / (1 + math.exp(1))
    code = -(0.75 * math.log(q0) + 0.25 * math.log(q1)) / 2
    assert float(dam_loss(logits, targets, labels, counts, "code")) == pytest.approx(code, rel=1e-6)
    plain = -(math.log(q0) + math.log(q1)) / 2
    assert float(dam_loss(logits, targets, labels, counts, "none")) == pytest.approx(plain, rel=1e-6)
    assert float(soft_ce(logits, targets)) == pytest.approx(plain, rel=1e-6)
    with pytest.raises(ConfigError, match="dam must be one of"):
        dam_loss(logits, targets, labels, counts, "bf")


def test_dam_makes_the_student_favour_head_classes():
    """Mimicking long-tailed training: a student trained with DAM's shifted softmax learns a
    larger head-class bias than with plain CE (the bias the long-tailed expert has)."""
    torch.manual_seed(0)
    feats = torch.randn(40, 4)
    y = torch.arange(40) % 2
    counts = torch.tensor([100.0, 5.0])
    biases = {}
    for form in ("none", "paper"):
        w = torch.zeros(4, 2, requires_grad=True)
        b = torch.zeros(2, requires_grad=True)
        opt = torch.optim.SGD([w, b], lr=0.5)
        for _ in range(200):
            opt.zero_grad()
            dam_loss(feats @ w + b, torch.nn.functional.one_hot(y, 2).float(), y, counts, form, 1.0).backward()
            opt.step()
        biases[form] = float((b[0] - b[1]).detach())
    assert biases["paper"] > biases["none"] + 1.0


def test_match_loss_is_zero_on_target_and_positive_elsewhere():
    start, target = torch.zeros(5), torch.ones(5)
    assert float(match_loss(target, start, target)) == 0
    assert float(match_loss(start, start, target)) == pytest.approx(1.0)
    assert float(match_loss(target + 0.1, start, target)) > 0


# ----------------------------------------------------------------------------- unroll
def _tiny_problem(seed=0):
    g = torch.Generator().manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 6), torch.nn.Tanh())
    net.classifier = torch.nn.Linear(6, 3)
    model = torch.nn.Sequential()
    model.add_module("features", net)
    model.add_module("classifier", net.classifier)
    del net.classifier
    flat = FlatNet(model)
    x = torch.randn(9, 12, generator=g).requires_grad_(True)
    y = torch.randn(9, 3, generator=g).requires_grad_(True)
    labels = torch.arange(9) % 3
    counts = torch.tensor([50.0, 20.0, 5.0])

    def step_loss(theta, k, leaves):
        xs, ys = leaves
        idx = torch.randperm(9, generator=torch.Generator().manual_seed(100 + k))[:6]
        return dam_loss(flat(theta, xs[idx]), torch.softmax(ys[idx], 1), labels[idx], counts, "paper", 1.0)

    theta0 = torch.randn(flat.numel, generator=g) * 0.3
    target = theta0 + torch.randn(flat.numel, generator=g) * 0.05
    return flat, x, y, step_loss, theta0, target


@pytest.mark.parametrize("masked", [False, True])
def test_bounded_unroll_gives_the_textbook_gradients(masked):
    grads = {}
    for memory in ("graph", "bounded"):
        flat, x, y, step_loss, theta0, target = _tiny_problem()
        lr = torch.tensor(0.1, requires_grad=True)
        mask = flat.is_classifier if masked else None
        loss = unroll(step_loss, theta0, lr, 4, partial(match_loss, start=theta0, target=target), [x, y], mask, memory)
        grads[memory] = (float(loss), x.grad.clone(), y.grad.clone(), lr.grad.clone())
    a, b = grads["graph"], grads["bounded"]
    assert a[0] == pytest.approx(b[0], rel=1e-6)
    for ga, gb in zip(a[1:], b[1:]):
        assert torch.allclose(ga, gb, rtol=1e-4, atol=1e-7)
        assert float(ga.abs().sum()) > 0  # gradients reach images, soft labels and the step size


def test_bounded_unroll_memory_does_not_grow_with_the_steps():
    """Peak bytes of tensors saved for backward and alive at once: the bounded unroll adds
    only one parameter vector per extra step (the trajectory the matching needs); the
    textbook one adds every step's activations."""

    def peak(steps, memory):
        live, top = [], [0]

        def pack(t):
            live.append((weakref.ref(t), t.numel() * t.element_size()))
            top[0] = max(top[0], sum(n for r, n in live if r() is not None))
            return t

        flat, x, y, step_loss, theta0, target = _tiny_problem()
        lr = torch.tensor(0.1, requires_grad=True)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            unroll(step_loss, theta0, lr, steps, partial(match_loss, start=theta0, target=target), [x, y], None, memory)
        return top[0]

    b5, b20 = peak(5, "bounded"), peak(20, "bounded")
    g5, g20 = peak(5, "graph"), peak(20, "graph")
    theta_bytes = _tiny_problem()[4].numel() * 4
    assert b20 - b5 <= 15 * theta_bytes * 1.01
    assert g20 - g5 > 5 * (b20 - b5) and g20 > 3 * g5


# ----------------------------------------------------------------------------- experts
def test_class_balanced_sampler_draws_classes_evenly_in_runs_of_four():
    labels = torch.tensor([0] * 500 + [1] * 50 + [2] * 5)
    batches = _balanced_batches(labels, 3, 64, 4, 200, torch.Generator().manual_seed(0))
    allidx = torch.cat(batches)
    freq = torch.bincount(labels[allidx], minlength=3).float() / len(allidx)
    assert torch.allclose(freq, torch.full((3,), 1 / 3), atol=0.02)
    runs = labels[batches[0]].view(-1, 4)
    assert bool((runs == runs[:, :1]).all())  # 4 consecutive images of one class


def test_stage_two_freezes_the_backbone(digits_lt):
    from ltdistill.augment import DSAConfig
    from ltdistill.nets import init_net

    net = init_net("convnet", 1, 10, 8, 0)
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    x = digits_lt.normalize(digits_lt.train.images)
    y = digits_lt.train.labels
    opt = torch.optim.SGD(net.classifier.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(0)
    _epoch(net, x, y, [torch.arange(64)], opt, DSAConfig(), g, g, False, True)
    for n, p in net.named_parameters():
        changed = not torch.equal(before[n], p)
        assert changed == n.startswith("classifier."), n


def _ecfg(**kw):
    return ExpertConfig(**{"num_experts": 2, "epochs": 2, "cls_epochs": 2, "device": "cpu", **kw})


def test_expert_buffer_round_trips_and_resumes_after_a_kill(tmp_path, digits_lt, monkeypatch):
    import ltdistill.experts as E

    ref = train_experts(digits_lt, _ecfg(), tmp_path / "ref")
    meta = check_buffer(ref, digits_lt, "convnet")
    assert meta["config"]["epochs"] == 2 and len(meta["seeds"]) == 2 and meta["dataset"] == digits_lt.split_record()
    ex = load_expert(ref, 1)
    assert ex["rep"].shape[0] == 3 and ex["cls"].shape[0] == 3 and len(ex["train_acc"]) == 4
    assert not torch.equal(ex["cls"][0], ex["cls"][-1])
    calls = {"n": 0}
    real = E._epoch

    def dying(*a, **k):
        calls["n"] += 1
        if calls["n"] == 6:  # expert 1, its second stage-1 epoch
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(E, "_epoch", dying)
    with pytest.raises(KeyboardInterrupt):
        train_experts(digits_lt, _ecfg(), tmp_path / "re")
    monkeypatch.setattr(E, "_epoch", real)
    path = train_experts(digits_lt, _ecfg(), tmp_path / "re")
    for k in range(2):
        a, b = load_expert(ref, k), load_expert(path, k)
        assert torch.equal(a["rep"], b["rep"]) and torch.equal(a["cls"], b["cls"])
    assert not list(path.glob("*.partial.pt"))


def test_compiled_experts_match_eager_and_share_the_buffer_key(tmp_path, digits_lt):
    """compile is a speed setting: same trajectories as eager (fp32, float reassociation), same
    buffer folder, and meta.json records which ran; auto leaves the digits experts eager."""
    from ltdistill.experts import buffer_dir

    cfg = _ecfg(num_experts=1, epochs=1, cls_epochs=1)
    eager = train_experts(digits_lt, replace(cfg, compile="off"), tmp_path / "a")
    comp = train_experts(digits_lt, replace(cfg, compile="on"), tmp_path / "b")
    a, b = load_expert(eager, 0), load_expert(comp, 0)
    assert torch.allclose(a["rep"], b["rep"], atol=1e-4) and torch.allclose(a["cls"], b["cls"], atol=1e-4)
    assert not torch.equal(a["rep"][0], a["rep"][-1])
    assert eager.name == comp.name == buffer_dir(digits_lt, cfg).name
    assert json.loads((comp / "meta.json").read_text())["compiled"] is True
    auto = train_experts(digits_lt, cfg, tmp_path / "c")
    assert json.loads((auto / "meta.json").read_text())["compiled"] is False
    with pytest.raises(ConfigError, match="compile must be one of"):
        train_experts(digits_lt, replace(cfg, compile="fast"), tmp_path / "d")


def test_bad_expert_buffers_get_clear_errors(tmp_path, digits_lt):
    path = train_experts(digits_lt, _ecfg(num_experts=1), tmp_path)
    other = ld.load_lt_data("digits", imbalance=50)
    with pytest.raises(DataError, match="trained on another split"):
        check_buffer(path, other, "convnet")
    with pytest.raises(DataError, match="holds 'convnet' experts, but the run uses 'resnet18'"):
        check_buffer(path, digits_lt, "resnet18")
    f = path / "expert_000.pt"
    f.write_bytes(f.read_bytes()[:100])
    with pytest.raises(DataError, match="truncated or corrupt"):
        load_expert(path, 0)
    with pytest.raises(DataError, match="not an expert buffer"):
        check_buffer(tmp_path, digits_lt, "convnet")


# ----------------------------------------------------------------------------- the method
@pytest.mark.parametrize("variant", [[], ["dam=none"], ["decoupling=false"], ["dam=code", "memory=graph"]])
def test_lad_runs_carries_soft_labels_and_its_step_size(tmp_path, digits_lt, variant):
    cfg = apply_overrides(ld.make_config("lad", ipc=2, seed=1, device="cpu"),
                          [*TINY, f"expert_dir={tmp_path}", *variant])
    s = ld.distill(cfg, digits_lt)
    assert s.images.shape == (20, 1, 8, 8) and torch.isfinite(s.images).all()
    assert s.soft_labels.shape == (20, 10) and torch.allclose(s.soft_labels.sum(1), torch.ones(20))
    assert s.extra["syn_lr"] > 0 and s.extra["syn_lr"] != 0.01


def test_lad_same_seed_same_set_and_resume(tmp_path, digits_lt):
    cfg = apply_overrides(ld.make_config("lad", ipc=2, seed=1, device="cpu"), [*TINY, f"expert_dir={tmp_path}",
                                                                               "iterations=4"])
    a = ld.distill(cfg, digits_lt)
    b = ld.distill(cfg, digits_lt, run_prefix=str(tmp_path / "r"))
    assert torch.equal(a.images, b.images)
    half = apply_overrides(cfg, ["iterations=2"])
    ld.distill(half, digits_lt, run_prefix=str(tmp_path / "h"))
    c = ld.distill(apply_overrides(cfg, ["resume=true"]), digits_lt, run_prefix=str(tmp_path / "h"))
    assert c.extra["iterations_run"] == 2 and torch.equal(a.images, c.images)


def test_lad_cli_end_to_end(tmp_path, capsys):
    common = ["--dataset", "digits", "--imbalance", "10", "--device", "cpu", "--quiet",
              *[a for s in TINY for a in ("-s", s)], "-s", f"expert_dir={tmp_path / 'x'}"]
    assert main(["experts", *common]) == 0
    assert "2 experts (convnet, 3 + 2 epochs)" in capsys.readouterr().out
    out = tmp_path / "lad.pt"
    assert main(["distill", "--method", "lad", "--ipc", "2", *common, "--out", str(out)]) == 0
    assert main(["evaluate", str(out), "--epochs", "3", "--runs", "1", "--device", "cpu", "--quiet",
                 "--json", str(tmp_path / "r.json")]) == 0
    r = json.loads((tmp_path / "r.json").read_text())
    assert r["labels"] == "soft" and r["config"]["lr_source"] == "set"
    assert r["config"]["lr"] == pytest.approx(ld.load_set(out).extra["syn_lr"])
    assert main(["evaluate", str(out), "--epochs", "3", "--runs", "1", "--device", "cpu", "--quiet", "--labels", "hard",
                 "--protocol-lr", "--json", str(tmp_path / "h.json")]) == 0
    h = json.loads((tmp_path / "h.json").read_text())
    assert h["labels"] == "hard" and h["config"]["lr_source"] == "protocol" and h["config"]["lr"] == 0.01


def test_lad_bad_options(tmp_path, digits_lt):
    for bad, msg in [("dam=bfloss", "dam must be one of"), ("memory=low", "memory must be"),
                     ("max_start_epoch=5", "exceeds the experts"), ("syn_steps=0", "syn_steps >= 1")]:
        cfg = apply_overrides(ld.make_config("lad", ipc=2, device="cpu"), [*TINY, f"expert_dir={tmp_path}", bad])
        with pytest.raises(ConfigError, match=msg):
            ld.distill(cfg, digits_lt)


def test_experts_log_to_tensorboard(tmp_path, capsys):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tb = tmp_path / "tb"
    common = ["--dataset", "digits", "--imbalance", "10", "--device", "cpu", "--quiet",
              *[a for s in TINY for a in ("-s", s)], "-s", f"expert_dir={tmp_path / 'x'}"]
    assert main(["experts", *common, "--tensorboard", str(tb)]) == 0
    ev = EventAccumulator(str(next(tb.rglob("events.out.tfevents.*")).parent))
    ev.Reload()
    tags = set(ev.Tags()["scalars"])
    assert {"experts/0/stage1_acc", "experts/0/stage2_acc", "experts/1/stage1_acc"} <= tags
    assert [e.step for e in ev.Scalars("experts/0/stage1_acc")] == [1, 2, 3]
