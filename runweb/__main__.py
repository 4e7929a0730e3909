"""``python -m runweb [--port P] [--bind ADDR] [--workers N] [--foreground-port]``: exec gunicorn.

Port: --port, else runweb.run_port (4567) with --foreground-port, else
RUNWEB_PORT / runweb.port (8097).  Bind address and worker count: the flag,
else RUNWEB_BIND / conf.  The access log goes to stdout.

Worker class, threads and timeouts come from conf (runweb.worker_class,
threads, timeout, keepalive): see WORKER_CLASSES for why gthread.
"""
from __future__ import annotations

import argparse
import os
import sys

from simx import config as simx_config
from simx import tls as runq_tls

from . import request_metrics

APP = "runweb.app:get_app()"
# conf name -> gunicorn worker class.  Measured against a slowloris (bench/slowloris.py,
# docs/ARCHITECTURE.md "runweb: users, bounds and slow clients"): sync stalls everyone while
# two sockets hang; runweb's own gthread class bounds how long a silent socket holds a thread.
WORKER_CLASSES = {
    "gthread": "runweb.gunicorn_worker.ThreadWorker",
    "sync": "sync",
    "stock-gthread": "gthread",  # gunicorn's own, for comparison in bench/slowloris.py
    "gevent": "gevent",          # for comparison; needs `pip install gevent`, not a dependency
}


def _port(text: str) -> int:
    port = int(text)
    if not 0 < port < 65536:
        raise argparse.ArgumentTypeError(f"port must be 1-65535, not {port}")
    return port


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m runweb", description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=_port, help="port to listen on (default: RUNWEB_PORT or runweb.port)")
    parser.add_argument("--bind", help="address to listen on (default: RUNWEB_BIND or runweb.bind)")
    parser.add_argument("--workers", type=_positive, help="gunicorn worker processes (default: runweb.workers)")
    parser.add_argument("--foreground-port", action="store_true",
                        help="listen on runweb.run_port (4567, sinatra's old default) unless --port is given")
    return parser.parse_args(argv)


def listen_port(args: argparse.Namespace, cfg: simx_config.Config) -> int:
    return args.port or (cfg.runweb.run_port if args.foreground_port else cfg.runweb.port)


def tls_argv(cfg: simx_config.Config) -> list[str]:
    """gunicorn's --certfile/--keyfile from runweb.tls (HTTPS when both are set)."""
    tls = cfg.runweb.tls
    if bool(tls.cert) != bool(tls.key):
        raise simx_config.ConfigError("configuration runweb.tls: set both cert and key (or neither)")
    if not tls.cert:
        return []
    files = [runq_tls.resolve(tls.cert, cfg.root, cfg.var), runq_tls.resolve(tls.key, cfg.root, cfg.var)]
    for path in files:
        if not path.is_file():
            raise simx_config.ConfigError(f"configuration runweb.tls: no file {path}")
    return ["--certfile", str(files[0]), "--keyfile", str(files[1])]


def gunicorn_argv(args: argparse.Namespace, cfg: simx_config.Config) -> list[str]:
    port = listen_port(args, cfg)
    bind = cfg.runweb.bind
    host = f"[{bind}]" if ":" in bind and not bind.startswith("[") else bind  # IPv6
    return [
        sys.executable, "-m", "gunicorn",
        "--chdir", str(cfg.root),  # so runweb imports from any directory
        "-w", str(cfg.runweb.workers),
        *worker_flags(cfg.runweb),
        "-b", f"{host}:{port}",
        "--access-logfile", "-",
        "--graceful-timeout", "5",
        "--no-control-socket",  # gunicorn 27's default ~/.gunicorn/gunicorn.ctl would be shared by every runweb
        "-c", "python:runweb.gunicorn_hooks",  # request metrics: a dead worker's, the directory at exit
        *tls_argv(cfg),
        APP,
    ]


def worker_flags(web: simx_config.RunwebConfig) -> list[str]:
    """gunicorn flags for the worker class, threads and timeouts, from conf."""
    if web.worker_class not in WORKER_CLASSES:
        raise simx_config.ConfigError(f"configuration runweb.worker_class: {web.worker_class!r} is not one of "
                                      f"{', '.join(WORKER_CLASSES)}")
    flags = ["-k", WORKER_CLASSES[web.worker_class], "--timeout", str(web.timeout),
             "--keep-alive", str(web.keepalive)]
    if "gthread" in web.worker_class:
        flags += ["--threads", str(web.threads)]
    return flags


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        cfg = simx_config.load(runweb_bind=args.bind, runweb_workers=args.workers)
        command = gunicorn_argv(args, cfg)
    except simx_config.ConfigError as exc:
        print(f"runweb: {exc}", file=sys.stderr)
        return 2
    # request latency summed over gunicorn's workers: one fresh directory per instance, on memory
    metrics_dir = request_metrics.setup(cfg.var, listen_port(args, cfg))
    if metrics_dir is None:
        os.environ.pop(request_metrics.ENV, None)
    else:
        os.environ[request_metrics.ENV] = str(metrics_dir)
    sys.stdout.flush()
    os.execv(command[0], command)
    return 0  # not reached: gunicorn replaced this process


if __name__ == "__main__":
    sys.exit(main())
