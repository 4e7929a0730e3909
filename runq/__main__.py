"""`python -m runq`: run the coordinator in the foreground, logs on stderr."""
from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import resource
import signal
import stat
import sys
import time
from pathlib import Path

import sqlalchemy

from simx import auth, catalog as engines
from simx import config as configuration
from simx import tls
from . import startup
from .checkpoint import Checkpointer
from .queries import Facts
from .reader import ReaderProcess
from .server import Server
from .committer import LockedTooLong
from .core.quotas import Quotas
from .store import SqlStore, StoreFault

log = logging.getLogger("runq")


def raise_open_files_limit() -> int:
    """One socket per worker: take the hard limit on open files, not the soft default (often 1024)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        return hard
    return soft


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def protect_files(url: str, var: Path) -> None:
    """The database holds every param and result: owner-only, like the run-time dir.

    Files runq creates are 0600 and directories 0700 (umask 077, set in main); an existing
    database readable by others is tightened, with a log line saying so.  An existing
    run-time dir is left as it is (other programs may share it).
    """
    paths = []
    if url.startswith("sqlite:///") and ":memory:" not in url:
        db = Path(url[len("sqlite:///"):])
        paths += [db, Path(f"{db}-wal"), Path(f"{db}-shm")]
    for path in paths:
        try:
            mode = stat.S_IMODE(path.stat().st_mode)
        except FileNotFoundError:
            continue
        want = mode & (0o700 if path.is_dir() else 0o600)
        if mode != want:
            path.chmod(want)
            log.warning("%s was mode %o (readable by others); changed to %o", path, mode, want)


def prepare_database(url: str, fresh: bool) -> str | None:
    """A SQLite file is made whole or not at all (built beside, then renamed), so a 0-byte
    file is never runq's own half-made one; an existing empty file is refused unless `fresh`.
    Returns why runq must not start, or None."""
    if not url.startswith("sqlite:///") or ":memory:" in url:
        return None
    path = Path(url[len("sqlite:///"):])
    if path.exists() and path.stat().st_size == 0:
        if not fresh:
            return (f"{path} is empty (0 bytes: a failed copy, or a truncation on a full disk?); runq will not "
                    "start a new, empty database over it.  Restore it from a backup, or start afresh with "
                    "`python -m runq --fresh` (`fab runq.reset`), which replaces it")
        path.unlink()
    if not path.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        part = path.with_name(path.name + ".new")
        for leftover in (part, Path(f"{part}-wal"), Path(f"{part}-shm")):
            leftover.unlink(missing_ok=True)
        store = SqlStore(f"sqlite:///{part}")
        store.instance()
        store.close()
        os.replace(part, path)
    return None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="runq", description="simx coordinator")
    parser.add_argument("--conf", help="configuration file (default conf/simx.yaml)")
    parser.add_argument("--port", type=int, help="port to listen on (default RUNQ_PORT or 8096)")
    parser.add_argument("--listen", help="comma-separated addresses to listen on")
    parser.add_argument("--db-url", help="SQLAlchemy URL of the state database (default SIMX_DB_URL)")
    parser.add_argument("--fresh", action="store_true",
                        help="start a new database over an empty (0-byte) one instead of refusing to")
    args = parser.parse_args(argv)
    try:
        cfg = configuration.load(args.conf, runq_port=args.port, runq_listen=args.listen, runq_db_url=args.db_url)
    except configuration.ConfigError as exc:
        print(f"runq: {exc}", file=sys.stderr)
        return 2
    try:
        secrets = auth.load_secrets(cfg.runq, lambda p: configuration.resolve_var_path(p, cfg.root, cfg.var))
        auth.check_exposure(cfg.runq.listen, secrets)
    except auth.SecretError as exc:
        print(f"runq: {exc}", file=sys.stderr)
        return 2
    try:   # the engines batches may name, checked at submit: the workers' file (SIMX_ENGINES)
        catalog = engines.load(*engines.locate(cfg.root, os.environ.get("SIMX_ENGINES")))
    except engines.SchemaError as exc:
        print(f"runq: {exc}", file=sys.stderr)
        return 2
    files_dir = configuration.resolve_var_path(cfg.runq.files_dir, cfg.root, cfg.var)
    logging.basicConfig(level=cfg.runq.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)  # dataset's schema checks are chatty
    os.umask(0o077)   # database, logs and run-time files: owner only
    open_files = raise_open_files_limit()
    try:
        tls_context = tls.server_context_from(cfg.runq, cfg.root, cfg.var)
    except configuration.ConfigError as exc:
        print(f"runq: {exc}", file=sys.stderr)
        return 2
    cfg.var.mkdir(mode=0o700, parents=True, exist_ok=True)
    url = configuration.resolve_db_url(cfg.runq.db_url, cfg.root, cfg.var)
    protect_files(url, cfg.var)
    refused = prepare_database(url, args.fresh)
    if refused is not None:
        print(f"runq: {refused}", file=sys.stderr)
        return 2
    try:
        store = SqlStore(url, cfg.runq.synchronous)
    except sqlalchemy.exc.OperationalError as exc:   # locked by another process, unreadable, gone
        print(f"runq: cannot open the database {url}: {StoreFault.of(exc).describe()}", file=sys.stderr)
        return 75
    except sqlalchemy.exc.DatabaseError as exc:   # not a database, or a corrupt one
        print(f"runq: {url} is not a usable database ({getattr(exc, 'orig', exc)}); move it aside to start "
              "a new one, or restore it from a backup", file=sys.stderr)
        return 2
    quotas = Quotas(cfg.quotas.active_batches, cfg.quotas.waiting_runs,
                    {user: dict(limits) for user, limits in cfg.quotas.users})
    coordinator = startup.coordinator(store, cfg.runq, cfg.batch, now=time.time(), secrets=secrets, sched=cfg.sched,
                                      catalog=catalog, files_dir=files_dir, quotas=quotas)
    try:
        server = Server(coordinator, store, [(h, cfg.runq.port) for h in cfg.runq.listen],
                        limits=cfg.runq.limits, tls=tls_context, heartbeat_interval=cfg.runq.heartbeat_interval,
                        reader=ReaderProcess(store.engine.url, Facts(coordinator.presence), cfg.runq.log_level,
                                             files_dir=files_dir), lock_limit=cfg.runq.lock_limit)
    except OSError as exc:
        print(f"runq: cannot listen on port {cfg.runq.port}: {exc}", file=sys.stderr)
        return 1
    checkpointer = Checkpointer.start_for(store)   # WAL checkpoints off the loop
    log.info("database %s (instance %s); up to %d open files; %d worker secret(s), client secret %s",
             url, coordinator.instance, open_files, len(secrets.workers), "set" if secrets.client else "not set")
    missing = [role for role, have in (("client", secrets.client), ("worker", secrets.workers)) if not have]
    if missing:
        log.warning("runq has no %s secret: any account on this host can connect as a %s (read every batch, "
                    "cancel, drain, take runs); `fab runq.secrets` makes them (docs/SECURITY.md)",
                    " or ".join(missing), " or ".join(missing))
    exposed = [h for h in cfg.runq.listen if not is_loopback(h)]
    if exposed and tls_context is None:
        log.warning("listening on %s without TLS: params, results and handshakes cross the network in "
                    "clear; set runq.tls.cert and runq.tls.key", ", ".join(exposed))

    def stop(signum, frame):
        server.stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        server.serve()
    except LockedTooLong as exc:
        log.error("%s", exc)
        return 75
    except Exception:  # crash-only: a bug in the core must not commit half a turn
        log.exception("runq: unexpected error; exiting without committing this turn "
                      "(restarting resumes from the last commit)")
        return 70
    if checkpointer is not None:
        checkpointer.close()
    store.close()
    log.info("runq stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
