"""LAD's expert training: eager against compiled, in one run (``experts.compile``).

Stage 1 (the whole ConvNet-3, SGD, DSA, batch 256) and stage 2 (the frozen backbone's
embedding, the classifier trained) on CIFAR-10-LT IF 100, as ``ltdistill experts`` runs
them: ``batches`` training batches per (stage, mode), after ``warmup`` batches that pay the
compilation (reported separately). Modes alternate ``repeats`` times; each keeps its fastest.
Precision: what ``experts.bf16: auto`` resolves to on this machine.

Writes ``bench/results/experts_speed.json``.

    python bench/experts_speed.py --data-root ../shared/datasets/cifar10
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "results" / "experts_speed.json"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", required=True)
    p.add_argument("--batches", type=int, default=12)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=2)
    a = p.parse_args(argv)
    import torch

    import ltdistill as ld
    from ltdistill.augment import DSAConfig
    from ltdistill.compiling import maybe_compile
    from ltdistill.experts import ExpertConfig, _epoch, resolved
    from ltdistill.nets import init_net
    from ltdistill.utils import machine, resolve_device

    sys.path.insert(0, str(HERE))
    from accuracy import COMMIT

    data = ld.load_lt_data("cifar10", a.data_root, imbalance=100)
    device = resolve_device("auto")
    cfg = resolved(ExpertConfig(), device)
    x = data.normalize(data.train.images.to(device), device)
    y = data.train.labels.to(device)
    dsa = DSAConfig()
    g = torch.Generator().manual_seed(0)
    batch_list = list(torch.randperm(len(y), generator=g).split(cfg.batch_size))[: a.warmup + a.batches]
    nets, times, warm = {}, {}, {}
    for mode in ("eager", "compiled"):
        net = init_net("convnet", 3, 10, 32, 0).to(device)
        on = mode == "compiled"
        nets[mode] = (net, maybe_compile(net, on, "net", dynamic=False),
                      maybe_compile(net.embed, on, "embed", dynamic=False))
    for rep in range(a.repeats):
        for mode, (net, fwd, embed) in nets.items():
            for stage, frozen, f in ((1, False, fwd), (2, True, embed)):
                params = net.classifier.parameters() if frozen else net.parameters()
                opt = torch.optim.SGD(params, lr=0.01)
                t0 = time.perf_counter()
                if rep == 0:
                    _epoch(net, x, y, batch_list[: a.warmup], opt, dsa, g, g, cfg.bf16, frozen, f)
                    warm[(mode, stage)] = time.perf_counter() - t0
                t0 = time.perf_counter()
                _epoch(net, x, y, batch_list[a.warmup:], opt, dsa, g, g, cfg.bf16, frozen, f)
                s = (time.perf_counter() - t0) / a.batches
                times[(mode, stage)] = min(times.get((mode, stage), s), s)
    rec = {f"stage{st}": {"eager_s_per_batch": round(times[("eager", st)], 4),
                          "compiled_s_per_batch": round(times[("compiled", st)], 4),
                          "speedup": round(times[("eager", st)] / times[("compiled", st)], 3),
                          "compiled_warmup_s": round(warm[("compiled", st)], 1),
                          "eager_warmup_s": round(warm[("eager", st)], 1)} for st in (1, 2)}
    steps = -(-len(y) // cfg.batch_size)
    rec["epoch_estimate_s"] = {m: {f"stage{st}": round(steps * times[(m, st)], 1) for st in (1, 2)}
                               for m in ("eager", "compiled")}
    out = {"protocol": {"dataset": "cifar10", "imbalance": 100, "net": "convnet", "batch": cfg.batch_size,
                        "batches": a.batches, "warmup": a.warmup, "repeats": a.repeats, "bf16": cfg.bf16,
                        "dsa": True},
           **rec, "machine": machine(), "threads": torch.get_num_threads(), "commit": COMMIT,
           "date": dt.date.today().isoformat(), "torch": torch.__version__}
    OUT.write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
