"""Configuration: file, then environment, then flags; bad values name the key."""
from pathlib import Path

import pytest

from simx import config


def test_defaults_from_the_shipped_file():
    cfg = config.load(env={})
    assert (cfg.runq.port, cfg.runq.listen, cfg.runweb.port, cfg.runweb.run_port) == (8096, ("127.0.0.1",), 8097, 4567)
    assert cfg.var == config.ROOT / "var"
    assert (cfg.batch.max_attempts, cfg.batch.max_requeues, cfg.batch.time_limit) == (3, 10, None)


def test_environment_then_flags_override():
    env = {"RUNQ_PORT": "4949", "RUNQ_LISTEN": "127.0.0.1,::1", "RUNQ_LEASE": "2.5", "RUNWEB_PORT": "9000"}
    cfg = config.load(env=env)
    assert (cfg.runq.port, cfg.runq.listen, cfg.runq.lease, cfg.runweb.port) == (4949, ("127.0.0.1", "::1"), 2.5, 9000)
    assert config.load(env=env, runq_port=5000).runq.port == 5000


@pytest.mark.parametrize("env, key", [
    ({"RUNQ_PORT": "eighty"}, "runq.port"),
    ({"RUNQ_LEASE": "-1"}, "runq.lease"),
])
def test_bad_values_name_the_key(env, key):
    with pytest.raises(config.ConfigError, match=key):
        config.load(env=env)


def test_unknown_key_in_the_file_is_named(tmp_path):
    path = tmp_path / "simx.yaml"
    path.write_text("runq:\n  prot: 1\n")
    with pytest.raises(config.ConfigError, match="runq.prot"):
        config.load(path, env={})


def test_relative_sqlite_paths_resolve_against_root_or_var(tmp_path):
    root, var = tmp_path / "root", tmp_path / "elsewhere"
    assert config.resolve_db_url("sqlite:///var/data/runq.sqlite", root) == f"sqlite:///{root}/var/data/runq.sqlite"
    assert config.resolve_db_url("sqlite:///var/data/runq.sqlite", root, var) == f"sqlite:///{var}/data/runq.sqlite"
    assert config.resolve_db_url("sqlite:///db/x.sqlite", root, var) == f"sqlite:///{root}/db/x.sqlite"
    assert config.resolve_db_url("postgresql://u@127.0.0.1/simx", root) == "postgresql://u@127.0.0.1/simx"
    assert (var / "data").is_dir()
    assert Path(config.load(env={"SIMX_VAR": str(var)}).var) == var


def test_limits_and_tls_nest_and_come_from_file_and_environment(tmp_path):
    conf = tmp_path / "simx.yaml"
    conf.write_text("runq:\n  limits:\n    frame_timeout: 2\n    max_output: 4096\n  tls:\n    cert: a.pem\n    key: a.key\n")
    cfg = config.load(conf, env={"SIMX_TLS_CA": "ca.pem", "RUNWEB_TLS_CERT": "w.pem"})
    assert (cfg.runq.limits.frame_timeout, cfg.runq.limits.max_output, cfg.runq.limits.auth_timeout) == (2.0, 4096, 30.0)
    assert (cfg.runq.tls.cert, cfg.runq.tls.key, cfg.runq.tls.ca) == ("a.pem", "a.key", "ca.pem")
    assert (cfg.runweb.tls.cert, cfg.runweb.tls.key) == ("w.pem", "")
    defaults = config.load(env={})
    assert defaults.runq.limits == config.Limits() and defaults.runq.limits.max_unauth_per_addr == 64


@pytest.mark.parametrize("text, key", [
    ("runq:\n  limits:\n    frame_timeot: 2\n", "runq.limits.frame_timeot: unknown key"),
    ("runq:\n  limits:\n    max_output: -1\n", "runq.limits.max_output"),
    ("runq:\n  limits: 5\n", "runq.limits: expected a mapping"),
])
def test_bad_nested_values_name_the_key(tmp_path, text, key):
    conf = tmp_path / "simx.yaml"
    conf.write_text(text)
    with pytest.raises(config.ConfigError, match=key):
        config.load(conf, env={})


def test_sqlite_synchronous_is_a_setting_and_off_is_refused(tmp_path):
    from runq.store import SqlStore
    assert config.load(env={}).runq.synchronous == "NORMAL"
    assert config.load(env={"SIMX_DB_SYNCHRONOUS": "full"}).runq.synchronous == "FULL"
    with pytest.raises(config.ConfigError, match=r"runq.synchronous: must be one of NORMAL, FULL, EXTRA.*OFF could"):
        config.load(env={"SIMX_DB_SYNCHRONOUS": "off"})
    levels = {}
    for level in ("NORMAL", "FULL", "EXTRA"):
        store = SqlStore(f"sqlite:///{tmp_path}/{level}.sqlite", level)
        with store.engine.connect() as conn:
            levels[level] = conn.exec_driver_sql("PRAGMA synchronous").scalar()
        store.close()
    assert levels == {"NORMAL": 1, "FULL": 2, "EXTRA": 3}


@pytest.mark.parametrize("text, says", [
    ("runweb:\n  behind_proxy: ture\n", r"runweb.behind_proxy: expected true or false.*'ture'"),
    ("runq:\n  port: 70000\n", r"runq.port: a port is 1 to 65535, not 70000"),
    ("runq:\n  port: 0\n", r"runq.port: a port is 1 to 65535"),
    ("runweb:\n  port: eighty\n", r"runweb.port: expected an integer, not 'eighty'"),
    ("runq:\n  heartbeat_interval: 0\n", r"runq.heartbeat_interval: must be more than 0"),
    ("runq:\n  lease: .nan\n", r"runq.lease: expected a finite number"),
    ("runq:\n  log_level: LOUD\n", r"runq.log_level: must be one of DEBUG, INFO"),
    ("runweb:\n  threads: 2.5\n", r"runweb.threads: expected an integer"),
    ("batch:\n  max_attempts: 0\n", r"batch.max_attempts: must be 1 or more"),
    ("runq:\n  allow_undeclared_engines: maybe\n", r"runq.allow_undeclared_engines: expected true or false"),
])
def test_named_converters_refuse_junk_and_name_the_setting(tmp_path, text, says):
    conf = tmp_path / "simx.yaml"
    conf.write_text(text)
    with pytest.raises(config.ConfigError, match=says):
        config.load(conf, env={})


def test_environment_values_go_through_the_same_converters():
    with pytest.raises(config.ConfigError, match=r"runweb.behind_proxy: expected true or false.*'ture'"):
        config.load(env={"RUNWEB_BEHIND_PROXY": "ture"})
    with pytest.raises(config.ConfigError, match=r"runq.port: a port is 1 to 65535"):
        config.load(env={"RUNQ_PORT": "99999"})
    cfg = config.load(env={"RUNWEB_BEHIND_PROXY": "yes", "RUNQ_PORT": "4949", "RUNQ_LISTEN": "127.0.0.1, ::1"})
    assert cfg.runweb.behind_proxy is True and cfg.runq.port == 4949 and cfg.runq.listen == ("127.0.0.1", "::1")
