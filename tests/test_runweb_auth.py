"""runweb.auth and runweb.users: password hashes, the users file and its command line."""
import base64
import io
import ipaddress
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from runweb import auth, users

ROOT = Path(__file__).resolve().parent.parent


def test_hash_format_and_check():
    stored = auth.hash_password("topl5678", salt=b"0123456789abcdef")
    scheme, n, r, p, salt, digest = stored.split("$")
    assert (scheme, n, r, p) == ("scrypt", "16384", "8", "1")
    assert base64.b64decode(salt) == b"0123456789abcdef" and len(base64.b64decode(digest)) == 32
    assert auth.check_password("topl5678", stored)
    assert not auth.check_password("topl5679", stored)
    assert auth.hash_password("x") != auth.hash_password("x")  # random salt


@pytest.mark.parametrize("stored", [
    "", "plain-text-password", "bcrypt$1$2$3$AAAA$AAAA", "scrypt$x$8$1$AAAA$AAAA",
    "scrypt$16384$8$1$!!!!$AAAA", "scrypt$1073741824$8$1$AAAA$AAAA", "scrypt$16384$8$1$AAAA$",
])
def test_unusable_hashes_never_match(stored):
    assert auth.check_password("", stored) is False
    assert auth.check_password("anything", stored) is False


def test_a_hash_of_another_scheme_with_a_matching_digest_is_refused():
    stored = auth.hash_password("pw").replace("scrypt$", "other$", 1)
    assert not auth.check_password("pw", stored)


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_users_file_is_reread_when_it_changes_but_not_more_often_than_recheck(tmp_path):
    path, clock = tmp_path / "users.yaml", Clock()
    found = auth.Users(path, recheck=3.0, clock=clock)
    assert found.current() == {} and not found.check("ann", "pw")
    users.write_users(path, {"ann": {"password": auth.hash_password("pw"), "admin": False}})
    clock.now += 1
    assert not found.check("ann", "pw")  # within recheck: not looked at yet
    clock.now += 3
    assert found.check("ann", "pw")
    users.write_users(path, {"ann": {"password": auth.hash_password("new"), "admin": False}})
    clock.now += 3
    assert not found.check("ann", "pw") and found.check("ann", "new")  # no stale cached login
    path.unlink()
    clock.now += 3
    assert found.current() == {} and not found.check("ann", "new")


def test_an_unusable_users_file_lets_nobody_in(tmp_path, caplog):
    path = tmp_path / "users.yaml"
    path.write_text("- not\n- a mapping\n")
    assert not auth.Users(path).check("ann", "pw")
    assert "unusable" in caplog.text
    path.write_text("ann: [1]\n")
    assert auth.Users(path).current() == {}


@pytest.mark.parametrize("addr, trusted", [
    ("127.0.0.1", True), ("127.255.0.1", True), ("::1", True), ("::ffff:127.0.0.1", True),
    ("203.0.113.7", False), ("::ffff:203.0.113.7", False), ("2001:db8::1", False), ("", False), (None, False),
    ("not an address", False),
])
def test_trusted_addresses(addr, trusted):
    networks = [ipaddress.ip_network(n) for n in ("127.0.0.0/8", "::1/128")]
    assert auth.is_trusted(addr, networks) is trusted


@pytest.mark.parametrize("header, expected", [
    ("Basic " + base64.b64encode(b"ann:pw:with:colons").decode(), ("ann", "pw:with:colons")),
    ("basic " + base64.b64encode("zoë:pässwort".encode()).decode(), ("zoë", "pässwort")),
    ("Basic " + base64.b64encode(b"ann:").decode(), ("ann", "")),
    ("Basic " + base64.b64encode(b"ann").decode(), None),
    ("Basic " + base64.b64encode(b"\xff:\xfe").decode(), None),
    ("Basic ***", None), ("Digest abc", None), ("", None), (None, None),
])
def test_basic_credentials(header, expected):
    assert auth.basic_credentials(header) == expected


# --- python -m runweb.users ------------------------------------------------------------------

class Terminal(io.StringIO):
    def isatty(self):
        return True


def run_cli(*argv, stdin="", prompt=None):
    stream = Terminal() if prompt else io.StringIO(stdin)
    return users.main(list(argv), stdin=stream, prompt=prompt or (lambda text: pytest.fail("prompted")))


def test_add_list_remove(tmp_path, capsys):
    path = tmp_path / "var" / "runweb-users.yaml"  # var/ does not exist yet
    assert run_cli("--file", str(path), "add", "relteq", stdin="topl5678\n") == 0
    assert run_cli("--file", str(path), "add", "zoë", stdin="pässwort\n") == 0
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    stored = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert set(stored) == {"relteq", "zoë"} and auth.check_password("topl5678", stored["relteq"])  # old form
    assert auth.check_password("pässwort", stored["zoë"])
    capsys.readouterr()
    assert run_cli("--file", str(path), "list") == 0
    assert capsys.readouterr().out == "relteq\nzoë\n"
    assert run_cli("--file", str(path), "add", "relteq", stdin="changed\n") == 0
    assert "changed the password of 'relteq'" in capsys.readouterr().out
    assert auth.check_password("changed", yaml.safe_load(path.read_text())["relteq"])
    assert run_cli("--file", str(path), "remove", "relteq") == 0
    assert set(yaml.safe_load(path.read_text(encoding="utf-8"))) == {"zoë"}
    assert run_cli("--file", str(path), "remove", "relteq") == 1
    assert "no user 'relteq'" in capsys.readouterr().err
    assert [p.name for p in path.parent.iterdir()] == ["runweb-users.yaml"]  # no temp files left


def test_password_is_asked_twice_on_a_terminal(tmp_path, capsys):
    path = tmp_path / "users.yaml"
    answers = iter(["secret", "secret"])
    assert run_cli("--file", str(path), "add", "ann", prompt=lambda text: next(answers)) == 0
    assert auth.check_password("secret", yaml.safe_load(path.read_text())["ann"])
    answers = iter(["secret", "typo"])
    assert run_cli("--file", str(path), "add", "bob", prompt=lambda text: next(answers)) == 1
    assert "the passwords differ" in capsys.readouterr().err
    assert set(yaml.safe_load(path.read_text())) == {"ann"}


@pytest.mark.parametrize("name, stdin, message", [
    ("ann", "\n", "the password is empty"),
    ("a:b", "pw\n", "cannot contain ':'"),
    (" ann", "pw\n", "leading or trailing spaces"),
    ("", "pw\n", "non-empty"),
    ("a\tb", "pw\n", "printable"),
])
def test_bad_names_and_passwords_are_refused(tmp_path, capsys, name, stdin, message):
    path = tmp_path / "users.yaml"
    assert run_cli("--file", str(path), "add", name, stdin=stdin) == 1
    assert message in capsys.readouterr().err
    assert not path.exists()


def test_a_broken_users_file_is_not_overwritten(tmp_path, capsys):
    path = tmp_path / "users.yaml"
    path.write_text("ann: [broken\n")
    assert run_cli("--file", str(path), "add", "bob", stdin="pw\n") == 1
    assert path.read_text() == "ann: [broken\n"


def test_module_runs_as_a_command_with_the_configured_file(tmp_path):
    path = tmp_path / "u.yaml"
    env = {"RUNWEB_USERS": str(path), "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-m", "runweb.users", "add", "ann"], input="pw\n", text=True,
                          cwd=ROOT, env=env, capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert auth.check_password("pw", yaml.safe_load(path.read_text())["ann"])


def test_users_file_is_git_ignored():
    done = subprocess.run(["git", "check-ignore", "-q", "var/runweb-users.yaml"], cwd=ROOT, timeout=30)
    assert done.returncode == 0
