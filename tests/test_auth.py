"""runq/auth.py and the client handshake, without a runq process: proofs, secret files,
trait bounds, protected mode, configuration of secrets."""
from __future__ import annotations

import math
import socket
import threading

import pytest

from simx import auth, config, protocol
from simx.client import Link, RunqRefused, handshake

SECRET = b"a1" * 32
OTHER = b"b2" * 32


def test_proofs_differ_by_direction_role_and_secret_and_keys_match_on_both_ends():
    n1, n2 = auth.new_nonce(), auth.new_nonce()
    assert len(n1) == 64 and n1 != n2
    proofs = {auth.server_proof(SECRET, "worker", n1, n2), auth.peer_proof(SECRET, "worker", n2, n1),
              auth.server_proof(SECRET, "client", n1, n2), auth.server_proof(OTHER, "worker", n1, n2)}
    assert len(proofs) == 4
    assert auth.worker_key(SECRET, n2, n1) == auth.worker_key(SECRET, n2, n1) != auth.worker_key(SECRET, n1, n2)
    key = auth.random_key()
    assert auth.same(auth.reconnect_proof(key, 5, n2), auth.reconnect_proof(key, 5, n2))
    assert not auth.same(auth.reconnect_proof(key, 5, n2), auth.reconnect_proof(key, 6, n2))
    assert not auth.same(auth.reconnect_proof(key, 5, n2), None) and not auth.same(None, "x")
    assert SECRET.decode() not in auth.key_id(SECRET) and len(auth.key_id(SECRET)) == 16


def test_secret_files_are_made_0600_never_overwritten_and_checked_on_load(tmp_path):
    path = auth.write_secret(tmp_path / "d" / "worker.secret")
    assert path.stat().st_mode & 0o777 == 0o600 and (tmp_path / "d").stat().st_mode & 0o777 == 0o700
    assert len(auth.load_secret(path)) == 64
    with pytest.raises(auth.SecretError, match="--force"):
        auth.write_secret(path)
    old = path.read_text()
    auth.write_secret(path, force=True)
    assert path.read_text() != old
    path.chmod(0o640)
    with pytest.raises(auth.SecretError, match=f"chmod 600 {path}"):
        auth.load_secret(path)
    short = tmp_path / "short"
    short.write_text("abcd\n")
    short.chmod(0o600)
    with pytest.raises(auth.SecretError, match="at least 32 hex"):
        auth.load_secret(short)
    with pytest.raises(auth.SecretError, match="fab runq.secrets"):
        auth.load_secret(tmp_path / "missing")


def _hello(version=protocol.VERSION, role="worker", **extra):
    return protocol.message("Hello", version=version, role=role, nonce=auth.new_nonce(), **extra)


def test_gate_refuses_another_version_naming_both():
    gate = auth.Gate(auth.Secrets(), "inst")
    with pytest.raises(auth.AuthError) as err:
        gate.challenge(_hello(version=3))
    assert err.value.code == 426 and "version 3" in str(err.value) and "version 2" in str(err.value)


def test_unknown_optional_hello_fields_are_ignored():
    body = protocol.encode({**_hello(), "compression": "zstd", "features": ["prefetch"]})[4:]
    state, fields = auth.Gate(auth.Secrets(), "inst").challenge(protocol.decode_message(body))
    assert fields["proof"] is None and fields["instance"] == "inst" and state.role == "worker"


def test_gate_with_secrets_proves_itself_and_checks_the_peer():
    secrets = auth.Secrets(workers=(auth.WorkerSecret("a", SECRET), auth.WorkerSecret("b", OTHER)), client=OTHER)
    gate = auth.Gate(secrets, "inst")
    hello = _hello(key_id=auth.key_id(OTHER))
    state, fields = gate.challenge(hello)
    assert state.entry.name == "b"   # the second secret, named by its key id (rotation)
    assert fields["proof"] == auth.server_proof(OTHER, "worker", hello["nonce"], fields["nonce"])
    with pytest.raises(auth.AuthError) as err:
        gate.authenticate(state, {"proof": auth.peer_proof(SECRET, "worker", fields["nonce"], hello["nonce"])})
    assert err.value.code == 401 and not state.authenticated
    gate.authenticate(state, {"proof": auth.peer_proof(OTHER, "worker", fields["nonce"], hello["nonce"])})
    assert state.authenticated
    with pytest.raises(auth.AuthError, match="key id"):
        gate.challenge(_hello(key_id="0" * 16))
    client_hello = _hello(role="client")
    cstate, cfields = gate.challenge(client_hello)
    with pytest.raises(auth.AuthError):
        gate.authenticate(cstate, {"proof": None})


@pytest.mark.parametrize("traits, bounds, problem", [
    ({"cost": -1e308}, auth.Bounds(), "cost"),
    ({"speed": math.inf}, auth.Bounds(), "speed"),
    ({"priority": math.nan}, auth.Bounds(), "priority"),
    ({"cost": 11}, auth.Bounds(cost=(0, 10)), "cost 11"),
    ({"engine": "command"}, auth.Bounds(engines=("dummy",)), "engine 'command'"),
    ({"group": "other"}, auth.Bounds(group="lab"), "group 'other'"),
    ({"cost": 5, "group": "lab"}, auth.Bounds(cost=(0, 10), group="lab", engines=("dummy",)), None),
    ({"cost": 1e6, "priority": -1e6}, auth.Bounds(), None),
])
def test_trait_bounds(traits, bounds, problem):
    full = {"engine": "dummy", "group": "", "user": "", "cost": 1, "speed": 1, "priority": 0, **traits}
    if problem is None:
        bounds.check(full)
    else:
        with pytest.raises(auth.AuthError, match=problem):
            bounds.check(full)


def test_protected_mode_refuses_non_loopback_without_both_secrets():
    both = auth.Secrets(workers=(auth.WorkerSecret("default", SECRET),), client=OTHER)
    auth.check_exposure(("127.0.0.1", "::1", "localhost"), auth.Secrets())
    auth.check_exposure(("0.0.0.0",), both)
    with pytest.raises(auth.SecretError) as err:
        auth.check_exposure(("127.0.0.1", "0.0.0.0"), auth.Secrets(workers=both.workers))
    text = str(err.value)
    assert "0.0.0.0" in text and "a client secret" in text and "fab runq.secrets" in text
    assert "runq.worker_secret_file" in text and "runq.client_secret_file" in text


def test_old_token_settings_name_what_replaces_them(tmp_path):
    with pytest.raises(config.ConfigError, match="SIMX_WORKER_SECRET_FILE"):
        config.load(env={"SIMX_WORKER_TOKEN": "s3cret"})
    conf = tmp_path / "simx.yaml"
    conf.write_text("runq:\n  worker_token: s3cret\n")
    with pytest.raises(config.ConfigError, match="runq.worker_secret_file"):
        config.load(conf, env={})


def test_worker_secrets_in_conf_carry_bounds_and_bad_entries_are_named(tmp_path):
    conf = tmp_path / "simx.yaml"
    conf.write_text("runq:\n  worker_secret_file: var/w.secret\n  worker_secrets:\n"
                    "    - {name: lab, file: /s/lab, engines: [dummy], group: lab, cost: [0, 10]}\n")
    cfg = config.load(conf, env={})
    (entry,) = cfg.runq.worker_secrets
    assert (entry.name, entry.file, entry.bounds.engines, entry.bounds.cost) == ("lab", "/s/lab", ("dummy",),
                                                                               (0.0, 10.0))
    assert config.resolve_var_path(cfg.runq.worker_secret_file, cfg.root, tmp_path) == tmp_path / "w.secret"
    conf.write_text("runq:\n  worker_secrets:\n    - {name: lab, file: x, cost: [10, 0]}\n")
    with pytest.raises(config.ConfigError, match=r"runq.worker_secrets\[0\].cost"):
        config.load(conf, env={})


def _fake_runq(sock, gate: auth.Gate, results: list):
    """runq's half of the handshake on a socket, as the coordinator does it."""
    link = Link(sock)
    try:
        state, fields = gate.challenge(link.recv())
        link.send(protocol.message("RunqChallenge", **fields))
        gate.authenticate(state, link.recv())
        results.append(state)
    except (auth.AuthError, Exception) as exc:  # noqa: B014 - the test inspects what happened
        results.append(exc)
    finally:
        sock.close()


@pytest.mark.parametrize("runq_secret, peer_secret, outcome", [
    (None, None, "ok"),
    (SECRET, SECRET, "ok"),
    (SECRET, OTHER, "runq refused"),       # runq's proof does not match the peer's secret: the peer stops
    (None, SECRET, "peer refused"),        # runq proves nothing: a peer with a secret never talks on
    (SECRET, None, "runq refused"),        # no proof from the peer
])
def test_client_handshake_is_mutual(runq_secret, peer_secret, outcome):
    mine, theirs = socket.socketpair()
    results: list = []
    gate = auth.Gate(auth.Secrets(client=runq_secret), "inst-9")
    thread = threading.Thread(target=_fake_runq, args=(theirs, gate, results))
    thread.start()
    try:
        if outcome == "peer refused":
            with pytest.raises(RunqRefused, match="did not prove"):
                handshake(mine, "client", peer_secret)
        elif outcome == "runq refused" and peer_secret is not None:
            with pytest.raises(RunqRefused, match="did not prove"):
                handshake(mine, "client", peer_secret)
        else:
            challenge = handshake(mine, "client", peer_secret)
            assert challenge["instance"] == "inst-9"
    finally:
        mine.close()
        thread.join(5)
    if outcome == "ok":
        assert results[0].authenticated
    elif runq_secret is not None and peer_secret is None:
        assert isinstance(results[0], auth.AuthError) and results[0].code == 401


def test_fab_runq_secrets_writes_both_files_once(tmp_path):
    conf = config.RunqConfig()
    resolve = lambda p: config.resolve_var_path(p, tmp_path, tmp_path / "var")  # noqa: E731
    written = auth.create_secret_files(conf, resolve)
    for role in ("worker", "client"):
        path = tmp_path / "var" / "secrets" / f"{role}.secret"
        assert len(auth.load_secret(path)) == 64 and written[role] == (path, True)
    before = (tmp_path / "var" / "secrets" / "client.secret").read_text()
    again = auth.create_secret_files(conf, resolve)   # kept: nothing locked out
    assert all(new is False for _, new in again.values())
    assert (tmp_path / "var" / "secrets" / "client.secret").read_text() == before
    auth.create_secret_files(conf, resolve, force=True)
    assert (tmp_path / "var" / "secrets" / "client.secret").read_text() != before
    (tmp_path / "var" / "secrets" / "worker.secret").write_text("junk\n")
    with pytest.raises(auth.SecretError, match="worker.secret"):
        auth.create_secret_files(conf, resolve)
