"""Where a paper-scale distillation iteration spends its time.

One CSDM iteration at paper scale (CIFAR-10-LT IF 100, IPC 10, batch_real 256, 10
classes, M = 4096, ConvNet-3), per-class structure (the library's default path),
rebuilt from the library's own pieces and timed stage by stage (``perf_counter``;
CPU work is synchronous): trunk re-initialisation, real-batch gather + normalise +
DSA, real forward (no autograd graph), synthetic DSA + forward, CSDM loss, backward,
optimiser step. Run eager and with the trunk compiled. Then ``torch.profiler`` on the
eager iteration gives the operator-level split (convolution, instance norm, ...).

Writes ``bench/results/profile.json``.

    python bench/profile_iter.py --data-root ../shared/datasets/cifar10
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
OUT = HERE / "results" / "profile.json"
STAGES = ("trunk_init", "real_prep", "real_forward", "syn_forward", "loss", "backward", "step")


class Laps:
    """Adds the time since the previous call to ``times[stage]`` (when recording)."""

    def __init__(self, times: dict[str, float], record: bool) -> None:
        self.times, self.record, self.tick = times, record, time.perf_counter()

    def __call__(self, stage: str) -> None:
        now = time.perf_counter()
        if self.record:
            self.times[stage] += now - self.tick
        self.tick = now


def main(argv: list[str] | None = None) -> int:
    import ltdistill as ld
    from ltdistill.augment import DSAConfig, apply_dsa, sample_dsa
    from ltdistill.compiling import maybe_compile
    from ltdistill.discrepancy import alpha_map, csdm_class_loss, sample_frequencies
    from ltdistill.nets import create_net
    from ltdistill.utils import make_generator

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", required=True)
    p.add_argument("--iters", type=int, default=4)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--batch-real", type=int, default=256)
    a = p.parse_args(argv)

    data = ld.load_lt_data("cifar10", a.data_root, imbalance=100)
    C, ipc, size = data.num_classes, 10, data.info.image_size
    counts = [len(data.train.indices_of(c)) for c in range(C)]
    alphas = alpha_map(counts, 0.9, 0.3)
    s = ld.distill(ld.make_config("random", ipc=ipc, seed=0), data)
    syn = data.normalize(s.images, torch.device("cpu")).clone().requires_grad_(True)
    opt = torch.optim.SGD([syn], lr=10.0, momentum=0.5)
    trunk = create_net("convnet", data.info.channels, C, size)
    trunk.requires_grad_(False)
    dim = trunk.embed(torch.zeros(1, data.info.channels, size, size)).shape[1]
    dsa_cfg = DSAConfig()
    results: dict = {}
    for mode in ("eager", "compiled"):
        embed = maybe_compile(trunk.embed, mode == "compiled", "convnet.embed")
        times: dict[str, float] = defaultdict(float)
        for it in range(a.warmup + a.iters):
            g = make_generator(0, "profile", it)
            lap = Laps(times, record=it >= a.warmup)

            fresh = create_net("convnet", data.info.channels, C, size).state_dict()
            trunk.load_state_dict(fresh)
            w = sample_frequencies(4096, dim, 1.0, "rbf", g)
            opt.zero_grad(set_to_none=True)
            lap("trunk_init")
            for c in range(C):
                idx = data.train.indices_of(c)
                pick = idx[torch.randperm(len(idx), generator=g)[: a.batch_real]]
                prm = sample_dsa(1, size, g, dsa_cfg, siamese=True)
                xr = apply_dsa(data.normalize(data.train.images[pick], torch.device("cpu")), prm)
                lap("real_prep")
                with torch.no_grad():
                    fr = embed(xr)
                lap("real_forward")
                fs = embed(apply_dsa(syn[c * ipc : (c + 1) * ipc], prm))
                lap("syn_forward")
                loss = csdm_class_loss(torch.nn.functional.normalize(fr, dim=1),
                                       torch.nn.functional.normalize(fs, dim=1), w, alphas[c]) * 300
                lap("loss")
                loss.backward()
                lap("backward")
            opt.step()
            lap("step")
        total = sum(times.values()) / a.iters
        results[mode] = {"s_per_iter": round(total, 3),
                         "stages_s_per_iter": {k: round(times[k] / a.iters, 4) for k in STAGES},
                         "stages_share": {k: round(times[k] / a.iters / total, 3) for k in STAGES},
                         "real_img_per_s": round(sum(min(n, a.batch_real) for n in counts) / total, 1)}
        print(mode, json.dumps(results[mode]), flush=True)

    # Operator-level split of the eager iteration's trunk work (one iteration's forward passes + backward).
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        g = make_generator(0, "profile-ops")
        for c in range(C):
            idx = data.train.indices_of(c)
            pick = idx[torch.randperm(len(idx), generator=g)[: a.batch_real]]
            prm = sample_dsa(1, size, g, dsa_cfg, siamese=True)
            xr = apply_dsa(data.normalize(data.train.images[pick], torch.device("cpu")), prm)
            with torch.no_grad():
                fr = trunk.embed(xr)
            fs = trunk.embed(apply_dsa(syn[c * ipc : (c + 1) * ipc], prm))
            csdm_class_loss(fr, fs, w, alphas[c]).backward()
    ev = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    tot = sum(e.self_cpu_time_total for e in ev)
    results["eager_top_ops"] = [{"op": e.key, "self_share": round(e.self_cpu_time_total / tot, 3),
                                 "self_ms": round(e.self_cpu_time_total / 1000, 1), "calls": e.count}
                                for e in ev[:12]]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True,
                            text=True).stdout.strip()
    out = {"protocol": {"method": "csdm", "dataset": "cifar10", "imbalance": 100, "ipc": ipc,
                        "batch_real": a.batch_real, "num_freqs": 4096, "iters": a.iters, "warmup": a.warmup,
                        "path": "per-class (library default)", "threads": torch.get_num_threads()},
           **results, "commit": commit, "date": dt.date.today().isoformat(), "torch": torch.__version__}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(out, indent=2) + "\n")
    for e in results["eager_top_ops"]:
        print(f"  {e['op']:<40} {100 * e['self_share']:5.1f}%  {e['calls']} calls")
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
