"""Is bfloat16 autocast faster here? One ConvNet-3 training step (forward, backward, SGD) at
batch 256, 32 px, float32 against bf16 autocast, on this machine's CPU (and GPU if any).

``bf16: auto`` (experts; available to evaluation and distillation) turns autocast on only
where :func:`ltdistill.utils.native_bf16` says the device has it natively; this benchmark is
the evidence for that rule on each machine it runs on. Both precisions alternate within one
run (median of ``--repeats`` timed steps after warm-up), so the ratio is fair even when the
machine is shared. Writes ``bench/results/bf16.json`` (one entry per machine, merged).

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


def step_seconds(device: torch.device, bf16: bool, batch: int, repeats: int, warmup: int = 2) -> float:
    net = init_net("convnet", 3, 10, 32, 0).to(device)
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, 32, 32, generator=g).to(device)
    y = torch.randint(10, (batch,), generator=g).to(device)
    times = []
    for i in range(warmup + repeats):
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
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", default=str(OUT))
    a = p.parse_args(argv)
    dev = resolve_device(a.device)
    fp32 = step_seconds(dev, False, a.batch, a.repeats)
    bf16 = step_seconds(dev, True, a.batch, a.repeats)
    rec = {"machine": machine(), "device": str(dev), "native_bf16": native_bf16(dev), "batch": a.batch,
           "repeats": a.repeats, "fp32_step_s": round(fp32, 4), "bf16_step_s": round(bf16, 4),
           "bf16_speedup": round(fp32 / bf16, 3), "auto_picks": "bf16" if native_bf16(dev) else "float32",
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
