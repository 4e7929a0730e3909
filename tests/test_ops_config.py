"""conf/hosts.yaml and the rendered supervisord.conf, read back by supervisor's own parser (no processes)."""
from __future__ import annotations

import shlex
import signal
import sys
from pathlib import Path

import pytest
from supervisor.datatypes import RestartUnconditionally, RestartWhenExitUnexpected
from supervisor.options import ServerOptions

from procs import ROOT
from ops import hosts
from simx import config as simx_config
from simx.config import ConfigError
from ops.paths import MAX_SOCKET_PATH, Paths
from ops.render import render


def _config(tmp_path, **env):
    env = {"SIMX_VAR": str(tmp_path / "var"), "RUNQ_PORT": "4949", "RUNWEB_PORT": "4950", **env}
    return simx_config.load(env=env), env


def _parse(tmp_path, text: str) -> dict:
    """Let supervisor read the config as supervisord would; return its program configs by group."""
    for sub in ("supervisor", "log"):
        (tmp_path / "var" / sub).mkdir(parents=True, exist_ok=True)
    path = tmp_path / "supervisord.conf"
    path.write_text(text)
    opts = ServerOptions()
    opts.realize(args=["-c", str(path)])
    return {g.name: g for g in opts.process_group_configs}


def test_local_is_three_dummy_workers_when_hosts_file_is_absent(tmp_path):
    local = hosts.load(tmp_path / "absent.yaml")["local"]
    assert [(p.name, p.engine, p.count, p.group, p.user) for p in local.pools] == [("dummy", "dummy", 3, "", "")]
    assert local.runq_host is None and local.runq_port is None


def test_shipped_hosts_yaml_is_the_documented_default():
    assert hosts.load(ROOT / "conf" / "hosts.yaml")["local"] == hosts.DEFAULT_LOCAL


def test_hosts_yaml_describes_remote_instances(tmp_path):
    path = tmp_path / "hosts.yaml"
    path.write_text("instances:\n  lab1:\n    host: lab1.example.org\n    user: simx\n    port: 2222\n"
                    "    key: ~/.ssh/k\n    dir: /srv/simx\n    runq_host: runq.example\n    runq_port: 8096\n"
                    "    pools: [{name: a, engine: aurora, count: 2, group: topl, cost: 2.5}]\n")
    found = hosts.load(path)
    lab = found["lab1"]
    assert (lab.host, lab.user, lab.port, lab.dir, lab.runq_port) == ("lab1.example.org", "simx", 2222, "/srv/simx", 8096)
    assert lab.pools[0].process_names() == ["worker-a_00", "worker-a_01"]
    assert found["local"] == hosts.DEFAULT_LOCAL  # local stays the default


@pytest.mark.parametrize("body, named", [
    ("instances: {local: {pools: [{name: d, engine: dummy, colour: red}]}}", "pools[0].colour"),
    ("instances: {local: {pools: [{name: 'a b', engine: dummy}]}}", "pools[0].name"),
    ("instances: {local: {pools: [{name: d, count: -1}]}}", "pools[0].count"),
    ("instances: {local: {pools: [{name: d, count: many}]}}", "pools[0].count"),
    ("instances: {local: {pools: [{name: d, count: 2.5}]}}", "pools[0].count"),
    ("instances: {local: {pools: [{name: d}, {name: d}]}}", "pools"),
    ("instances: {local: {prot: 22}}", "local.prot"),
    ("instances: {local: {pools: {name: d}}}", "local.pools"),
    ("hosts: []", "instances"),
    ("instances: [", "not valid YAML"),
])
def test_hosts_yaml_errors_name_the_key(tmp_path, body, named):
    path = tmp_path / "hosts.yaml"
    path.write_text(body)
    with pytest.raises(ConfigError, match=named.replace("[", r"\[").replace("]", r"\]")):
        hosts.load(path)


def test_rendered_config_runs_the_entry_points_as_supervisor_reads_it(tmp_path):
    cfg, env = _config(tmp_path)
    groups = _parse(tmp_path, render(cfg, hosts.DEFAULT_LOCAL, env, python="/venv/bin/python", user="root"))
    assert set(groups) == {"runq", "runweb", "worker-dummy"}

    runq, = groups["runq"].process_configs
    assert runq.name == "runq" and runq.command == "/venv/bin/python -m runq"
    assert runq.autorestart is RestartUnconditionally and runq.autostart is False
    assert runq.environment["RUNQ_PORT"] == "4949" and runq.environment["SIMX_VAR"] == str(tmp_path / "var")
    assert runq.directory == str(ROOT)
    runweb, = groups["runweb"].process_configs
    assert runweb.command == "/venv/bin/python -m runweb" and runweb.environment["RUNWEB_PORT"] == "4950"

    workers = groups["worker-dummy"].process_configs
    assert [w.name for w in workers] == ["worker-dummy_00", "worker-dummy_01", "worker-dummy_02"]
    for w in workers:
        assert shlex.split(w.command) == ["/venv/bin/python", "-m", "worker", "--engine", "dummy", "--group", "",
                                          "--user", "", "--cost", "1", "--speed", "1", "--priority", "0",
                                          "--retry-delay-max", "10"]
        assert w.autorestart is RestartWhenExitUnexpected and w.exitcodes == [0]  # drained (exit 0): stay down
        assert (w.autostart, w.stopsignal, w.stopwaitsecs, w.startsecs) == (False, signal.SIGTERM, 15, 1)
        assert w.stopasgroup and w.killasgroup and w.redirect_stderr
        assert w.stdout_logfile == str(tmp_path / "var" / "log" / f"{w.name}.log")
        assert w.environment["RUNQ_HOST"] == "127.0.0.1" and w.environment["RUNQ_PORT"] == "4949"


def test_supervisord_files_live_under_the_run_time_directory(tmp_path):
    cfg, env = _config(tmp_path)
    text = render(cfg, hosts.DEFAULT_LOCAL, env, user="root")
    var = tmp_path / "var"
    assert f"file={var}/supervisor/supervisord.sock" in text
    assert f"pidfile={var}/supervisor/supervisord.pid" in text
    assert f"serverurl=unix://{var}/supervisor/supervisord.sock" in text
    assert f"logfile={var}/log/supervisord.log" in text


def test_pool_traits_and_instance_runq_address_reach_the_workers(tmp_path):
    cfg, env = _config(tmp_path)
    pool = hosts.Pool(name="topl", engine="aurora", count=2, group="topl", user="ann", cost=2.5, speed=3,
                      priority=-1, retry_delay=4.5)
    inst = hosts.Instance(name="local", runq_host="runq.example.org", runq_port=9000, pools=(pool,))
    groups = _parse(tmp_path, render(cfg, inst, env, python=sys.executable, user="root"))
    w = groups["worker-topl"].process_configs[0]
    assert shlex.split(w.command)[3:] == ["--engine", "aurora", "--group", "topl", "--user", "ann",
                                          "--cost", "2.5", "--speed", "3", "--priority", "-1",
                                          "--retry-delay-max", "4.5"]
    assert (w.environment["RUNQ_HOST"], w.environment["RUNQ_PORT"]) == ("runq.example.org", "9000")
    runq = groups["runq"].process_configs[0]  # runq itself listens where conf/env say
    assert runq.environment["RUNQ_PORT"] == "4949"


def test_only_simx_settings_are_passed_and_odd_characters_survive(tmp_path):
    url = "postgresql://u:p%40ss,w\"rd@127.0.0.1/simx"
    cfg, env = _config(tmp_path, SIMX_DB_URL=url, SIMX_WORKER_SECRET_FILE="/etc/simx/w.secret", UNRELATED="x")
    runq = _parse(tmp_path, render(cfg, hosts.DEFAULT_LOCAL, env, user="root"))["runq"].process_configs[0]
    assert runq.environment["SIMX_DB_URL"] == url
    assert runq.environment["SIMX_WORKER_SECRET_FILE"] == "/etc/simx/w.secret"
    assert "UNRELATED" not in runq.environment


def test_an_instance_without_pools_runs_no_workers(tmp_path):
    cfg, env = _config(tmp_path)
    groups = _parse(tmp_path, render(cfg, hosts.Instance(name="local"), env, user="root"))
    assert set(groups) == {"runq", "runweb"}
    idle = hosts.Instance(name="local", pools=(hosts.Pool(name="off", count=0),))
    assert set(_parse(tmp_path, render(cfg, idle, env, user="root"))) == {"runq", "runweb"}


def test_socket_moves_to_a_short_path_when_the_run_time_directory_is_deep(tmp_path):
    deep = Path("/tmp") / ("d" * 120)
    sock = Paths(deep).sock
    assert len(str(sock)) <= MAX_SOCKET_PATH and sock != Paths(deep / "other").sock
    assert Paths(Path("/tmp/x")).sock == Path("/tmp/x/supervisor/supervisord.sock")
