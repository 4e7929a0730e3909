"""The `simx` command line against a real stack (runq + gunicorn runweb + real workers):
submit, watch (under a pseudo-terminal: live bars; without one: plain lines), show, runs,
results, cancel, workers, drain, and the errors a user meets."""
from __future__ import annotations

import io
import json
import os
import re
import select
import subprocess
import threading
import time
import wsgiref.simple_server

import pytest
import yaml

import procs
from procs import PYTHON, ROOT, wait_until
from simx import cli
from simx.cli import commands, config
from simx.cli.http import SimxError

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
FAST = {"step_count": 5, "step_delay": 0.15}


def cli_env(stack_or_url, tmp, **extra) -> dict:
    url = stack_or_url if isinstance(stack_or_url, str) else stack_or_url.url
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIMX_") and k not in ("XDG_CONFIG_HOME",)}
    env.update(SIMX_URL=url, HOME=str(tmp), PYTHONUNBUFFERED="1", **{k: str(v) for k, v in extra.items()})
    return env


def simx(env, *args, stdin: str | None = None) -> tuple[int, str, str]:
    """`simx ARGS` in this process (fast), against real HTTP: (status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    code = cli.main(list(args), env=env, stdin=io.StringIO(stdin or ""), stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def simx_process(env, *args, **kw) -> subprocess.CompletedProcess:
    """The console entry point as its own process."""
    return subprocess.run([PYTHON, "-m", "simx", *args], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=60, **kw)


def request_file(tmp, n_runs, **param) -> str:
    path = tmp / f"req-{n_runs}-{len(param)}.yaml"
    path.write_text(yaml.safe_dump({"name": "cli", "engine": "dummy", "n_runs": n_runs, "param": param}))
    return str(path)


def two_workers(stack):
    stack.worker()
    stack.worker()
    wait_until(lambda: len(procs.workers_connected(stack.runq_port)) == 2, 15, what="2 workers")


def watch_in_pty(env, *args, timeout=40.0) -> tuple[int, str]:
    """Run `simx ARGS` on a pseudo-terminal; (exit status, everything it drew)."""
    master, slave = os.openpty()
    env = dict(env, TERM="xterm-256color", COLUMNS="160", LINES="40")
    proc = subprocess.Popen([PYTHON, "-m", "simx", *args], env=env, cwd=ROOT, stdin=slave, stdout=slave,
                            stderr=slave, close_fds=True)
    os.close(slave)
    chunks, deadline = [], time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:   # EIO: the child closed the terminal
                    break
                if not data:
                    break
                chunks.append(data)
            elif proc.poll() is not None:
                break
        return proc.wait(timeout=10), b"".join(chunks).decode("utf-8", errors="replace")
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)


def test_submit_watch_live_show_runs_results_workers(stack, tmp_path):
    two_workers(stack)
    env = cli_env(stack, tmp_path)
    code, out, err = simx(env, "submit", request_file(tmp_path, 4, step_count=1, step_delay=0.15),
                          "--set", "step_count=6", "--set", "param.extra.depth=[1, 2]", "--set", "n_runs=4")
    assert (code, err) == (0, "") and out.startswith("batch 1 started: 4 runs of dummy"), out
    assert stack.client.request("BatchStatus", batch_id=1, limit=0)["batch"]["param"] == {
        "step_count": 6, "step_delay": 0.15, "extra": {"depth": [1, 2]}}

    code, drawn = watch_in_pty(env, "watch", "1", "--interval", "0.1")
    text = ANSI.sub("", drawn)
    assert code == 0, text[-2000:]
    counts = [int(n) for n in re.findall(r"\b([0-4])/4\b", text)]
    assert 0 in counts[:3] and counts[-1] == 4 and len(set(counts)) >= 3, counts   # the overall bar advanced
    assert "━" in drawn and re.search(r"run \d on worker \d+ \(", text), text[-2000:]
    assert re.search(r"\d+%", text)            # each running run's own bar
    assert "batch 1 (cli): done" in text        # the summary at the end

    code, out, _ = simx(env, "show", "1")
    assert code == 0 and "batch 1 (cli): done, 4 of 4 runs ended" in out and "finished" in out
    code, out, _ = simx(env, "--json", "show", "1")
    assert json.loads(out)["batch"]["n_finished"] == 4
    code, out, _ = simx(env, "runs", "1", "--state", "finished", "--json")
    assert [r["batch_index"] for r in json.loads(out)] == [0, 1, 2, 3]
    code, out, _ = simx(env, "runs", "1", "--state", "failed")
    assert (code, out.strip()) == (0, "no failed runs in batch 1")
    code, out, _ = simx(env, "results", "1")
    lines = [json.loads(line) for line in out.splitlines()]
    assert [(r["batch_index"], r["state"]) for r in lines] == [(i, "finished") for i in range(4)]
    assert lines[0]["result"] == "dummy run 0 of batch 1: 6 steps"
    code, out, _ = simx(env, "results", "1", "--csv")
    assert out.splitlines()[0] == "batch_index,state,error,result"
    assert out.splitlines()[1:] == [f"{i},finished,,dummy run {i} of batch 1: 6 steps" for i in range(4)]
    code, out, _ = simx(env, "run", "1", "2")
    assert code == 0 and "run 2 of batch 1: finished" in out and "attempts:" in out
    code, out, _ = simx(env, "workers", "--json")
    assert len(json.loads(out)) == 2 and all(w["engine"] == "dummy" for w in json.loads(out))
    code, out, _ = simx(env, "ls")
    assert code == 0 and re.search(r"^\s*1\s+cli\s+.*dummy\s+done\s+4/4", out, re.M), out


def test_watch_without_terminal_prints_lines_and_exits_1_when_runs_failed(stack, tmp_path):
    two_workers(stack)
    env = cli_env(stack, tmp_path)
    request = yaml.safe_dump({"engine": "dummy", "n_runs": 3, "max_attempts": 1,
                              "param": {**FAST, "fail": "boom: the model diverged"}})
    code, out, _ = simx(env, "submit", "-", stdin=request)
    assert code == 0
    proc = simx_process(env, "watch", "1", "--interval", "0.1")
    lines = proc.stdout.splitlines()
    assert proc.returncode == 1, proc.stdout + proc.stderr
    progress = [line for line in lines if re.match(r"batch 1 (active|failed): ", line)]
    assert len(progress) >= 2 and progress[-1].startswith("batch 1 failed: 3/3 ended (finished 0, failed 3")
    assert "\x1b[" not in proc.stdout                     # no terminal: no escape sequences
    assert "failed runs:" in proc.stdout and "boom: the model diverged" in proc.stdout
    code, out, _ = simx(env, "show", "1")
    assert "batch 1 (unnamed): failed" in out and out.count("boom: the model diverged") == 3


def test_cancel_and_drain(stack, tmp_path):
    two_workers(stack)
    env = cli_env(stack, tmp_path)
    simx(env, "submit", request_file(tmp_path, 6, step_count=100, step_delay=0.2))
    wait_until(lambda: stack.client.request("BatchStatus", batch_id=1, limit=0)["batch"]["n_running"] == 2)
    code, out, _ = simx(env, "cancel", "1", "5")
    assert code == 0 and "run cancelled" in out
    code, out, _ = simx(env, "runs", "1", "--state", "cancelled", "--json")
    assert [r["batch_index"] for r in json.loads(out)] == [5]
    wid = json.loads(simx(env, "workers", "--json")[1])[0]["id"]
    code, out, _ = simx(env, "drain", str(wid))
    assert code == 0 and f"worker {wid}" in out and "draining" in out
    code, out, _ = simx(env, "cancel", "1")
    assert code == 0 and "batch 1 is cancelled" in out
    code, out, _ = simx(env, "--json", "show", "1")
    batch = json.loads(out)["batch"]
    assert batch["state"] == "cancelled" and batch["n_cancelled"] == 6


def test_a_description_goes_through_runweb_and_shows(stack, tmp_path):
    env = cli_env(stack, tmp_path)
    path = tmp_path / "described.yaml"
    path.write_text(yaml.safe_dump({"engine": "dummy", "n_runs": 1, "description": "seeds 1-10\nsecond line"}))
    code, out, err = simx(env, "submit", str(path), "--set", "priority=5")
    assert (code, err) == (0, "") and "param" not in out, out
    batch = stack.client.request("BatchStatus", batch_id=1, limit=0)["batch"]
    assert batch["priority"] == 5 and batch["param"] == {}   # a field, not param.priority (the old bug)
    assert batch["description"] == "seeds 1-10\nsecond line"
    code, out, _ = simx(env, "show", "1")
    assert code == 0 and "\n  seeds 1-10\n  second line" in out, out


def test_the_summary_shows_a_description_line_by_line():
    b = {"id": 3, "name": "n", "state": "active", "n_runs": 1, "engine": "dummy", "description": "one\n[two]"}
    assert commands.render.batch_summary(b)[2:] == ["  one", "  \\[two]"]
    assert len(commands.render.batch_summary(dict(b, description=None))) == 2


def test_errors_are_one_line_with_the_http_status(stack, tmp_path):
    env = cli_env(stack, tmp_path)
    code, out, err = simx(env, "show", "99")
    assert (code, out) == (2, "") and err == "simx: HTTP 404: no batch 99\n"
    down = cli_env(f"http://127.0.0.1:{procs.free_port()}", tmp_path)
    code, _, err = simx(down, "ls")
    assert code == 2 and err.startswith("simx: cannot reach runweb at http://127.0.0.1:") and err.count("\n") == 1
    bad = tmp_path / "bad.yaml"
    bad.write_text("engine: dummy\nn_runs: [1\n")
    code, _, err = simx(env, "submit", str(bad))
    assert code == 2 and f"simx: {bad} is not valid YAML at line" in err
    code, _, err = simx(env, "submit", str(tmp_path / "missing.yaml"))
    assert code == 2 and "cannot read" in err and "No such file" in err
    code, _, err = simx(env, "submit", request_file(tmp_path, 0))
    assert code == 2 and err.startswith("simx: HTTP 400: field 'n_runs' must be at least 1")
    code, out, _ = simx(env, "submit", "-", "--set", "name='[red]x[/] [/]'", stdin="engine: dummy\nn_runs: 1\n")
    assert code == 0
    code, out, _ = simx(env, "show", "1")   # names are shown as they are, never as rich markup
    assert code == 0 and "batch 1 ([red]x[/] [/]): active" in out and "no connected worker serves" in out
    code, out, _ = simx(env, "ls")
    assert "[red]x[/] [/]" in out
    code, out, _ = simx(env, "ls", "--user", "topl")       # the batches of user topl: none
    assert (code, out.strip()) == (0, "no batches of user topl (--all for everyone's)")
    code, out, _ = simx(dict(env, SIMX_USER="topl"), "--json", "ls", "--all")
    assert [b["id"] for b in json.loads(out)] == [1]
    proc = simx_process(env, "run", "99", "0")   # the console entry point: the same line, status 2
    assert (proc.returncode, proc.stderr) == (2, "simx: HTTP 404: no batch 99\n")


def write_user(tmp, name: str, password: str, admin: bool = False) -> None:
    """A user in runweb's users file under `tmp`, added as an operator adds one."""
    subprocess.run([PYTHON, "-m", "runweb.users", "add", *(["--admin"] if admin else []), name],
                   input=password + "\n", env=procs.base_env(tmp, 8096), cwd=ROOT, check=True, capture_output=True,
                   text=True, timeout=30)


@pytest.fixture
def users_stack(tmp_path, request):
    """The stack, with ann (a user) and root (an admin) in runweb's users file before it starts:
    each gunicorn worker re-reads a changed file only every few seconds, so users added later
    would be known to one worker before the other."""
    write_user(tmp_path, "ann", "right")
    write_user(tmp_path, "root", "admin-pw", admin=True)
    return request.getfixturevalue("stack")


def test_a_user_logs_in_sees_their_batches_and_a_wrong_password_is_one_401_line(users_stack, tmp_path):
    """The real stack: runweb checks the credentials a client sends, from loopback too."""
    stack = users_stack
    ann = cli_env(stack, tmp_path, SIMX_USER="ann", SIMX_PASSWORD="right")
    wrong = dict(ann, SIMX_PASSWORD="wrong")
    code, out, err = simx(wrong, "ls")
    assert (code, out) == (2, "") and err.startswith("simx: HTTP 401: wrong user name or password") \
        and err.count("\n") == 1, err
    proc = simx_process(wrong, "ls")   # the console entry point: the same line, status 2
    assert proc.returncode == 2 and proc.stderr.startswith("simx: HTTP 401: ") and proc.stderr.count("\n") == 1

    code, out, _ = simx(ann, "ls")
    assert (code, out.strip()) == (0, "no batches of user ann (--all for everyone's)")
    request = "engine: dummy\nn_runs: 1\nparam: {step_count: 1, step_delay: 0.01}\n"
    assert simx(ann, "submit", "-", "--set", "name=anns", stdin=request)[0] == 0          # batch 1, ann's
    loopback = cli_env(stack, tmp_path)                                               # no credentials: admin
    assert simx(loopback, "submit", "-", "--set", "name=bobs", "--set", "user=bob", stdin=request)[0] == 0
    code, out, _ = simx(ann, "--json", "ls")
    assert code == 0 and [(b["id"], b["owner"]) for b in json.loads(out)] == [(1, "ann")]
    code, out, _ = simx(ann, "--json", "ls", "--all")   # a plain user's "all" is still their own
    assert [b["id"] for b in json.loads(out)] == [1]
    root = cli_env(stack, tmp_path, SIMX_USER="root", SIMX_PASSWORD="admin-pw")
    code, out, err = simx(root, "ls")
    assert (code, out.strip()) == (0, "no batches of user root (--all for everyone's)"), err
    code, out, _ = simx(root, "--json", "ls", "--all")   # an admin's: everyone's
    assert sorted(b["id"] for b in json.loads(out)) == [1, 2]

    # another user's batch does not exist for ann; drain is for admins
    code, out, err = simx(ann, "results", "2")
    assert (code, out, err) == (2, "", "simx: HTTP 404: no batch 2\n")
    code, out, err = simx(ann, "cancel", "2")
    assert (code, out, err) == (2, "", "simx: HTTP 404: no batch 2\n")
    code, _, err = simx(ann, "drain", "1")
    assert code == 2 and err.startswith("simx: HTTP 403: only an admin may drain workers") and err.count("\n") == 1


def make_ca_and_cert(tmp):
    """A private CA and a certificate for 127.0.0.1 signed by it (openssl, as an operator would)."""
    def ssl_(*args):
        subprocess.run(["openssl", *args], cwd=tmp, check=True, capture_output=True, timeout=60)
    ssl_("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
         "-subj", "/CN=simx test CA")
    ssl_("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "web.key", "-out", "web.csr", "-subj", "/CN=127.0.0.1")
    (tmp / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    ssl_("x509", "-req", "-in", "web.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
         "-out", "web.pem", "-days", "2", "-extfile", "san.ext")
    return tmp / "ca.pem", tmp / "web.pem", tmp / "web.key"


def test_https_is_verified_against_the_given_ca(tmp_path):
    import ssl
    ca, cert, key = make_ca_and_cert(tmp_path)

    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "application/json")])
        return [b'{"status": "ok", "workers": [], "next_offset": null}']

    server = wsgiref.simple_server.make_server("127.0.0.1", 0, app, handler_class=_QuietHandler)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        env = cli_env(f"https://127.0.0.1:{server.server_port}", tmp_path)
        code, out, err = simx(dict(env, SIMX_CACERT=str(ca)), "workers")
        assert (code, err, out.strip()) == (0, "", "no connected workers (--all lists the ones gone too)")
        code, out, err = simx(env, "workers", "--cacert", str(ca))
        assert code == 0
        code, _, err = simx(env, "workers")            # the system's CAs do not know ours
        assert code == 2 and err.startswith("simx: TLS with runweb at https://127.0.0.1:") and "verify" in err
        code, _, err = simx(env, "workers", "--cacert", str(tmp_path / "nope.pem"))
        assert code == 2 and "does not exist" in err
    finally:
        server.shutdown()
        server.server_close()


class _QuietHandler(wsgiref.simple_server.WSGIRequestHandler):
    def log_message(self, *args):
        pass


# ---- pure parts: settings and --set
def test_settings_come_from_flags_then_environment_then_a_private_file(tmp_path):
    env = {"HOME": str(tmp_path)}
    assert config.load({}, env) == config.Settings(url="http://127.0.0.1:8097")
    path = tmp_path / ".config" / "simx" / "config.yaml"
    path.parent.mkdir(parents=True)
    path.write_text("url: https://simx.example:8443/\nuser: ann\npassword: pw\n")
    os.chmod(path, 0o644)
    with pytest.raises(config.SettingsError, match=r"mode 0644.*chmod 600"):
        config.load({}, env)
    os.chmod(path, 0o600)
    got = config.load({}, env)
    assert (got.url, got.user, got.password) == ("https://simx.example:8443", "ann", "pw")
    got = config.load({"user": "bob"}, dict(env, SIMX_URL="http://127.0.0.1:1", SIMX_PASSWORD="env"))
    assert (got.url, got.user, got.password) == ("http://127.0.0.1:1", "bob", "env")
    with pytest.raises(config.SettingsError, match="must start with http"):
        config.load({"url": "ftp://x"}, env)
    os.chmod(path, 0o640)
    code, out, err = simx({"HOME": str(tmp_path)}, "ls")   # the command refuses it too, before any request
    assert (code, out) == (2, "") and err == f"simx: {path} is open to other users (mode 0640) and may hold a " \
        f"password: run `chmod 600 {path}`\n"
    os.chmod(path, 0o600)
    path.write_text("url: http://x\ncolour: red\n")
    with pytest.raises(config.SettingsError, match="unknown key 'colour'"):
        config.load({}, env)


@pytest.mark.parametrize("sets, want", [
    (["step_count=3"], {"engine": "d", "param": {"a": {"b": 1}, "step_count": 3}}),
    (["param.a.b=[1, {x: 2}]"], {"engine": "d", "param": {"a": {"b": [1, {"x": 2}]}}}),
    (["a.c=on", "n_runs=5"], {"engine": "d", "param": {"a": {"b": 1, "c": True}}, "n_runs": 5}),
    (["name=", "new.deep.key='07'"], {"engine": "d", "param": {"a": {"b": 1}, "new": {"deep": {"key": "07"}}},
                                      "name": ""}),

    # every field of a batch request is one, never a param key (priority used to become param.priority)
    (["priority=5", "sweep.seed=[1, 2]", "zip.a=[3]", "description=two words"],
     {"engine": "d", "param": {"a": {"b": 1}}, "priority": 5, "sweep": {"seed": [1, 2]}, "zip": {"a": [3]},
      "description": "two words"}),
])
def test_set_overrides_nested_keys_with_yaml_values(sets, want):
    doc = {"engine": "d", "param": {"a": {"b": 1}}}
    for s in sets:
        commands.apply_set(doc, s)
    assert doc == want


@pytest.mark.parametrize("bad, message", [
    ("step_count", "write KEY=VALUE"), ("a..b=1", "write KEY=VALUE"), ("a.b.c=1", "param.a.b is not a mapping"),
    ("x=[1", "not valid YAML"),
])
def test_bad_set_is_refused_naming_it(bad, message):
    with pytest.raises(SimxError, match=re.escape(message)):
        commands.apply_set({"param": {"a": {"b": 1}}}, bad)


class FlakyClient:
    """Answers like runweb, but fails the first polls as a restarting runweb would."""

    def __init__(self, failures):
        self.failures, self.polls = list(failures), 0
        self.settings = config.Settings()

    def get(self, path, **params):
        self.polls += 1
        if self.polls > 1 and self.failures:
            raise self.failures.pop(0)
        ended = self.polls >= 5
        return {"batch": {"id": 1, "name": "", "engine": "dummy", "group": "", "user": "", "state":
                          "done" if ended else "active", "n_runs": 2, "n_waiting": 0 if ended else 2,
                          "n_running": 0, "n_finished": 2 if ended else 0, "n_failed": 0, "n_cancelled": 0,
                          "elapsed": 1.0, "served": True}, "runs": []}


def test_watch_rides_out_a_runweb_restart_but_not_a_404():
    out = io.StringIO()
    client = FlakyClient([SimxError("cannot reach runweb"), SimxError("HTTP 503: runq is unavailable", 503)])
    ctx = commands.Context(client, commands.render.console(out), out, None, False, sleep=lambda s: None)
    assert commands.watch_batch(ctx, 1, 0.1) == 0
    assert "batch 1 done: 2/2 ended" in out.getvalue()
    client = FlakyClient([SimxError("HTTP 404: no batch 1", 404)])
    ctx = commands.Context(client, commands.render.console(out), out, None, False, sleep=lambda s: None)
    with pytest.raises(SimxError, match="404"):
        commands.watch_batch(ctx, 1, 0.1)
