"""P6: GET /batch/N (a 1,000-run page) under 64 concurrent connections, against a trivial Falcon
handler served by the same gunicorn configuration, in the same run.

A 1,000-run batch is run to the end first (so its page is 1,000 stored rows).  Then wrk (Debian's)
drives, alternately, for --seconds each, --repeat times:
    trivial     bench/trivial_app.py under runweb's exact gunicorn command line
    page JSON   GET /batch/N?limit=1000 with Accept: application/json (what the dashboard asks)
    page YAML   the same without Accept (what curl gets)
requests/s (median) and wrk's latency p50/p99.  --configs CLASS:WORKERS,... repeats it per
gunicorn worker class and count (the choice by measurement); the first is the one judged.

Informational, not judged: the first page of an ACTIVE batch (4 real workers reporting progress,
so the batch's version changes every few ms and runweb's page cache rarely helps; runq builds
and encodes the whole page almost every time): the cache is not the whole story.

    .venv/bin/python bench/p6_web.py [--seconds 8] [--repeat 3] [--configs gthread:2,gthread:4,sync:4]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys

import common  # noqa: F401
import report
from common import PY, ROOT, free_port, wait_until
from report import Row, median
from stack import HTTP, BenchStack

UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def wrk(url: str, seconds: float, conns: int, headers=()) -> dict:
    cmd = ["wrk", "-t2", f"-c{conns}", f"-d{seconds:g}s", "--latency", "--timeout", "10s"]
    for h in headers:
        cmd += ["-H", h]
    out = subprocess.run(cmd + [url], capture_output=True, text=True, timeout=seconds + 60).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    lat = {q: float(v) * UNITS[u] for q, v, u in re.findall(r"^\s+(50|99)(?:\.000)?%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)}
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"rps": rps, "p50": lat.get("50", float("nan")), "p99": lat.get("99", float("nan")),
            "non2xx": int(errors.group(1)) if errors else 0}


def start_trivial(s: BenchStack, env: dict, workers: int) -> tuple[subprocess.Popen, int]:
    """bench/trivial_app.py under runweb's own gunicorn argv (only the application swapped)."""
    port = free_port()
    code = ("import json, sys; from simx import config; import runweb.__main__ as m; "
            f"a = m.parse_args(['--port', '{port}', '--bind', '127.0.0.1', '--workers', '{workers}']); "
            "print(json.dumps(m.gunicorn_argv(a, config.load())))")
    argv = json.loads(subprocess.run([PY, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                                     check=True).stdout)
    argv[-1] = "bench.trivial_app:app"
    metrics = f"{s.tmp}/trivial-metrics"
    os.makedirs(metrics, exist_ok=True)
    proc = subprocess.Popen(argv, cwd=ROOT, env=dict(env, PROMETHEUS_MULTIPROC_DIR=metrics),
                            stdout=subprocess.DEVNULL, stderr=s.log("trivial"), start_new_session=True)
    h = HTTP(port)
    wait_until(lambda: h.request("GET", "/")[0] == 200, 30, "trivial app up")
    h.close()
    return proc, port


def stop_group(proc: subprocess.Popen):
    try:
        os.killpg(proc.pid, 15)
        proc.wait(15)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, 9)
        except ProcessLookupError:
            pass


def measure(cls: str, workers: int, args) -> dict:
    env_extra = {"RUNWEB_WORKER_CLASS": cls}
    with BenchStack() as s:
        s.env.update(env_extra)
        s.start_runq()
        bid = s.ended_batch(1000)
        s.start_runweb(workers=workers)
        trivial, tport = start_trivial(s, s.env, workers)
        page = f"http://127.0.0.1:{s.web_port}/batch/{bid}?limit=1000"
        status, data = s.http().request("GET", f"/batch/{bid}?limit=1000")
        assert status == 200 and len(data["runs"]) == 1000, (status, str(data)[:200])
        res = {"trivial": [], "page JSON": [], "page YAML": []}
        try:
            for _ in range(args.repeat):
                res["trivial"].append(wrk(f"http://127.0.0.1:{tport}/", args.seconds, args.conns))
                res["page JSON"].append(wrk(page, args.seconds, args.conns, ["Accept: application/json"]))
                res["page YAML"].append(wrk(page, args.seconds, args.conns))
        finally:
            stop_group(trivial)
        # informational: a batch whose runs keep changing (progress every 20 ms on 4 workers)
        s.start_workers(4)
        s.wait_connected(4)
        active = s.request("StartBatch", name="p6-active", engine="dummy", n_runs=1000,
                           param={"step_count": 100_000, "step_delay": 0.02})["batch_id"]
        wait_until(lambda: s.request("BatchStatus", batch_id=active, offset=0, limit=0)["batch"]["n_running"]
                   >= 4, 60, "4 runs of the active batch running")
        apage = f"http://127.0.0.1:{s.web_port}/batch/{active}?limit=1000"
        res["active JSON"] = [wrk(apage, args.seconds, args.conns, ["Accept: application/json"])
                              for _ in range(args.repeat)]
        s.stop_workers()
    return {k: {f: median(r[f] for r in v) for f in ("rps", "p50", "p99", "non2xx")} for k, v in res.items()}


def run(args) -> list[Row]:
    if not shutil.which("wrk"):
        print("P6: wrk is not installed (apt-get install wrk; `make bench` does it as root): skipped")
        rows = [Row("P6", "GET /batch/N page vs trivial handler", "skipped: no wrk", "≥ 0.5", None)]
        report.print_rows(rows, "P6 skipped: no wrk")
        return rows
    print(f"P6: wrk, {args.conns} connections, {args.seconds:g} s per measure, median of {args.repeat}; a 1,000-run page "
          f"of a finished batch vs a trivial Falcon handler on the same gunicorn command line", flush=True)
    rows = []
    for i, conf in enumerate(args.configs.split(",")):
        cls, workers = conf.split(":")
        m = measure(cls, int(workers), args)
        for k, v in m.items():
            print(f"  {cls} × {workers}: {k:10} {v['rps']:8,.0f} req/s  p50 {v['p50']:7.1f} ms  p99 {v['p99']:7.1f} ms"
                  + (f"  non-2xx {v['non2xx']:.0f}" if v["non2xx"] else ""), flush=True)
        ratio = m["page JSON"]["rps"] / m["trivial"]["rps"]
        aratio = m["active JSON"]["rps"] / m["trivial"]["rps"]
        yratio = m["page YAML"]["rps"] / m["trivial"]["rps"]
        print(f"  {cls} × {workers}: page/trivial {ratio:.3f} (JSON), {yratio:.3f} (YAML); "
              f"active batch's page {aratio:.3f} (JSON, informational)", flush=True)
        p = m["page JSON"]
        rows.append(Row("P6", f"page JSON / trivial req/s, {cls} × {workers} (p50/p99 ms of the page)",
                        f"{p['rps']:,.0f} / {m['trivial']['rps']:,.0f} = {ratio:.3f} ({p['p50']:.0f}/{p['p99']:.0f})",
                        "≥ 0.5" if i == 0 else "", (ratio >= 0.5) if i == 0 else None))
        a = m["active JSON"]
        rows.append(Row("P6", f"ACTIVE batch's page JSON / trivial req/s, {cls} × {workers} (informational)",
                        f"{a['rps']:,.0f} / {m['trivial']['rps']:,.0f} = {aratio:.3f} ({a['p50']:.0f}/{a['p99']:.0f})",
                        "", None))
    report.print_rows(rows, f"P6 a 1,000-run page at {rows[0].value.split('= ')[1]} of a trivial handler's "
                            f"requests/s (target ≥ 0.5: {rows[0].verdict})")
    return rows


def parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=8)
    p.add_argument("--conns", type=int, default=64)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--configs", default="gthread:2", help="gunicorn worker class:count, comma-separated")
    p.add_argument("--rows")
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    report.print_header("p6_web", "falcon", "gunicorn")
    report.save_rows(args.rows, run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
