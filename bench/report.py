"""What every bench script reports with: medians and percentiles, /proc readings (CPU, RSS),
the machine and versions, target rows (met / not met) and the closing table.

A script measures, then hands `Row`s to `print_rows`; `suite.py` and `peers.py` collect the
rows of several scripts and print one table with `print_table`.
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TICK = os.sysconf("SC_CLK_TCK")


def median(xs) -> float:
    xs = list(xs)
    return statistics.median(xs) if xs else float("nan")


def percentile(xs, q: float) -> float:
    """The q-th percentile (0-100) by nearest rank; nan for no samples."""
    xs = sorted(xs)
    if not xs:
        return float("nan")
    k = max(0, min(len(xs) - 1, int(round(q / 100 * len(xs) + 0.5)) - 1))
    return xs[k]


# ---- /proc
def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process (0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK   # utime, stime (fields 14, 15 of stat)


def cpu_of(pids) -> float:
    return sum(cpu_seconds(p) for p in pids)


def rss_mb(pid: int) -> float:
    """Resident set size of a process in MB (VmRSS)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def children_of(pid: int) -> list[int]:
    """Direct children of a process (gunicorn's workers)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


# ---- machine and versions
def machine() -> dict:
    mem = "?"
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    mem = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "")
    except OSError:
        pass
    load = os.getloadavg()
    return {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "cores": os.cpu_count(), "cpu": model, "memory": mem,
            "load": f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}", "python": platform.python_version()}


def git_rev() -> str:
    try:
        return subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"], capture_output=True,
                              text=True, timeout=5).stdout.strip() or "?"
    except OSError:
        return "?"


def versions(*dists: str) -> dict:
    from importlib import metadata
    out = {"simx": git_rev()}
    for d in dists:
        try:
            out[d] = metadata.version(d)
        except metadata.PackageNotFoundError:
            out[d] = "-"
    import sqlite3
    out["sqlite"] = sqlite3.sqlite_version
    return out


def print_header(title: str, *dists: str) -> None:
    m = machine()
    print(f"== {title}: {m['date']}; {m['cores']} cores ({m['cpu']}), {m['memory']}, load {m['load']}; "
          f"Python {m['python']}; " + ", ".join(f"{k} {v}" for k, v in versions(*dists).items()), flush=True)


# ---- target rows
@dataclasses.dataclass
class Row:
    target: str          # "P1", "P2", ... or "" for a figure reported only
    measure: str         # what was measured, with its unit
    value: str           # the figure, formatted
    goal: str = ""       # the target, as text ("≥ 8,000 runs/s"), "" when only reported
    met: bool | None = None   # None: reported, no target

    @property
    def verdict(self) -> str:
        return "" if self.met is None else ("met" if self.met else "NOT met")


def print_rows(rows: list[Row], headline: str) -> None:
    for r in rows:
        goal = f"  (target {r.goal}: {r.verdict})" if r.goal else ""
        print(f"  {r.target + ' ' if r.target else ''}{r.measure}: {r.value}{goal}", flush=True)
    print(f"HEADLINE: {headline}", flush=True)


def print_table(title: str, rows: list[Row], *dists: str) -> None:
    m = machine()
    print()
    print(f"### {title}")
    print(f"date {m['date']}; machine: {m['cores']} cores ({m['cpu']}), {m['memory']} memory, load {m['load']}")
    print("versions: Python " + m["python"] + ", " + ", ".join(f"{k} {v}" for k, v in versions(*dists).items()))
    print()
    print("| # | measure | value | target | met |")
    print("| --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r.target} | {r.measure} | {r.value} | {r.goal} | {r.verdict} |")
    sys.stdout.flush()


def save_rows(path: str | None, rows: list[Row]) -> None:
    """Append rows as JSON lines (the suite collects them from its scripts)."""
    if path:
        with open(path, "a") as f:
            for r in rows:
                f.write(json.dumps(dataclasses.asdict(r)) + "\n")


def load_rows(path: str) -> list[Row]:
    try:
        with open(path) as f:
            return [Row(**json.loads(line)) for line in f if line.strip()]
    except OSError:
        return []


def fmt(x: float, digits: int = 0) -> str:
    return "n/a" if x != x else f"{x:,.{digits}f}"
