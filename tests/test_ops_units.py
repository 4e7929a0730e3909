"""Pure parts of ops/: hosts file rules, per-program settings, the settings record, host Python choice,
fingerprints, the listen-address check, the wheelhouse key.  No processes (except ssh-keygen)."""
from __future__ import annotations

import subprocess
from pathlib import Path

import paramiko
import pytest

from ops import hosts, paths as ops_paths, settings, wheelhouse
from ops.fleet import Control
from ops.remote import pick_python
from ops.render import Target, programs, remote_target, render, used_only_by_others
from ops.ssh import fingerprint
from simx import config as simx_config
from simx.config import ConfigError


def _fleet(tmp_path, text: str):
    path = tmp_path / "hosts.yaml"
    path.write_text(text)
    return hosts.load_fleet(path)


@pytest.mark.parametrize("name, says", [
    ("Lab1", "rename it"), ("my_host", "rename it"), ("all", "name of a fab task: rename it"),
    ("server", "name of a fab task"), ("runq", "name of a fab task"),
])
def test_instance_names_that_cannot_be_fab_namespaces_are_refused_with_a_rename_hint(tmp_path, name, says):
    with pytest.raises(ConfigError, match=says):
        _fleet(tmp_path, f"instances:\n  {name}: {{host: h, dir: /srv/simx}}\n")


def test_server_and_ssh_settings(tmp_path):
    fleet = _fleet(tmp_path, "server: srv\nssh: {known_hosts: /k, connect_timeout: 2.5}\n"
                             "instances:\n  srv: {host: h, dir: /srv/simx}\n")
    assert fleet.server == "srv" and fleet.ssh.connect_timeout == 2.5 and fleet.ssh.known_hosts_path == Path("/k")
    assert _fleet(tmp_path, "instances: {}\n").server == "local"
    with pytest.raises(ConfigError, match="server: 'nope' is not an instance"):
        _fleet(tmp_path, "server: nope\ninstances: {}\n")
    with pytest.raises(ConfigError, match="ssh.connect_timeout"):
        _fleet(tmp_path, "ssh: {connect_timeout: soon}\n")


def _envs(tmp_path, **env):
    env = {"SIMX_VAR": str(tmp_path / "var"), **env}
    cfg = simx_config.load(env=env)
    target = Target(root=Path("/srv/simx"), var=tmp_path / "var", python="/py", user="root")
    return {p["program"]: p["environment"] for p in programs(cfg, hosts.DEFAULT_LOCAL, env, target, serves=True)}


def test_each_program_gets_only_its_own_settings(tmp_path):
    envs = _envs(tmp_path, RUNWEB_BIND="0.0.0.0", SIMX_DB_URL="sqlite:////x.db", RUNQ_LISTEN="0.0.0.0",
                 SIMX_CLIENT_SECRET_FILE="/c", SIMX_WORKER_SECRET_FILE="/w", SIMX_TLS_CA="/ca")
    runq, runweb, worker = envs["runq"], envs["runweb"], envs["worker-dummy"]
    assert runweb["RUNWEB_BIND"] == "0.0.0.0" and "RUNWEB_BIND" not in runq and "RUNWEB_BIND" not in worker
    assert runq["SIMX_DB_URL"] == "sqlite:////x.db" and "SIMX_DB_URL" not in runweb and "SIMX_DB_URL" not in worker
    assert runq["RUNQ_LISTEN"] == "0.0.0.0" and "RUNQ_LISTEN" not in worker
    assert worker["SIMX_WORKER_SECRET_FILE"] == "/w" and "SIMX_CLIENT_SECRET_FILE" not in worker
    assert runweb["SIMX_CLIENT_SECRET_FILE"] == "/c" and "SIMX_WORKER_SECRET_FILE" not in runweb
    assert worker["SIMX_TLS_CA"] == "/ca" and runweb["SIMX_TLS_CA"] == "/ca"


def test_a_runweb_setting_changes_the_runweb_section_only(tmp_path):
    a, b = _envs(tmp_path), _envs(tmp_path, RUNWEB_BIND="127.0.0.2", RUNWEB_PORT="9999")
    assert a["runq"] == b["runq"] and a["worker-dummy"] == b["worker-dummy"] and a["runweb"] != b["runweb"]


def test_a_remote_config_names_the_secret_copies_on_that_host(tmp_path):
    env = {"SIMX_VAR": str(tmp_path / "var"), "SIMX_WORKER_SECRET_FILE": "/control/worker.secret"}
    cfg = simx_config.load(env=env)
    inst = hosts.Instance(name="lab", host="h", dir="/srv/simx", pools=(hosts.Pool(name="d"),))
    text = render(cfg, inst, env, target=remote_target(inst), serves=False, remote=True)
    assert 'SIMX_WORKER_SECRET_FILE="/srv/simx/var/secrets/worker.secret"' in text
    assert "/control/" not in text and "[program:runq]" not in text
    assert "command=/srv/simx/venv/bin/python -m worker" in text and "umask=077" in text
    assert 'SIMX_VAR="/srv/simx/var"' in text


def test_the_settings_record_is_reused_and_a_different_value_is_announced():
    recorded = {"RUNQ_PORT": "4949", "SIMX_DB_URL": "postgresql://u:pw@h/db"}
    applied, notes = settings.merge(recorded, {"PATH": "/bin"})
    assert applied == recorded and notes == []
    applied, notes = settings.merge(recorded, {"RUNQ_PORT": "5000", "SIMX_DB_URL": "sqlite:///x"})
    assert applied == {"RUNQ_PORT": "5000", "SIMX_DB_URL": "sqlite:///x"}
    assert any("RUNQ_PORT changed from '4949' to '5000'" in n for n in notes)
    assert not any("pw" in n for n in notes)  # a database URL may hold a password: never shown
    applied, notes = settings.merge(recorded, {"RUNQ_PORT": ""})
    assert applied == {"SIMX_DB_URL": "postgresql://u:pw@h/db"} and "unset" in notes[0]
    eff = settings.effective_env({"RUNQ_PORT": "1", "HOME": "/root"}, {"RUNQ_PORT": "2"})
    assert eff == {"RUNQ_PORT": "2", "HOME": "/root"}


def test_a_task_leaves_settings_only_programs_it_does_not_start_use_as_recorded():
    keep = used_only_by_others(["worker-dummy"])            # `fab local`: the pools alone
    assert keep["RUNWEB_PORT"] == ["runweb"] and keep["SIMX_DB_URL"] == ["runq"]
    assert "RUNQ_PORT" not in keep and "SIMX_HOSTS" not in keep   # the workers use it; fab itself does
    applied, notes = settings.merge({"RUNWEB_PORT": "8097"}, {"RUNWEB_PORT": "9000", "RUNQ_PORT": "5000"}, keep)
    assert applied == {"RUNWEB_PORT": "8097", "RUNQ_PORT": "5000"}
    assert notes == ["setting RUNWEB_PORT='9000' ignored: only runweb uses it and this task does not start runweb "
                     "(`fab runweb.restart` applies it)"]
    assert settings.merge({}, {"RUNWEB_PORT": ""}, keep) == ({}, [])
    assert used_only_by_others(["runq", "runweb", "worker-dummy"]) == {}   # `fab all`: everything applies
    assert "RUNWEB_PORT" not in used_only_by_others(["runweb"])


def test_settings_record_round_trip_is_private(tmp_path):
    path = tmp_path / "applied.json"
    settings.save(path, {"RUNQ_PORT": "4949"})
    assert settings.load(path) == {"RUNQ_PORT": "4949"} and path.stat().st_mode & 0o077 == 0
    path.write_text("not json")
    assert settings.load(path) == {}


def test_the_first_python_of_3_11_or_newer_is_chosen():
    out = "/usr/bin/python3.13 3.13 x86_64 simx\n/usr/bin/python3 3.9 x86_64 simx\n"
    assert pick_python(out).path == "/usr/bin/python3.13"
    assert pick_python("/usr/bin/python3 3.9 x86_64 simx\n") is None
    assert pick_python("/opt/py/bin/python3.11 3.11 aarch64 ann\n").machine == "aarch64"


def test_fingerprint_is_openssh_s(tmp_path):
    key = tmp_path / "k"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    expected = subprocess.run(["ssh-keygen", "-lf", f"{key}.pub"], capture_output=True, text=True).stdout.split()[1]
    assert fingerprint(paramiko.Ed25519Key.from_private_key_file(str(key))) == expected


def test_a_pools_runq_host_that_runq_does_not_listen_on_is_pointed_out(tmp_path):
    hosts_file = tmp_path / "hosts.yaml"
    hosts_file.write_text("instances:\n  lab: {host: h, dir: /d, runq_host: 127.0.0.2, runq_port: 7000,"
                          " pools: [{name: d}]}\n  near: {host: h, dir: /d, runq_host: 127.0.0.1, pools: [{name: d}]}\n")
    env = {"SIMX_VAR": str(tmp_path / "var"), "SIMX_HOSTS": str(hosts_file), "RUNQ_LISTEN": "127.0.0.1",
           "RUNQ_PORT": "7000"}
    ctl = Control(env)
    notes = ctl.address_notes("lab")
    assert len(notes) == 1 and "127.0.0.2:7000" in notes[0] and "runq.listen" in notes[0]
    assert ctl.address_notes("near") == []
    assert Control(dict(env, RUNQ_LISTEN="0.0.0.0")).address_notes("lab") == []


def test_wheelhouse_key_follows_pyproject_and_host_python(tmp_path):
    py = tmp_path / "pyproject.toml"
    py.write_text('[project]\nname = "x"\ndependencies = ["a>=1"]\n')
    k = wheelhouse.key(py, "3.11", "x86_64")
    assert k != wheelhouse.key(py, "3.12", "x86_64") and k.endswith("-py3.11-x86_64")
    py.write_text('[project]\nname = "x"\ndependencies = ["a>=2"]\n')
    assert wheelhouse.key(py, "3.11", "x86_64") != k
    assert wheelhouse.requirements(py) == ["a>=2"]


def test_root_does_not_assume_a_checkout(tmp_path):
    assert ops_paths.root({"SIMX_ROOT": str(tmp_path)}) == tmp_path.resolve()
    assert (ops_paths.root({}) / "conf").is_dir()  # this checkout
    assert (ops_paths.TEMPLATES / "supervisord.conf.tmpl").is_file()  # package data, not a checkout path
    assert ops_paths.cache_dir({"SIMX_CACHE": "/c"}) == Path("/c")
    assert ops_paths.cache_dir({"XDG_CACHE_HOME": "/x"}) == Path("/x/simx")


@pytest.mark.parametrize("reply", [
    [], {"notes": "x"}, {"notes": [1]}, {"processes": {"g:n": {"statename": "RUNNING", "pid": "1", "description": ""}}},
    {"processes": [1]}, {"logs": {"a": 1}}, {"error": 3}, {"web": "yes"}, {"replacing": []},
    {"replacing": {"pools": "worker-a"}}, {"replacing": {"workers": {"g:n": "1"}}},
])
def test_a_malformed_agent_reply_is_refused(reply):
    from ops.remote import checked
    with pytest.raises(ValueError):
        checked(reply)


def test_a_well_formed_agent_reply_passes():
    from ops.remote import checked
    reply = {"hostname": "h", "python": "/p", "error": None, "notes": ["n"], "logs": {"a:b": "x"},
             "processes": {"g:n": {"statename": "RUNNING", "pid": 1, "description": "pid 1"}},
             "replacing": {"pools": ["g"], "workers": {"g:n": 1}}, "web": True}
    assert checked(reply) is reply


def test_fab_list_offers_no_trust_task_for_this_host():
    import subprocess
    from procs import PYTHON, ROOT
    listed = subprocess.run([PYTHON, "-m", "fabric", "--list"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0 and "local.status" in listed.stdout
    assert "local.trust" not in listed.stdout


def test_a_long_var_puts_the_socket_in_a_private_directory_and_a_squatted_one_is_refused(tmp_path, monkeypatch):
    import os
    import pytest
    from ops.control import OpsError
    from ops.paths import Paths, private_dir
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    (tmp_path / "run").mkdir()
    long_var = tmp_path / ("v" * 120)
    sock = Paths(long_var).sock
    assert sock.parent == tmp_path / "run" / "simx" and len(str(sock)) < 108
    assert os.stat(sock.parent).st_mode & 0o777 == 0o700
    os.chmod(sock.parent, 0o755)               # others may enter: someone could have put a socket there
    with pytest.raises(OpsError, match="open to other users"):
        private_dir()
    os.chmod(sock.parent, 0o700)
    os.rmdir(sock.parent)
    os.symlink(tmp_path, sock.parent)          # a link planted in its place
    with pytest.raises(OpsError, match="not a directory"):
        private_dir()


def test_run_time_directories_and_the_parents_made_for_them_are_private(tmp_path):
    from ops.paths import Paths
    (tmp_path / "shared").mkdir(mode=0o755)
    Paths(tmp_path / "shared" / "var" / "demo").make()   # var/ made on the way, as `make demo` does
    mode = lambda p: p.stat().st_mode & 0o777   # noqa: E731
    assert mode(tmp_path / "shared" / "var") == 0o700 and mode(tmp_path / "shared" / "var" / "demo") == 0o700
    assert mode(tmp_path / "shared") == 0o755     # what existed is left as it is
