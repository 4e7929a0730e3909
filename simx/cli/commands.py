"""The commands: one function each, ``(ctx, args) -> exit status``.  They ask runweb through
``ctx.client`` and show the answer through ``render`` (or as JSON with --json)."""
from __future__ import annotations

import json
import time
import urllib.parse

import yaml

from .. import limits, protocol
from . import render
from .http import SimxError

MAX_BARS = 20            # running runs shown as bars by `watch`
MAX_FAILED_SHOWN = 20    # failed runs listed by `show`
TRANSIENT = (None, 502, 503, 504)   # no answer, or runq away: `watch` retries these
WATCH_PATIENCE = 60.0    # seconds `watch` keeps trying through them before it gives up
# fields of a batch request (StartBatch's, declared once in simx/records.py); `--set KEY=VALUE`
# with another first key sets param.KEY
REQUEST_FIELDS = tuple(protocol.request_fields("StartBatch"))


class Context:
    def __init__(self, client, out, stdout, stdin, as_json: bool, sleep=time.sleep):
        self.client, self.out, self.stdout, self.stdin = client, out, stdout, stdin
        self.as_json, self.sleep = as_json, sleep

    def json(self, data) -> None:
        render.print_json(data, self.stdout)


# ---- submit
def read_request(path: str, stdin) -> bytes:
    if path == "-":
        return stdin.buffer.read() if hasattr(stdin, "buffer") else stdin.read().encode("utf-8")
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise SimxError(f"cannot read {path}: {exc.strerror}") from None


def parse_request(body: bytes, name: str) -> dict:
    try:
        doc = yaml.safe_load(body.decode("utf-8"))
    except UnicodeDecodeError:
        raise SimxError(f"{name} is not UTF-8 text") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise SimxError(f"{name} is not valid YAML{where}: {getattr(exc, 'problem', None) or exc}") from None
    if not isinstance(doc, dict):
        raise SimxError(f"{name} must be a YAML mapping of batch fields (engine, n_runs, param, ...)")
    return doc


def apply_set(doc: dict, assignment: str) -> None:
    """`a.b=VALUE`: set a nested key, VALUE read as YAML; a first key that is not a batch field
    is a key of param (`step_count=3` is `param.step_count=3`)."""
    key, sep, text = assignment.partition("=")
    path = key.strip().split(".")
    if not sep or not all(path):
        raise SimxError(f"--set {assignment!r}: write KEY=VALUE, KEY being a field or a dotted path like param.a.b")
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError as exc:
        raise SimxError(f"--set {key}: the value is not valid YAML: {getattr(exc, 'problem', None) or exc}") from None
    if path[0] not in REQUEST_FIELDS:
        path = ["param"] + path
    node = doc
    for i, part in enumerate(path[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        elif not isinstance(child, dict):
            raise SimxError(f"--set {key}: {'.'.join(path[:i + 1])} is not a mapping")
        node = child
    node[path[-1]] = value


def submit(ctx: Context, args) -> int:
    name = "standard input" if args.file == "-" else args.file
    body = read_request(args.file, ctx.stdin)
    doc = parse_request(body, name)
    if args.set:
        for assignment in args.set:
            apply_set(doc, assignment)
        body = yaml.safe_dump(doc, sort_keys=False, allow_unicode=True).encode("utf-8")
    reply = ctx.client.post("/batch/new", body, headers={"Content-Type": "application/yaml"})
    b = reply["batch"]
    if ctx.as_json:
        ctx.json(reply)
    else:
        verb = "started" if reply.get("created", True) else "exists already (same idempotency key)"
        ctx.out.print(f"batch {reply['batch_id']} {verb}: {b['n_runs']} runs of {render.esc(b['engine'])}")
        for line in render.batch_summary(b)[2:]:   # what follows the two lines of facts (hints, the description)
            ctx.out.print(line)
    if args.watch:
        return watch_batch(ctx, reply["batch_id"], args.interval)
    return 0


# ---- reading
def ls(ctx: Context, args) -> int:
    user = ctx.client.settings.user
    if args.all or not user:
        batches = list(ctx.client.pages("/batch", "batches"))
    else:
        batches = list(ctx.client.pages("/user/" + urllib.parse.quote(user, safe=""), "batches"))
    if ctx.as_json:
        ctx.json(batches)
    elif batches:
        ctx.out.print(render.batches_table(batches))
    else:
        ctx.out.print("no batches" + ("" if args.all or not user else f" of user {user} (--all for everyone's)"))
    return 0


def _summary(ctx: Context, batch_id: int) -> dict:
    return ctx.client.get(f"/batch/{batch_id}", runs="none")["batch"]


def _failed(ctx: Context, batch_id: int, most: int) -> list[dict]:
    return ctx.client.get(f"/batch/{batch_id}", state="failed", limit=most)["runs"]


def show(ctx: Context, args) -> int:
    b = _summary(ctx, args.batch)
    failed = _failed(ctx, args.batch, MAX_FAILED_SHOWN) if b["n_failed"] else []
    if ctx.as_json:
        ctx.json({"batch": b, "failed_runs": failed})
    else:
        print_summary(ctx, b, failed)
    return 0


def print_summary(ctx: Context, b: dict, failed: list[dict]) -> None:
    for line in render.batch_summary(b):
        ctx.out.print(line)
    ctx.out.print(render.counts_table(b))
    if failed:
        more = f" (the first {len(failed)}; simx runs {b['id']} --state failed lists all)" \
            if b["n_failed"] > len(failed) else ""
        ctx.out.print(f"failed runs{more}:")
        ctx.out.print(render.runs_table(failed))


def runs(ctx: Context, args) -> int:
    params = {"state": args.state, "limit": min(args.limit or limits.DEFAULT_PAGE, limits.DEFAULT_PAGE)}
    items = list(ctx.client.pages(f"/batch/{args.batch}", "runs", params, most=args.limit))
    if ctx.as_json:
        ctx.json(items)
    elif items:
        ctx.out.print(render.runs_table(items))
    else:
        ctx.out.print(f"no {args.state + ' ' if args.state else ''}runs in batch {args.batch}")
    return 0


def run(ctx: Context, args) -> int:
    r = ctx.client.get(f"/batch/{args.batch}/run/{args.index}")["run"]
    if ctx.as_json:
        ctx.json(r)
        return 0
    out = ctx.out
    out.print(f"run {r['batch_index']} of batch {r['batch_id']}: {render.styled(r['state'])}, attempt "
              f"{r.get('attempt')}, worker {r.get('worker_id') if r.get('worker_id') is not None else '-'}"
              f" ({render.esc(r.get('host') or '-')}), progress {100 * (r.get('progress') or 0):.0f}%")
    out.print(f"  started {render.when(r.get('started')) or '-'}, ended {render.when(r.get('ended')) or '-'}")
    if r.get("param") is not None:
        out.print("  param: " + json.dumps(r["param"], ensure_ascii=False), markup=False)
    for label in ("message", "error"):
        if r.get(label):
            out.print(f"  {label}: {r[label]}", markup=False)
    if r.get("result") is not None:
        out.print("  result: " + json.dumps(r["result"], ensure_ascii=False), markup=False)
    if r.get("attempts"):
        out.print("attempts:")
        out.print(render.attempts_table(r["attempts"]))
    if r.get("traceback"):
        out.print("traceback of the last engine failure:")
        out.print(r["traceback"].rstrip(), markup=False, highlight=False)
    return 0


def results(ctx: Context, args) -> int:
    params = {"format": "csv" if args.csv else "jsonl", "state": args.state}
    sink = getattr(ctx.stdout, "buffer", None)
    for chunk in ctx.client.stream(f"/batch/{args.batch}/results", params):
        if sink is not None:
            sink.write(chunk)
        else:
            ctx.stdout.write(chunk.decode("utf-8"))
    ctx.stdout.flush()
    return 0


def workers(ctx: Context, args) -> int:
    items = [w for w in ctx.client.pages("/worker", "workers") if args.all or w.get("connected")]
    if ctx.as_json:
        ctx.json(items)
    elif items:
        ctx.out.print(render.workers_table(items))
    else:
        ctx.out.print("no connected workers" + ("" if args.all else " (--all lists the ones gone too)"))
    return 0


# ---- changes
def cancel(ctx: Context, args) -> int:
    path = f"/batch/{args.batch}" + (f"/run/{args.index}" if args.index is not None else "") + "/cancel"
    reply = ctx.client.post(path)
    if ctx.as_json:
        ctx.json(reply)
    else:
        b = reply.get("batch", {})
        ctx.out.print(f"{render.esc(reply.get('message'))}; batch {b.get('id')} is {render.styled(b.get('state', '?'))}")
    return 0


def drain(ctx: Context, args) -> int:
    reply = ctx.client.post(f"/worker/{args.worker}/drain")
    if ctx.as_json:
        ctx.json(reply)
    else:
        w = reply.get("worker", {})
        ctx.out.print(f"{render.esc(reply.get('message'))}: worker {w.get('id')} on {render.esc(w.get('host'))} is "
                      f"{render.styled(w.get('state', '?'))}")
    return 0


# ---- watch
def watch(ctx: Context, args) -> int:
    return watch_batch(ctx, args.batch, args.interval)


def watch_batch(ctx: Context, batch_id: int, interval: float) -> int:
    """Poll until the batch ends; 1 if any run failed, else 0."""
    if ctx.as_json:
        view = None
    elif ctx.out.is_terminal:
        view = render.LiveWatch(ctx.out, MAX_BARS)
    else:
        view = render.PlainWatch(ctx.out)
    last, b, trouble_since = None, None, None
    try:
        while True:
            try:
                b = _summary(ctx, batch_id)
                running = ctx.client.get(f"/batch/{batch_id}", state="running", limit=MAX_BARS)["runs"] \
                    if b["n_running"] and view is not None else []
                trouble_since = None
            except SimxError as exc:
                # runweb or runq restarting while we watch: keep polling for a while
                now = time.monotonic()
                trouble_since = trouble_since or now
                if b is None or exc.status not in TRANSIENT or now - trouble_since > WATCH_PATIENCE:
                    raise
                ctx.sleep(interval)
                continue
            if view is not None:
                view.update(b, running)
            elif _counts(b) != last:
                ctx.stdout.write(json.dumps(b, ensure_ascii=False) + "\n")
                ctx.stdout.flush()
            last = _counts(b)
            if b["state"] in render.ENDED:
                break
            ctx.sleep(interval)
    except BaseException:
        if view is not None:
            view.close()
        raise
    if view is not None:
        view.close()
        print_summary(ctx, b, _failed(ctx, batch_id, MAX_FAILED_SHOWN) if b["n_failed"] else [])
    return 1 if b["n_failed"] else 0


def _counts(b: dict) -> tuple:
    return tuple(b.get(k) for k in ("state", "n_waiting", "n_running", "n_finished", "n_failed", "n_cancelled"))

