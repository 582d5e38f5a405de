"""Time the README's demo command from a fresh clone, as a new user runs it.

Clones the committed HEAD of this repository into a temporary folder, runs the README's
first command (``python3 -m venv … && pip install … && ltdistill demo``) there, each
``&&`` part timed on its own, and writes ``bench/results/demo.json``: the command, the
seconds of each part and in total, the demo's result table (from its ``results.json``),
the commit, the machine's core count and the date. ``python bench/report.py`` puts the
table and the time into the README.

    python bench/demo.py
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
OUT = HERE / "results" / "demo.json"


def readme_demo_command(readme: Path) -> str:
    """The README's first fenced bash command that runs ``ltdistill demo``."""
    for block in re.findall(r"```bash\n(.*?)```", readme.read_text(), flags=re.S):
        cmd = " ".join(line.rstrip("\\").strip() for line in block.strip().splitlines())
        if "ltdistill demo" in cmd:
            return cmd
    raise SystemExit(f"no `ltdistill demo` command in {readme}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(OUT))
    args = p.parse_args(argv)
    commit = subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, text=True).strip()
    with tempfile.TemporaryDirectory(prefix="ltdistill-demo-") as tmp:
        clone = Path(tmp) / "ltdistill"
        subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
        shared = REPO.parent / "shared"
        if shared.is_dir():  # the layout the README assumes (not needed by the demo itself)
            os.symlink(shared, Path(tmp) / "shared")
        command = readme_demo_command(clone / "README.md")
        parts, log = [], []
        t_all = time.perf_counter()
        for part in command.split(" && "):
            t0 = time.perf_counter()
            r = subprocess.run(["bash", "-c", part], cwd=clone, capture_output=True, text=True)
            parts.append({"command": part, "seconds": round(time.perf_counter() - t0, 1), "rc": r.returncode})
            log.append(r.stdout + r.stderr)
            if r.returncode != 0:
                sys.stderr.write("".join(log)[-4000:])
                raise SystemExit(f"`{part}` failed with exit code {r.returncode}")
        total = time.perf_counter() - t_all
        res = json.loads((clone / "demo_out" / "results.json").read_text())
        table = (clone / "demo_out" / "results.txt").read_text()
    rec = {"command": command, "parts": parts, "total_seconds": round(total, 1), "commit": commit,
           "date": dt.date.today().isoformat(), "cpu_cores": os.cpu_count(), "table": table,
           "rows": res.get("rows", []), "eval": res.get("eval"), "ipc": res.get("ipc"),
           "dataset": res.get("dataset")}
    Path(args.out).write_text(json.dumps(rec, indent=2) + "\n")
    print(table)
    each = ", ".join(f"{x['seconds']:.0f} s" for x in parts)
    print(f"fresh clone at {commit}: {total:.0f} s in total ({each}); wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
