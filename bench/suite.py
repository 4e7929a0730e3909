"""`make bench`: every simx benchmark (P1-P9 of issue 10, the runq ceiling, profiles), one table.

Each script runs as its own process (its figures print as they come, each ends with a
HEADLINE line) and appends its target rows to a file; the suite then prints one table with
the date, the machine (cores, memory, load) and versions.  About 10 minutes on 2 cores.

    .venv/bin/python bench/suite.py [--quick] [--only p1,p2,...] [--no-secure] [--no-profile]
--quick shrinks every workload (a smoke run of the suite, about 3 minutes).
P1 and P5 also run with worker and client secrets and TLS (as the issue asks); --no-secure skips that.
P1 is judged at the defaults (no SIMX_LOG_LEVEL: conf's INFO, as a user runs simx), with P1 at
WARNING beside it; every other figure is measured at WARNING.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

import common  # noqa: F401
import report

PY = sys.executable
HERE = os.path.dirname(os.path.abspath(__file__))

# (name, script, full arguments, quick arguments)
STEPS = [
    ("p1", "p1_throughput.py", [], ["--runs", "3000", "--big", "10000", "--repeat", "1"]),
    ("p2", "p2_depth.py", [], ["--repeat", "1", "--window", "10000"]),
    ("p3", "p3_submit.py", [], ["--repeat", "3"]),
    ("p4", "p4_fleet.py", [], ["--workers", "2000", "--window", "10", "--samples", "20"]),
    ("p5", "p5_latency.py", [], ["--samples", "100"]),
    ("p6", "p6_web.py", ["--configs", "gthread:2,gthread:4", "--repeat", "2", "--seconds", "6"], ["--seconds", "4", "--repeat", "1"]),
    ("p7", "p7_restart.py", [], ["--repeat", "1", "--waiting", "20000", "--workers", "200"]),
    ("p8", "p8_readers.py", ["--cut", "20"], ["--runs", "5000", "--repeat", "1", "--cut", "15"]),
    ("p9", "p9_memory.py", [], ["--runs", "200000", "--every", "20000"]),
    ("ceiling", "throughput.py", ["--runs", "10000", "--repeat", "2", "--only", "runq/driver,probe/driver"],
     ["--runs", "3000", "--repeat", "1", "--only", "runq/driver,probe/driver"]),
    ("profile", "profiles.py", [], ["--runs", "10000", "--seconds", "5"]),
]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--only", default="", help="comma-separated step names: " + ",".join(s[0] for s in STEPS))
    p.add_argument("--no-secure", action="store_true", help="skip P1 and P5 with secrets and TLS")
    p.add_argument("--no-profile", action="store_true")
    args = p.parse_args(argv)
    only = set(filter(None, args.only.split(",")))
    rows_file = tempfile.mktemp(prefix="simx-bench-rows-", suffix=".jsonl")
    report.print_header("make bench" + (" --quick" if args.quick else ""), "falcon", "gunicorn", "SQLAlchemy", "dataset")
    t0 = time.monotonic()
    failed = []
    for name, script, full, quick in STEPS:
        if (only and name not in only) or (name == "profile" and args.no_profile):
            continue
        extra = ["--secure"] if not args.no_secure and name in ("p1", "p5") else []
        rows_arg = ["--rows", rows_file] if name != "profile" else []
        cmd = [PY, os.path.join(HERE, script), *(quick if args.quick else full), *extra, *rows_arg]
        print(f"\n--- {name}: {' '.join(os.path.basename(c) if c == PY else c for c in cmd[1:])}", flush=True)
        t = time.monotonic()
        rc = subprocess.call(cmd, cwd=os.path.dirname(HERE))
        print(f"--- {name}: {time.monotonic() - t:.0f} s" + (f", FAILED (exit {rc})" if rc else ""), flush=True)
        if rc:
            failed.append(name)
    rows = report.load_rows(rows_file)
    os.unlink(rows_file) if os.path.exists(rows_file) else None
    report.print_table(f"make bench: simx targets (issue 10), {time.monotonic() - t0:.0f} s", rows,
                       "falcon", "gunicorn", "SQLAlchemy", "dataset")
    met = [r for r in rows if r.met is not None]
    print(f"\nHEADLINE: {sum(r.met for r in met)} of {len(met)} targets met"
          + (f"; steps failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
