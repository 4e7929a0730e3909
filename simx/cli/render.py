"""What the command line shows: rich tables for people, and the two faces of `watch`
(live bars on a terminal, plain progress lines otherwise).  No HTTP here."""
from __future__ import annotations

import json
import time

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn
from rich.table import Table

from .. import records

ENDED = records.BATCH_ENDED
STATE_STYLE = {"finished": "green", "done": "green", "failed": "red", "cancelled": "yellow",
               "running": "cyan", "active": "cyan", "waiting": "dim", "idle": "green", "busy": "cyan",
               "draining": "yellow", "disconnected": "dim", "gone": "dim"}


def console(file=None) -> Console:
    c = Console(file=file, highlight=False)
    if not c.is_terminal:   # a pipe or a file: no wrapping at 80 columns, no colour
        c = Console(file=file, highlight=False, width=200, no_color=True)
    return c


def print_json(data, file) -> None:
    file.write(json.dumps(data, ensure_ascii=False, indent=2) + "\n")


def when(iso: str | None) -> str:
    """2026-11-29T01:02:03.456Z -> 2026-11-29 01:02:03"""
    return "" if not iso else iso.replace("T", " ").split(".")[0].rstrip("Z")


def esc(value) -> str:
    """Text from runweb (names, hosts, messages) as literal text in rich markup."""
    return escape("" if value is None else str(value))


def styled(state: str) -> str:
    style = STATE_STYLE.get(state)
    return f"[{style}]{state}[/]" if style else esc(state)


def n_ended(b: dict) -> int:
    return b.get("n_finished", 0) + b.get("n_failed", 0) + b.get("n_cancelled", 0)


def seconds(value) -> str:
    if value is None:
        return ""
    value = int(value)
    h, rest = divmod(value, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


def batches_table(batches: list[dict]) -> Table:
    t = Table(box=None, header_style="bold")
    for col in ("id", "name", "user", "engine", "state", "ended", "finished", "failed", "running",
                "waiting", "served", "started", "elapsed"):
        t.add_column(col, justify="right" if col in ("id", "ended", "finished", "failed", "running",
                                                     "waiting", "elapsed") else "left")
    for b in batches:
        t.add_row(str(b["id"]), esc(b.get("name")), esc(b.get("user")), esc(b["engine"]), styled(b["state"]),
                  f"{n_ended(b)}/{b['n_runs']}", str(b["n_finished"]), str(b["n_failed"]), str(b["n_running"]),
                  str(b["n_waiting"]), _served(b), when(b.get("start_time")), seconds(b.get("elapsed")))
    return t


def _served(b: dict) -> str:
    if b.get("served") is None or b["state"] in ENDED:
        return ""
    return "yes" if b["served"] else "[red]no[/]"


def batch_summary(b: dict) -> list[str]:
    lines = [f"batch {b['id']} ({esc(b.get('name') or 'unnamed')}): {styled(b['state'])}, "
             f"{n_ended(b)} of {b['n_runs']} runs ended, elapsed {seconds(b.get('elapsed'))}",
             f"  engine {esc(b['engine'])}, group {esc(b.get('group') or '-')}, user {esc(b.get('user') or '-')}; "
             f"started {when(b.get('start_time'))}" + (f", ended {when(b['end_time'])}" if b.get("end_time") else "")]
    if b.get("served") is False and b["state"] not in ENDED:
        lines.append(f"  [red]no connected worker serves this batch[/] (engine {esc(b['engine'])}, group "
                     f"{esc(b.get('group') or '-')}, user {esc(b.get('user') or '-')}): its runs wait")
    if b.get("description"):   # free text, its lines kept
        lines += ["  " + esc(line) for line in str(b["description"]).splitlines()]
    return lines


def counts_table(b: dict) -> Table:
    t = Table(box=None, header_style="bold")
    for state in ("waiting", "running", "finished", "failed", "cancelled"):
        t.add_column(styled(state), justify="right")
    t.add_row(*(str(b.get(f"n_{s}", 0)) for s in ("waiting", "running", "finished", "failed", "cancelled")))
    return t


def runs_table(runs: list[dict]) -> Table:
    t = Table(box=None, header_style="bold")
    for col in ("index", "state", "attempt", "worker", "host", "progress", "started", "ended", "message"):
        t.add_column(col, justify="right" if col in ("index", "attempt", "worker", "progress") else "left")
    for r in runs:
        text = r.get("error") if r["state"] == "failed" else r.get("message")
        t.add_row(str(r["batch_index"]), styled(r["state"]), str(r.get("attempt") or 0),
                  "" if r.get("worker_id") is None else str(r["worker_id"]), esc(r.get("host")),
                  f"{100 * (r.get('progress') or 0):.0f}%", when(r.get("started")), when(r.get("ended")),
                  esc(_one_line(text)))
    return t


def _one_line(text) -> str:
    if text is None:
        return ""
    text = str(text).strip().splitlines()
    return (text[-1] if text else "")[:200]


def attempts_table(attempts: list[dict]) -> Table:
    t = Table(box=None, header_style="bold")
    for col in ("attempt", "outcome", "worker", "host", "started", "ended", "message"):
        t.add_column(col)
    for a in attempts:
        t.add_row(str(a["attempt"]), styled(a.get("outcome") or ""),
                  "" if a.get("worker_id") is None else str(a["worker_id"]), esc(a.get("host")),
                  when(a.get("started")), when(a.get("ended")), esc(_one_line(a.get("message"))))
    return t


def workers_table(workers: list[dict]) -> Table:
    t = Table(box=None, header_style="bold")
    for col in ("id", "host", "pid", "engine", "group", "user", "state", "run", "last contact"):
        t.add_column(col, justify="right" if col in ("id", "pid") else "left")
    for w in workers:
        run = "" if w.get("batch_id") is None else f"{w['batch_id']}/{w['batch_index']}"
        t.add_row(str(w["id"]), esc(w.get("host")), str(w.get("pid") or ""), esc(w.get("engine")),
                  esc(w.get("group")), esc(w.get("user")), styled(w.get("state") or ""), run,
                  when(w.get("last_contact")))
    return t


class Speed:
    """Runs ended per second since watching began, and the time left at that pace."""

    def __init__(self, clock=time.monotonic):
        self.clock, self.first = clock, None

    def observe(self, ended: int, total: int) -> tuple[float | None, float | None]:
        now = self.clock()
        if self.first is None:
            self.first = (now, ended)
        t0, n0 = self.first
        if now - t0 < 0.5 or ended == n0:
            return None, None
        rate = (ended - n0) / (now - t0)
        return rate, (total - ended) / rate if rate > 0 else None


def speed_text(rate, eta) -> str:
    return f"{rate:.1f} runs/s, ETA {seconds(eta)}" if rate else "-- runs/s, ETA --"


class PlainWatch:
    """No terminal: one line whenever the counts change (and nothing when they do not)."""

    def __init__(self, out: Console):
        self.out, self.last, self.speed = out, None, Speed()

    def update(self, b: dict, running: list[dict]) -> None:
        rate, eta = self.speed.observe(n_ended(b), b["n_runs"])
        counts = (b["state"], b["n_waiting"], b["n_running"], b["n_finished"], b["n_failed"], b["n_cancelled"])
        if counts == self.last:
            return
        self.last = counts
        self.out.print(f"batch {b['id']} {b['state']}: {n_ended(b)}/{b['n_runs']} ended (finished "
                       f"{b['n_finished']}, failed {b['n_failed']}, cancelled {b['n_cancelled']}, running "
                       f"{b['n_running']}, waiting {b['n_waiting']}); {speed_text(rate, eta)}", markup=False)

    def close(self) -> None:
        pass


class LiveWatch:
    """A terminal: an overall bar (runs/s, ETA) and one bar per running run (worker, message)."""

    def __init__(self, out: Console, max_bars: int):
        self.max_bars, self.speed = max_bars, Speed()
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(bar_width=40),
                                 TextColumn("{task.fields[info]}"), console=out, refresh_per_second=8)
        self.overall = None
        self.bars: dict[int, int] = {}   # batch_index -> task id
        self.progress.start()

    def update(self, b: dict, running: list[dict]) -> None:
        rate, eta = self.speed.observe(n_ended(b), b["n_runs"])
        info = (f"{n_ended(b)}/{b['n_runs']}  finished {b['n_finished']}, failed {b['n_failed']}, "
                f"running {b['n_running']}, waiting {b['n_waiting']}  {speed_text(rate, eta)}")
        shown = {r["batch_index"]: r for r in running[:self.max_bars]}
        hidden = b["n_running"] - len(shown)
        info += f"  (bars for {len(shown)} of {b['n_running']} running)" if hidden > 0 else ""
        if self.overall is None:
            self.overall = self.progress.add_task("", total=b["n_runs"], info=info)
        self.progress.update(self.overall, completed=n_ended(b), info=info,
                             description=f"batch {b['id']} {styled(b['state'])}")
        for index in [i for i in self.bars if i not in shown]:
            self.progress.remove_task(self.bars.pop(index))
        for index, r in shown.items():
            label = f"  run {index} on worker {r.get('worker_id')} ({esc(r.get('host') or '?')})"
            info = f"{100 * (r.get('progress') or 0):3.0f}%  {esc(_one_line(r.get('message')))}"
            if index not in self.bars:
                self.bars[index] = self.progress.add_task(label, total=1.0, info=info)
            self.progress.update(self.bars[index], completed=r.get("progress") or 0.0, info=info,
                                 description=label)
        self.progress.refresh()

    def close(self) -> None:
        for task in self.bars.values():
            self.progress.remove_task(task)
        self.bars.clear()
        self.progress.refresh()
        self.progress.stop()
