"""Command line of one worker process:

    python -m worker --engine NAME [--engines FILE] [--allow-any-command]
                     [--group G] [--user U] [--cost C] [--speed S] [--priority P]
                     [--host H] [--port N] [--secret-file FILE] [--tls-ca FILE] [--retry-delay-max SECONDS]
                     [--prefetch N] [--summary-interval SECONDS]
                     [--config FILE] [--log-level LEVEL]

NAME is an engine declared in conf/engines.yaml (SIMX_ENGINES or --engines names another file),
the built-in ``dummy``, or ``module:Class``; ``command`` (any program a batch names) only with
--allow-any-command.  runq's address and the worker secret file default to conf/simx.yaml, overridden by
RUNQ_HOST / RUNQ_PORT / SIMX_WORKER_SECRET_FILE.  With a CA (--tls-ca, SIMX_TLS_CA or
runq.tls.ca) the worker speaks TLS and checks runq's certificate.  Exit status: 0 after a stop
(SIGTERM/SIGINT) or a drain (SIGUSR1 or runq's RunqDrain), 2 for a
configuration error (bad flag, unknown engine, secret refused by runq).
"""
from __future__ import annotations

import argparse
import logging
import math
import os
import signal
import socket
import sys
import threading

from simx import auth, protocol
from simx import config as runq_config
from simx import catalog as engine_catalog
from simx import tls as runq_tls

from .backoff import Backoff
from .engines.base import UnknownEngine, engine_name
from .engines.named import engine_for
from .loop import WorkerLoop
from .session import MAX_PREFETCH, Traits
from .summary import SUMMARY_INTERVAL

log = logging.getLogger("worker")


def number(text: str) -> int | float:
    try:
        return int(text)
    except ValueError:
        pass
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"not a finite number: {text}")
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m worker", description="Run one simx worker connected to runq.")
    p.add_argument("--engine", required=True, help="an engine declared in the engines file, dummy, or module:Class")
    p.add_argument("--engines", default=None, metavar="FILE",
                   help="engine definitions (default SIMX_ENGINES, else conf/engines.yaml)")
    p.add_argument("--allow-any-command", action="store_true",
                   help="offer the raw 'command' engine, which runs any program a batch names")
    p.add_argument("--group", default="", help="only runs of this group (empty: any)")
    p.add_argument("--user", default="", help="only runs of this user (empty: any)")
    p.add_argument("--cost", type=number, default=1, help="lower cost is preferred (default 1)")
    p.add_argument("--speed", type=number, default=1, help="higher speed is preferred (default 1)")
    p.add_argument("--priority", type=number, default=0, help="higher priority is preferred (default 0)")
    p.add_argument("--host", default=None, help="runq host (default RUNQ_HOST or conf, 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="runq port (default RUNQ_PORT or conf, 8096)")
    p.add_argument("--secret-file", default=None,
                   help="worker secret file (default SIMX_WORKER_SECRET_FILE or conf runq.worker_secret_file)")
    p.add_argument("--token", default=None, help=argparse.SUPPRESS)  # gone: a clear error says what replaces it
    p.add_argument("--tls-ca", default=None, metavar="FILE",
                   help="verify runq's TLS certificate against this CA (default SIMX_TLS_CA or conf runq.tls.ca; "
                        "TLS is on when one is set)")
    p.add_argument("--retry-delay-max", "--retry-delay", type=float, default=None, metavar="SECONDS",
                   help="longest wait between reconnect attempts (default conf worker.retry_delay_max, 10)")
    p.add_argument("--prefetch", type=int, default=1, metavar="N",
                   help="hold up to N runs at once, starting the next as soon as one ends (default 1; "
                        "above 1 needs a runq that knows prefetch)")
    p.add_argument("--summary-interval", type=float, default=SUMMARY_INTERVAL, metavar="SECONDS",
                   help="while runs end, an INFO line counting them every SECONDS (default "
                        f"{SUMMARY_INTERVAL:.0f}; each run's own lines are at DEBUG)")
    p.add_argument("--config", "--conf", default=None, help="configuration file (default conf/simx.yaml)")
    p.add_argument("--log-level", default=None, help="DEBUG, INFO, WARNING (default SIMX_LOG_LEVEL or conf)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
    except SystemExit as exc:  # argparse has printed the usage
        return int(exc.code or 0)
    if not 1 <= args.prefetch <= MAX_PREFETCH:
        print(f"worker: --prefetch must be from 1 to {MAX_PREFETCH}, not {args.prefetch}", file=sys.stderr)
        return 2
    if not 0 < args.summary_interval < math.inf:
        print(f"worker: --summary-interval must be a positive number of seconds, not {args.summary_interval}",
              file=sys.stderr)
        return 2
    if args.token is not None:
        print("worker: --token is gone: workers now prove a secret without sending it; use --secret-file FILE "
              "(a file made by `fab runq.secrets`, see docs/SECURITY.md)", file=sys.stderr)
        return 2
    try:
        conf = runq_config.load(args.config, runq_host=args.host, runq_port=args.port,
                                runq_log_level=args.log_level, worker_retry_delay_max=args.retry_delay_max)
        # a flag names a file as the shell sees it; conf and environment resolve like every conf path
        secret_file = (args.secret_file or
                       (conf.runq.worker_secret_file and
                        runq_config.resolve_var_path(conf.runq.worker_secret_file, conf.root, conf.var)))
        secret = auth.load_secret(secret_file) if secret_file else None
        tls, server_name = runq_tls.client_context_from(conf.runq, conf.root, conf.var, ca=args.tls_ca)
    except (runq_config.ConfigError, auth.SecretError) as exc:
        print(f"worker: {exc}", file=sys.stderr)
        return 2
    level = logging.getLevelName(conf.runq.log_level.upper())
    if not isinstance(level, int):
        print(f"worker: unknown log level {conf.runq.log_level!r}", file=sys.stderr)
        return 2
    logging.basicConfig(stream=sys.stderr, level=level, format="%(asctime)s %(levelname)s [%(process)d] %(message)s")
    try:
        catalog = engine_catalog.load(*engine_catalog.locate(conf.root, args.engines or os.environ.get("SIMX_ENGINES")))
        engine = engine_for(args.engine, catalog, root=conf.root, work_root=conf.var / "work",
                            allow_any_command=args.allow_any_command)
        traits = Traits(host=socket.gethostname(), pid=os.getpid(), group=args.group, user=args.user,
                        engine=engine_name(engine, args.engine), cost=args.cost, speed=args.speed,
                        priority=args.priority)
        loop = WorkerLoop(traits, engine, (conf.runq.host, conf.runq.port), secret,
                          backoff=Backoff(cap=conf.worker.retry_delay_max), tls=tls, server_name=server_name,
                          prefetch=args.prefetch, summary_interval=args.summary_interval)
    except (UnknownEngine, engine_catalog.UnknownEngine, engine_catalog.SchemaError, protocol.ProtocolError) as exc:
        log.error("%s", exc)
        return 2
    log.info("worker process %s starting: engine %s, group %r, user %r, runq at %s:%s", traits.pid, traits.engine,
             traits.group, traits.user, conf.runq.host, conf.runq.port)
    with _signals(loop):
        return _profiled(loop.run) if os.environ.get("SIMX_WORKER_PROFILE") else loop.run()


def _profiled(run) -> int:
    """SIMX_WORKER_PROFILE=DIR: cProfile the loop thread into DIR/worker-PID.prof (bench/worker_cpu.py)."""
    import cProfile
    profile = cProfile.Profile()
    try:
        return profile.runcall(run)
    finally:
        profile.dump_stats(os.path.join(os.environ["SIMX_WORKER_PROFILE"], f"worker-{os.getpid()}.prof"))


class _signals:
    """Route TERM/INT to a stop and USR1 to a drain while the loop runs (main thread only)."""

    def __init__(self, loop: WorkerLoop):
        self.handlers = {
            signal.SIGTERM: lambda signum, frame: loop.request_stop(),
            signal.SIGINT: lambda signum, frame: loop.request_stop(),
            signal.SIGUSR1: lambda signum, frame: loop.request_drain(),
        }
        self.saved: dict = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self.saved = {sig: signal.signal(sig, handler) for sig, handler in self.handlers.items()}
        return self

    def __exit__(self, *exc):
        for sig, handler in self.saved.items():
            signal.signal(sig, handler)


if __name__ == "__main__":
    sys.exit(main())
