"""The dashboard in a real browser: Debian's Chromium driven by Playwright against a real stack
(runq + gunicorn runweb + dummy workers).  Screenshots of each page go to var/test-artifacts/.

Needs /usr/bin/chromium (`make deps-deb` installs it) and the playwright wheel (the test extra);
it needs no `playwright install`, since the system browser is used."""
import base64
import http.server
import json
import os
import subprocess
import threading
import types
from pathlib import Path

import pytest

import procs

CHROMIUM = os.environ.get("SIMX_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = procs.ROOT / "var" / "test-artifacts"
# evil.example resolves to 127.0.0.1: the state a rebinding DNS server puts a victim's browser in
REBOUND = "evil.example"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
        "--no-proxy-server", f"--host-resolver-rules=MAP {REBOUND} 127.0.0.1"]
JSON = {"Accept": "application/json"}
XSS = '<img src=x onerror="document.title=1">'


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium (make deps-deb does)")
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1200, "height": 760})
    pg = context.new_page()
    pg.set_default_timeout(15_000)
    pg.problems = []   # console errors (a CSP violation shows up here) and page errors
    pg.on("console", lambda m: m.type == "error" and pg.problems.append(m.text))
    pg.on("pageerror", lambda e: pg.problems.append(str(e)))
    pg.on("dialog", lambda d: d.accept())   # the confirm() before cancel and drain
    try:
        yield pg
    finally:
        context.close()


def api(stack, path, headers=None):
    status, _, data = procs.http("GET", stack.url + path, headers={**JSON, **(headers or {})})
    assert status == 200, data
    return data


def submit(stack, headers=None, **spec):
    status, _, reply = procs.http("POST", f"{stack.url}/batch/new", {"engine": "dummy", **spec}, headers=headers)
    assert status == 201, reply
    return reply["batch_id"]


@pytest.fixture
def carol_stack(tmp_path, request):
    """The stack, with carol (not an admin) in runweb's users file before it starts (each
    gunicorn worker re-reads a changed file only every few seconds); carol's basic-auth
    header is `stack.carol`."""
    subprocess.run([procs.PYTHON, "-m", "runweb.users", "add", "carol"], input="carol's secret\n",
                   env=procs.base_env(tmp_path, 8096), cwd=procs.ROOT, check=True, capture_output=True, text=True,
                   timeout=30)
    stack = request.getfixturevalue("stack")
    stack.carol = {"Authorization": "Basic " + base64.b64encode(b"carol:carol's secret").decode()}
    return stack


def shot(pg, name):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    pg.screenshot(path=str(ARTIFACTS / f"dashboard-{name}.png"), full_page=True)


def dom_counts(pg) -> dict:
    return {s: pg.text_content(f"#n-{s}") for s in ("waiting", "running", "finished", "failed", "cancelled")}


def test_dashboard_follows_a_running_batch_and_cancels_it(stack, page):
    for _ in range(2):
        stack.worker()
    procs.wait_until(lambda: len(procs.workers_connected(stack.runq_port)) == 2, 15, what="2 workers")
    # a quick batch whose runs fail once, then finish: its run pages have two attempts
    quick = submit(stack, name="retry", n_runs=2, max_attempts=2,
                   param={"step_count": 1, "step_delay": 0.01, "fail": "boom once", "fail_attempts": 1})
    procs.wait_until(lambda: api(stack, f"/batch/{quick}")["batch"]["end_time"], 20, what="quick batch to end")
    # the batch to watch: 2 workers, 6 runs of about 2.4 s each
    slow = submit(stack, name=XSS, user="alice", n_runs=6, param={"step_count": 12, "step_delay": 0.2})

    page.goto(f"{stack.url}/batch/{slow}")
    page.wait_for_function("() => document.querySelector('#n-running')?.textContent === '2'")   # (null until the first poll)
    page.evaluate("window.notReloaded = true")
    # names are text, never markup: no <img> was made from the batch name, and the title is intact
    assert page.locator("img").count() == 0 and page.title() == f"Batch {slow} · simx"
    assert XSS in page.text_content("#facts")
    # a run's own bar moves, and then the batch's bar, without a reload
    first = float(page.get_attribute("#runs tbody tr:first-child progress", "value"))
    page.wait_for_function(f"() => Number(document.querySelector('#runs tbody tr:first-child progress').value) > {first}")
    assert float(page.get_attribute("#progress", "value")) == 0
    page.wait_for_function("() => Number(document.querySelector('#progress').value) > 0", timeout=20_000)
    assert page.evaluate("window.notReloaded") is True

    # the counts on the page are the API's (retry while a poll is in flight)
    def counts_match():
        b = api(stack, f"/batch/{slow}")["batch"]
        return dom_counts(page) == {s: str(b["n_" + s]) for s in dom_counts(page)} and b
    b = procs.wait_until(counts_match, 10, what="page counts to equal the API's")
    assert b["n_finished"] >= 1
    shot(page, "batch")
    if os.environ.get("SIMX_DOCS_SCREENSHOT"):   # regenerates the README's picture
        page.screenshot(path=str(procs.ROOT / "docs" / "dashboard.png"), clip={"x": 0, "y": 0, "width": 920, "height": 640})

    # filter by state: only finished runs listed
    page.click("#filter a[data-state=finished]")
    page.wait_for_function("() => [...document.querySelectorAll('#runs tbody tr')].every(r => r.className === 'run-finished')"
                           " && document.querySelectorAll('#runs tbody tr').length > 0")
    assert "state=finished" in page.url
    page.click("#filter a[data-state='']")

    # the batches page: a row with a progress bar per batch
    page.goto(stack.url + "/")
    row = page.locator(f"#batches tbody tr[data-batch='{slow}']")
    row.wait_for()
    assert "alice" in row.text_content() and "active" in row.text_content()
    assert row.locator("progress").count() == 1
    shot(page, "batches")

    # a run's page: its attempts with their outcomes and messages
    page.goto(f"{stack.url}/batch/{quick}/run/0")
    page.wait_for_function("() => document.querySelectorAll('#attempts tbody tr').length === 2")
    attempts = page.text_content("#attempts tbody")
    assert "failed" in attempts and "boom once" in attempts and "finished" in attempts
    attempts_api = api(stack, f"/batch/{quick}/run/0")["run"]["attempts"]
    assert [a["outcome"] for a in attempts_api] == ["failed", "finished"]
    assert "boom once" in page.text_content("#traceback")
    assert page.is_hidden("#cancel-run")   # an ended run cannot be cancelled
    shot(page, "run")

    # the workers page
    page.goto(stack.url + "/worker")
    page.wait_for_function("() => document.querySelectorAll('#workers tbody tr').length === 2")
    assert page.text_content("#workers tbody").count("busy") == 2
    shot(page, "workers")

    # the cancel button cancels (a same-origin fetch POST)
    page.goto(f"{stack.url}/batch/{slow}")
    page.locator("#cancel-batch").wait_for(state="visible")
    page.click("#cancel-batch")
    procs.wait_until(lambda: api(stack, f"/batch/{slow}")["batch"]["state"] == "cancelled", 10,
                     what="the batch to be cancelled")
    page.wait_for_function("() => document.querySelector('#facts').textContent.includes('cancelled')")
    page.locator("#cancel-batch").wait_for(state="hidden")
    b = api(stack, f"/batch/{slow}")["batch"]
    assert b["n_cancelled"] >= 1 and b["n_waiting"] == b["n_running"] == 0
    assert dom_counts(page)["cancelled"] == str(b["n_cancelled"])

    # drain from the workers page
    page.goto(stack.url + "/worker")
    button = page.locator("#workers tbody tr:first-child button")
    button.wait_for()
    wid = int(page.get_attribute("#workers tbody tr:first-child", "data-worker"))
    button.click()
    procs.wait_until(lambda: api(stack, f"/worker/{wid}")["worker"]["state"] in ("draining", "gone",
                                                                                "disconnected"),
                     10, what=f"worker {wid} to drain")
    assert page.problems == [], page.problems   # no CSP violation, no script error


class _EvilSite(http.server.BaseHTTPRequestHandler):
    """Another origin whose page POSTs a cancel to runweb, as a cross-site attacker's page would."""
    target = ""

    def do_GET(self):
        body = (f"<!doctype html><script>fetch({json.dumps(self.target)}, {{method: 'POST', mode: 'no-cors',"
                f" credentials: 'include'}}).then(() => document.title = 'sent', () => document.title = 'sent')"
                f"</script>").encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_another_origin_cannot_cancel(stack, page):
    stack.worker()
    batch = submit(stack, name="victim", n_runs=2, param={"step_count": 50, "step_delay": 0.2})
    _EvilSite.target = f"{stack.url}/batch/{batch}/cancel"
    evil = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _EvilSite)
    threading.Thread(target=evil.serve_forever, daemon=True).start()
    try:
        page.goto(f"http://127.0.0.1:{evil.server_address[1]}/")
        page.wait_for_function("() => document.title === 'sent'")
        # runweb must have refused it: the batch keeps running
        assert not procs.eventually(lambda: api(stack, f"/batch/{batch}")["batch"]["state"] == "cancelled", 2.0)
    finally:
        evil.shutdown()
        evil.server_close()


# What a page wants of runweb: read the workers, start a batch, drain worker 1 (same-origin fetches).
ACTIONS = """async () => {
  const json = {Accept: 'application/json'};
  const answer = async r => ({status: r.status, text: await r.text()});
  return {
    workers: await answer(await fetch('/workers', {headers: json, cache: 'no-store'})),
    submit: await answer(await fetch('/batch/new', {method: 'POST', body: 'name: from-a-page\\nengine: dummy\\nn_runs: 1\\n',
                                                    headers: {...json, 'Content-Type': 'application/yaml'}})),
    drain: await answer(await fetch('/worker/1/drain', {method: 'POST', headers: json})),
  };
}"""


class _Rebinding(http.server.BaseHTTPRequestHandler):
    """The attacker's server for http://evil.example:PORT/ before the rebinding: its page, whose
    script asks /workers until something other than this server answers at its own origin (the
    name now leads to runweb on the same port), then does ACTIONS there."""

    def do_GET(self):
        if self.path == "/":
            body = ("<!doctype html><title>polling</title><script>(async () => {"
                    "for (;;) { try { const r = await fetch('/workers', {cache: 'no-store'});"
                    " if (!r.headers.get('X-Attacker')) break; } catch (e) {}"
                    " await new Promise(ok => setTimeout(ok, 200)); }"
                    f"window.got = await ({ACTIONS})(); document.title = 'done'; }})();</script>").encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
        else:
            body = b"the attacker's server"
            self.send_response(404)
            self.send_header("X-Attacker", "1")
        self.send_header("Cache-Control", "no-store")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_a_page_whose_name_rebinds_to_loopback_gets_nothing_from_runweb(tmp_path, browser):
    """DNS rebinding in Chromium: a page of http://evil.example:PORT/, once that name leads to
    127.0.0.1 where runweb listens on PORT, is same-origin with runweb and its requests come from
    loopback as the operator's own user; runweb still refuses all three (421, no data), and
    nothing changes.  The same actions on http://127.0.0.1:PORT work for the operator."""
    port = procs.free_port()
    attacker = http.server.ThreadingHTTPServer(("127.0.0.1", port), _Rebinding)
    threading.Thread(target=attacker.serve_forever, daemon=True).start()
    started, attacker_up = [], True
    context = browser.new_context()
    try:
        runq = procs.start_runq(tmp_path)
        started.append(runq)
        started.append(procs.start_worker(tmp_path, runq.port))
        procs.wait_until(lambda: len(procs.workers_connected(runq.port)) == 1, 15, what="a worker")
        victim = context.new_page()
        victim.goto(f"http://{REBOUND}:{port}/")
        victim.wait_for_function("() => document.title === 'polling'")
        attacker.shutdown()              # the rebinding: the name's address now serves runweb
        attacker.server_close()
        attacker_up = False
        runweb = procs.start_runweb(tmp_path, runq.port, port=port)
        started.append(runweb)
        victim.wait_for_function("() => document.title === 'done'", timeout=30_000)
        got = victim.evaluate("window.got")
        for action in ("workers", "submit", "drain"):
            assert got[action]["status"] == 421, got
            assert "does not serve the host name" in got[action]["text"] and '"ipaddr"' not in got[action]["text"]
        stack = types.SimpleNamespace(url=runweb.url)
        assert api(stack, "/batch")["batches"] == []
        assert api(stack, "/worker/1")["worker"]["state"] == "idle"
        operator = context.new_page()       # the operator's own page, on runweb's own name
        operator.goto(f"{runweb.url}/")
        got = operator.evaluate(ACTIONS)
        assert (got["workers"]["status"], got["submit"]["status"], got["drain"]["status"]) == (200, 201, 200), got
        assert [w["id"] for w in json.loads(got["workers"]["text"])["workers"]] == [1], got
        assert [b["name"] for b in api(stack, "/batch")["batches"]] == ["from-a-page"]
        assert api(stack, "/worker/1")["worker"]["state"] in ("draining", "gone", "disconnected")
    finally:
        context.close()
        if attacker_up:
            attacker.shutdown()
            attacker.server_close()
        for proc in reversed(started):
            proc.stop()


class _RolesRunq:
    """A stub runq whose views carry the hints the web stream's roles add: can_cancel / can_drain."""

    def __init__(self):
        self.cancels = []

    def request(self, mtype, **fields):
        batch = {"id": fields.get("batch_id", 1), "name": "theirs", "user": "bob", "group": "", "engine": "dummy",
                 "n_runs": 2, "state": "active", "n_waiting": 1, "n_running": 1, "n_finished": 0, "n_failed": 0,
                 "n_cancelled": 0, "elapsed": 1.0, "can_cancel": fields.get("batch_id") != 1}
        run = {"batch_id": batch["id"], "batch_index": 0, "state": "running", "attempt": 1, "worker_id": 1,
               "host": "h", "progress": 0.5, "message": None, "result": None, "error": None,
               "can_cancel": batch["can_cancel"]}
        if mtype == "BatchStatus":
            return {"status": "ok", "message": "ok", "batch": batch, "runs": [run], "next_offset": None}
        if mtype == "WorkerList":
            return {"status": "ok", "message": "ok", "next_offset": None, "workers": [
                {"id": 1, "host": "h", "engine": "dummy", "state": "busy", "connected": True, "can_drain": False}]}
        if mtype == "CancelBatch":
            self.cancels.append(fields)
            return {"status": "error", "code": 403, "message": "batch 2 belongs to bob"}
        return {"status": "error", "code": 404, "message": f"stub knows no {mtype}"}


@pytest.fixture
def roles_site(tmp_path):
    """runweb's real app (in a thread, on a free loopback port) in front of the stub above."""
    from wsgiref.simple_server import WSGIRequestHandler, make_server

    from simx import config
    from runweb.app import create_app

    class Quiet(WSGIRequestHandler):
        def log_message(self, *args):
            pass
    runq = _RolesRunq()
    cfg = config.load(path=tmp_path / "none.yaml", env={}, root=tmp_path)
    server = make_server("127.0.0.1", 0, create_app(runq, cfg, own_user=lambda address, port, server=None: True), handler_class=Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", runq
    finally:
        server.shutdown()
        server.server_close()


def test_buttons_follow_the_apis_hints_and_show_a_refusal(roles_site, page):
    url, runq = roles_site
    page.goto(url + "/batch/1")     # can_cancel: false -> no cancel buttons at all
    page.wait_for_function("() => document.querySelectorAll('#runs tbody tr').length === 1")
    assert page.is_hidden("#cancel-batch") and page.locator("#runs button").count() == 0
    page.goto(url + "/worker")      # can_drain: false -> no drain button
    page.wait_for_function("() => document.querySelectorAll('#workers tbody tr').length === 1")
    assert page.locator("#workers button").count() == 0
    page.goto(url + "/batch/2")     # allowed by the hint, refused by runq: the message is shown
    page.locator("#cancel-batch").wait_for(state="visible")
    page.click("#cancel-batch")
    page.locator("#flash").wait_for(state="visible")
    assert "refused" in page.text_content("#flash") and "belongs to bob" in page.text_content("#flash")
    assert page.is_hidden("#cancel-batch") and [c["batch_id"] for c in runq.cancels] == [2]


def test_a_plain_user_may_cancel_their_own_running_batch_only_and_drain_nothing(carol_stack, browser):
    """A non-admin user who logs in (HTTP basic auth, answered by the browser when runweb asks):
    the API's hints hide drain on the workers page and cancel on an ended batch; the cancel
    button of their running batch cancels it; another user's batch does not exist for them.

    The browser talks to a second runweb on the same runq that trusts no address (as behind a
    proxy), so it must log in; the test's own requests go to the stack's loopback runweb (admin)."""
    stack, carol = carol_stack, carol_stack.carol
    stack.worker()
    procs.wait_until(lambda: len(procs.workers_connected(stack.runq_port)) == 1, 15, what="a worker")
    ended = submit(stack, carol, name="carol-quick", n_runs=1, param={"step_count": 1, "step_delay": 0.01})
    procs.wait_until(lambda: api(stack, f"/batch/{ended}?runs=none", carol)["batch"]["end_time"], 20,
                     what="carol's quick batch to end")
    running = submit(stack, carol, name="carol-slow", n_runs=2, param={"step_count": 100, "step_delay": 0.2})
    bobs = submit(stack, name="bob's", user="bob", n_runs=1, param={"step_count": 100, "step_delay": 0.2})
    # what the API says she may do; an admin (loopback, no credentials) may drain
    assert api(stack, f"/batch/{ended}?runs=none", carol)["batch"]["can_cancel"] is False
    assert api(stack, f"/batch/{running}?runs=none", carol)["batch"]["can_cancel"] is True
    assert [w["can_drain"] for w in api(stack, "/worker", carol)["workers"]] == [False]
    assert [w["can_drain"] for w in api(stack, "/worker")["workers"]] == [True]
    assert procs.http("GET", f"{stack.url}/batch/{bobs}", headers={**JSON, **carol})[0] == 404

    port = procs.free_port()
    web = procs.start_runweb(stack.tmp, stack.runq_port, port=port, healthy=False,
                             env={**stack.env, "RUNWEB_PORT": str(port), "RUNWEB_BEHIND_PROXY": "true"})
    url = web.url
    assert procs.http("GET", url + "/worker", headers=JSON)[0] == 401   # this runweb trusts nobody
    context = browser.new_context(viewport={"width": 1200, "height": 760},
                                  http_credentials={"username": "carol", "password": "carol's secret"})
    page = context.new_page()
    page.set_default_timeout(15_000)
    page.on("dialog", lambda d: d.accept())
    try:
        page.goto(url + "/worker")   # a connected worker, and no drain button for her
        page.wait_for_function("() => document.querySelectorAll('#workers tbody tr').length === 1")
        assert page.locator("#workers button").count() == 0
        shot(page, "user-workers")

        page.goto(f"{url}/batch/{ended}")   # her ended batch: nothing left to cancel
        page.wait_for_function("() => document.querySelector('#facts').textContent.includes('done')")
        assert page.is_hidden("#cancel-batch") and page.locator("#runs button").count() == 0
        shot(page, "user-batch-ended")

        page.goto(url + "/")   # her batches only: bob's is not listed
        page.locator(f"#batches tbody tr[data-batch='{running}']").wait_for()
        assert page.locator(f"#batches tbody tr[data-batch='{bobs}']").count() == 0

        page.goto(f"{url}/batch/{running}")   # her running batch: the button cancels it
        page.locator("#cancel-batch").wait_for(state="visible")
        page.click("#cancel-batch")
        procs.wait_until(lambda: api(stack, f"/batch/{running}?runs=none")["batch"]["state"] == "cancelled", 10,
                         what="carol's batch to be cancelled")
        page.locator("#cancel-batch").wait_for(state="hidden")
        assert api(stack, f"/batch/{bobs}?runs=none")["batch"]["state"] == "active"
    finally:
        context.close()
        web.stop()
