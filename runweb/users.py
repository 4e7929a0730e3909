"""Manage runweb's users file: ``python -m runweb.users add [--admin] NAME | role NAME admin|user | remove NAME | list``.

A plain user is written as ``name: hash`` (the file's original form, still read
as is); an admin as ``name: {password: hash, admin: true}``.

The password comes from stdin when it is not a terminal (``echo pw | ...``),
otherwise it is asked twice.  The file (runweb.users_file, default
var/runweb-users.yaml, git-ignored) is replaced atomically with mode 0600;
running runweb picks the change up within seconds.
"""
from __future__ import annotations

import argparse
import getpass
import os
import sys
import tempfile
from pathlib import Path

from simx import config as simx_config

from .auth import hash_password, read_users
from .media import dump_yaml


def check_name(name: str) -> str | None:
    """Why a user name cannot be used, or None."""
    if not name or name != name.strip():
        return "a user name must be non-empty, without leading or trailing spaces"
    if ":" in name:
        return "a user name cannot contain ':' (HTTP basic auth splits on it)"
    if not name.isprintable() or len(name) > 200:
        return "a user name must be printable text of at most 200 characters"
    return None


def _stored(entry: dict):
    return {"password": entry["password"], "admin": True} if entry.get("admin") else entry["password"]


def write_users(path: Path, users: dict[str, dict]) -> None:
    """Replace the file atomically (temp file + rename), mode 0600, creating its directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")  # mode 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(dump_yaml({n: _stored(e) for n, e in sorted(users.items())}) if users else "{}\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_password(name: str, stdin, prompt) -> str:
    if not stdin.isatty():
        return stdin.readline().rstrip("\r\n")
    first = prompt(f"Password for {name}: ")
    if prompt("Repeat the password: ") != first:
        raise ValueError("the passwords differ")
    return first


def main(argv=None, stdin=None, prompt=getpass.getpass) -> int:
    parser = argparse.ArgumentParser(prog="python -m runweb.users", description=__doc__.splitlines()[0])
    parser.add_argument("--file", type=Path, help="users file (default: runweb.users_file, RUNWEB_USERS)")
    commands = parser.add_subparsers(dest="command", required=True)
    add = commands.add_parser("add", help="add a user, or change a user's password")
    add.add_argument("name")
    add.add_argument("--admin", action="store_true", help="the user is an admin (sees every batch, drains workers)")
    role = commands.add_parser("role", help="make a user an admin, or a plain user")
    role.add_argument("name")
    role.add_argument("role", choices=("admin", "user"))
    commands.add_parser("remove", help="remove a user").add_argument("name")
    commands.add_parser("list", help="list user names")
    args = parser.parse_args(argv)
    stdin = sys.stdin if stdin is None else stdin
    try:
        if args.file is None:
            cfg = simx_config.load()
            args.file = simx_config.resolve_path(cfg.runweb.users_file, cfg.root)
        users = read_users(args.file)
        if args.command == "list":
            print("\n".join(n + (" (admin)" if e["admin"] else "") for n, e in sorted(users.items()))
                  if users else f"no users in {args.file}", file=sys.stdout if users else sys.stderr)
            return 0
        if args.command == "role":
            if args.name not in users:
                raise ValueError(f"no user {args.name!r} in {args.file}")
            users[args.name]["admin"] = args.role == "admin"
            write_users(args.file, users)
            print(f"{args.name!r} is now {'an admin' if args.role == 'admin' else 'a plain user'} in {args.file}")
            return 0
        if args.command == "remove":
            if users.pop(args.name, None) is None:
                raise ValueError(f"no user {args.name!r} in {args.file}")
            write_users(args.file, users)
            print(f"removed {args.name!r} from {args.file}")
            return 0
        problem = check_name(args.name)
        if problem:
            raise ValueError(problem)
        password = read_password(args.name, stdin, prompt)
        if not password:
            raise ValueError("the password is empty")
        verb = "changed the password of" if args.name in users else "added"
        admin = args.admin or users.get(args.name, {}).get("admin", False)
        users[args.name] = {"password": hash_password(password), "admin": admin}
        write_users(args.file, users)
        print(f"{verb} {args.name!r} in {args.file}")
        return 0
    except Exception as exc:  # entry-point boundary: one line for the operator, no traceback
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
