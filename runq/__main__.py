"""`python -m runq`: run the coordinator in the foreground, logs on stderr."""
from __future__ import annotations

import argparse
import logging
import os
import resource
import signal
import sys
import time

from . import auth, engines
from . import config as configuration
from .coordinator import Coordinator
from .server import Server
from .store import Store


def raise_open_files_limit() -> int:
    """One socket per worker: take the hard limit on open files, not the soft default (often 1024)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        return hard
    return soft


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="runq", description="simx coordinator")
    parser.add_argument("--conf", help="configuration file (default conf/simx.yaml)")
    parser.add_argument("--port", type=int, help="port to listen on (default RUNQ_PORT or 8096)")
    parser.add_argument("--listen", help="comma-separated addresses to listen on")
    parser.add_argument("--db-url", help="SQLAlchemy URL of the state database (default SIMX_DB_URL)")
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
    open_files = raise_open_files_limit()
    url = configuration.resolve_db_url(cfg.runq.db_url, cfg.root, cfg.var)
    store = Store(url)
    coordinator = Coordinator(store, cfg.runq, cfg.batch, now=time.time(), secrets=secrets, catalog=catalog,
                              files_dir=files_dir)
    try:
        server = Server(coordinator, store, [(h, cfg.runq.port) for h in cfg.runq.listen])
    except OSError as exc:
        print(f"runq: cannot listen on port {cfg.runq.port}: {exc}", file=sys.stderr)
        return 1
    logging.getLogger("runq").info("database %s (instance %s); up to %d open files; %d worker secret(s), "
                                   "client secret %s", url, coordinator.instance, open_files,
                                   len(secrets.workers), "set" if secrets.client else "not set")

    def stop(signum, frame):
        server.stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    server.serve()
    store.close()
    logging.getLogger("runq").info("runq stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
