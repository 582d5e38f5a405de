"""Is bfloat16 autocast faster here? One ConvNet-3 training step (forward, backward, SGD) at
batch 256, 32 px, float32 against bf16 autocast, in both memory formats (contiguous, and
channels_last, which the distillation loop uses by default), on this machine's CPU (and GPU
if any).

``bf16: auto`` (experts; available to evaluation and distillation) turns autocast on only
where :func:`ltdistill.utils.native_bf16` says the device has it natively; this benchmark is
the evidence for that rule on each machine it runs on. The four variants alternate step by
step within one run (median of ``--repeats`` timed steps after warm-up), so a machine that
slows down or speeds up during the run affects all of them alike. Writes
``bench/results/bf16.json`` (one entry per machine, merged). Run it on an otherwise idle
machine: two processes sharing 2 cores give ratios that mean nothing.

    python bench/bf16.py
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ltdistill.nets import init_net
from ltdistill.utils import git_commit, machine, native_bf16, resolve_device

HERE = Path(__file__).resolve().parent
OUT = HERE / "results" / "bf16.json"


def step_seconds(device: torch.device, batch: int, repeats: int, warmup: int = 2) -> dict[tuple[bool, bool], float]:
    """Median seconds of one training step per (bf16, channels_last), the variants interleaved."""
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(batch, 3, 32, 32, generator=g)
    y = torch.randint(10, (batch,), generator=g).to(device)
    variants = [(bf16, cl) for cl in (False, True) for bf16 in (False, True)]
    state = {}
    for bf16, cl in variants:
        mem = torch.channels_last if cl else torch.contiguous_format
        net = init_net("convnet", 3, 10, 32, 0).to(device, memory_format=mem)
        state[bf16, cl] = (net, torch.optim.SGD(net.parameters(), lr=0.01), x0.to(device).contiguous(memory_format=mem))
    times: dict[tuple[bool, bool], list[float]] = {v: [] for v in variants}
    for i in range(warmup + repeats):
        for bf16, cl in variants:
            net, opt, x = state[bf16, cl]
            if device.type == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                out = net(x)
            loss = F.cross_entropy(out.float(), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i >= warmup:
                times[bf16, cl].append(time.perf_counter() - t)
    return {v: statistics.median(ts) for v, ts in times.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", default=str(OUT))
    a = p.parse_args(argv)
    dev = resolve_device(a.device)
    t = step_seconds(dev, a.batch, a.repeats)
    fp32, bf16 = t[False, False], t[True, False]
    fp32_cl, bf16_cl = t[False, True], t[True, True]
    rec = {"machine": machine(), "device": str(dev), "native_bf16": native_bf16(dev), "batch": a.batch,
           "repeats": a.repeats, "fp32_step_s": round(fp32, 4), "bf16_step_s": round(bf16, 4),
           "bf16_speedup": round(fp32 / bf16, 3),
           "channels_last": {"fp32_step_s": round(fp32_cl, 4), "bf16_step_s": round(bf16_cl, 4),
                             "bf16_speedup": round(fp32_cl / bf16_cl, 3)},
           "auto_picks": "bf16" if native_bf16(dev) else "float32",
           "threads": torch.get_num_threads(), "torch": torch.__version__, "commit": git_commit(),
           "date": dt.date.today().isoformat()}
    out = Path(a.out)
    entries = json.loads(out.read_text()) if out.is_file() else []
    entries = [e for e in entries if (e["machine"], e["device"]) != (rec["machine"], rec["device"])] + [rec]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(entries, indent=1) + "\n")
    print(json.dumps(rec, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
