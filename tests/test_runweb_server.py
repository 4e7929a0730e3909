"""`python -m runweb` as a real gunicorn process on a free loopback port, with runq not listening."""
import http.client
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from procs import eventually, free_port
from simx import config
from runweb.__main__ import gunicorn_argv, parse_args

ROOT = Path(__file__).resolve().parent.parent


def call(port, method, path, body=None, headers=None, chunked=False):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {}, encode_chunked=chunked)
        resp = conn.getresponse()
        return resp.status, resp.headers, resp.read().decode("utf-8")  # headers: case-insensitive
    finally:
        conn.close()


@pytest.fixture(scope="module")
def runweb(tmp_path_factory):
    port, runq_port = free_port(), free_port()  # nothing listens on runq_port
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNQ_", "RUNWEB_", "SIMX_"))}
    env.update(RUNQ_HOST="127.0.0.1", RUNQ_PORT=str(runq_port), RUNWEB_PORT="1",  # --port must win
               RUNWEB_USERS=str(tmp_path_factory.mktemp("users") / "users.yaml"))
    log = open(tmp_path_factory.mktemp("log") / "runweb.log", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "runweb", "--port", str(port), "--bind", "127.0.0.1", "--workers", "1"],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)

    def ready():
        if proc.poll() is not None:
            log.seek(0)
            pytest.fail(f"runweb exited {proc.returncode}:\n{log.read()}")
        try:
            return call(port, "GET", "/")[0] == 200
        except OSError:
            return False
    try:
        assert eventually(ready, 30), "runweb did not answer"
        yield port, log
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def test_index_is_yaml_and_health_is_503_without_runq(runweb):
    port, _ = runweb
    status, headers, text = call(port, "GET", "/")
    assert status == 200 and headers["Content-Type"] == "application/yaml; charset=utf-8"
    assert yaml.safe_load(text)["status"] == "ok"
    status, headers, text = call(port, "GET", "/health", headers={"Accept": "*/*"})
    assert status == 503
    data = yaml.safe_load(text)
    assert data["status"] == "error" and data["message"].startswith("runq is unavailable: cannot reach runq")


def test_curl_style_post_is_validated_from_the_raw_body(runweb):
    port, _ = runweb
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    example = (ROOT / "runweb" / "example" / "batch-req.yaml").read_bytes()
    status, _, text = call(port, "POST", "/batch/new", body=example, headers=form)
    assert status == 503  # valid, so it went on to runq, which is not there
    status, _, text = call(port, "POST", "/batch/new", body=example + b"colour: red\n", headers=form)
    assert status == 400 and yaml.safe_load(text)["message"].startswith("unknown field 'colour'")
    status, _, text = call(port, "POST", "/batch/new", body=iter([example[:20], example[20:] + b"x: 1\n"]),
                           chunked=True)
    assert status == 400 and "unknown field 'x'" in text


def test_access_log_goes_to_stdout(runweb):
    port, log = runweb
    call(port, "GET", "/workers")
    assert eventually(lambda: log.seek(0) == 0 and '"GET /workers HTTP/1.1" 503' in log.read(), 10)


@pytest.mark.parametrize("argv, env, port", [
    ([], {}, 8097),
    ([], {"RUNWEB_PORT": "9001"}, 9001),
    (["--foreground-port"], {"RUNWEB_PORT": "9001"}, 4567),
    (["--port", "4567"], {"RUNWEB_PORT": "9001"}, 4567),
    (["--port", "5000", "--foreground-port"], {}, 5000),
])
def test_gunicorn_command_line(tmp_path, argv, env, port):
    args = parse_args(argv + ["--workers", "3", "--bind", "0.0.0.0"])
    cfg = config.load(path=tmp_path / "none.yaml", env=env, root=ROOT, runweb_bind=args.bind,
                      runweb_workers=args.workers)
    command = gunicorn_argv(args, cfg)
    assert command[:3] == [sys.executable, "-m", "gunicorn"] and command[-1] == "runweb.app:get_app()"
    text = " ".join(command)
    assert f"-b 0.0.0.0:{port}" in text and "-w 3" in text
    assert "--access-logfile -" in text and "--graceful-timeout 5" in text and "--no-control-socket" in text
    # the worker class that slow sockets cannot stall (tests/test_runweb_limits.py), from conf
    assert "-k runweb.gunicorn_worker.ThreadWorker" in text and "--threads 32" in text and "--timeout 30" in text


def test_worker_class_settings_come_from_conf(tmp_path):
    conf = tmp_path / "simx.yaml"
    conf.write_text("runweb: {threads: 8, timeout: 20, keepalive: 1}\n")
    text = " ".join(gunicorn_argv(parse_args([]), config.load(path=conf, env={}, root=ROOT)))
    assert "--threads 8" in text and "--timeout 20" in text and "--keep-alive 1" in text
    conf.write_text("runweb: {worker_class: eventlet}\n")
    with pytest.raises(config.ConfigError, match="runweb.worker_class: 'eventlet' is not one of"):
        gunicorn_argv(parse_args([]), config.load(path=conf, env={}, root=ROOT))


def test_ipv6_bind_is_bracketed(tmp_path):
    args = parse_args(["--bind", "::1", "--port", "4567"])
    cfg = config.load(path=tmp_path / "none.yaml", env={}, root=ROOT, runweb_bind=args.bind)
    assert "[::1]:4567" in gunicorn_argv(args, cfg)
