"""``simx COMMAND ...``: argv -> a command, errors -> one line on stderr and a non-zero status.

Exit status: 0 done; 1 `watch` (or `submit --watch`) saw a run fail; 2 an error (runweb
unreachable, an HTTP error such as 404 or 401, a bad file or setting); 130 interrupted.
"""
from __future__ import annotations

import argparse
import os
import sys

from .. import records
from . import commands, config, render
from .http import Client, SimxError

RUN_STATES = records.RUN_STATES


def _nonneg(text: str) -> int:
    if not (text.isascii() and text.isdigit()):
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, not {text!r}")
    return int(text)


def _positive(text: str) -> int:
    value = _nonneg(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return value


def _interval(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1
    if not 0.05 <= value <= 3600:
        raise argparse.ArgumentTypeError(f"must be a number of seconds from 0.05 to 3600, not {text!r}")
    return value


def _common() -> argparse.ArgumentParser:
    """Options every command takes, before or after its name."""
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("connection and output")
    g.add_argument("--url", default=argparse.SUPPRESS,
                   help="runweb's address (else SIMX_URL, ~/.config/simx/config.yaml, http://127.0.0.1:8097)")
    g.add_argument("--user", default=argparse.SUPPRESS, help="user name (else SIMX_USER, the config file)")
    g.add_argument("--password", default=argparse.SUPPRESS,
                   help="password (visible to other local users in ps: prefer SIMX_PASSWORD or the config file)")
    g.add_argument("--cacert", default=argparse.SUPPRESS,
                   help="CA certificate that signed runweb's (https; else SIMX_CACERT, the config file)")
    g.add_argument("--timeout", type=_interval, default=argparse.SUPPRESS, help="seconds per HTTP request (30)")
    g.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print JSON, for scripts")
    return p


def parser() -> argparse.ArgumentParser:
    common = _common()
    top = argparse.ArgumentParser(prog="simx", parents=[common], description="Batches of runs on simx, "
                                  "through runweb.", epilog=__doc__.split("\n\n")[1])
    sub = top.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name, func, text):
        p = sub.add_parser(name, parents=[common], help=text, description=text)
        p.set_defaults(func=func)
        return p

    p = command("submit", commands.submit, "start a batch from a YAML request (FILE, or - for standard input)")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", default=[],
                   help="override a field or a nested param key (a.b=VALUE; VALUE is YAML; a first key that "
                        "is not a batch field is a param key); may be repeated")
    p.add_argument("--watch", action="store_true", help="then watch it to the end")
    p.add_argument("--interval", type=_interval, default=1.0, help="seconds between polls with --watch (1)")
    p = command("ls", commands.ls, "list my batches (the user I am: --user, SIMX_USER; --all: everyone's)")
    p.add_argument("--all", action="store_true", help="every batch I may see")
    p = command("show", commands.show, "a batch: summary, counts per state, failed runs with their messages")
    p.add_argument("batch", type=_nonneg, metavar="N")
    p = command("watch", commands.watch, "follow a batch live to its end; exit 1 if a run failed")
    p.add_argument("batch", type=_nonneg, metavar="N")
    p.add_argument("--interval", type=_interval, default=1.0, help="seconds between polls (1)")
    p = command("runs", commands.runs, "the runs of a batch, all or in one state")
    p.add_argument("batch", type=_nonneg, metavar="N")
    p.add_argument("--state", choices=RUN_STATES)
    p.add_argument("--limit", type=_positive, help="at most this many runs")
    p = command("run", commands.run, "one run: its state, result, attempts and last traceback")
    p.add_argument("batch", type=_nonneg, metavar="N")
    p.add_argument("index", type=_nonneg, metavar="I")
    p = command("results", commands.results, "every result as JSON lines (or CSV)")
    p.add_argument("batch", type=_nonneg, metavar="N")
    p.add_argument("--csv", action="store_true", help="CSV: batch_index, state, error, result keys with dots")
    p.add_argument("--state", choices=("finished", "failed"), help="only finished or only failed runs")
    p = command("cancel", commands.cancel, "cancel a batch's unfinished runs, or one run")
    p.add_argument("batch", type=_nonneg, metavar="N")
    p.add_argument("index", type=_nonneg, nargs="?", metavar="I")
    p = command("workers", commands.workers, "the connected workers")
    p.add_argument("--all", action="store_true", help="also the disconnected and long gone ones")
    p = command("drain", commands.drain, "let a worker finish its run and take no more")
    p.add_argument("worker", type=_nonneg, metavar="W")
    return top


def main(argv=None, env=None, stdin=None, stdout=None, stderr=None) -> int:
    stdout, stderr = stdout or sys.stdout, stderr or sys.stderr
    args = parser().parse_args(argv)
    try:
        settings = config.load({k: getattr(args, k, None) for k in config.KEYS}, env)
        client = Client(settings, timeout=getattr(args, "timeout", 30.0),
                        warn=lambda m: print(m, file=stderr))
        ctx = commands.Context(client, render.console(stdout), stdout, stdin or sys.stdin,
                               getattr(args, "json", False))
        return args.func(ctx, args)
    except (SimxError, config.SettingsError) as exc:
        stdout.flush()
        print(f"simx: {exc}", file=stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:   # `simx results N | head`: the reader has what it wanted
        if stdout is sys.stdout:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())   # no second error at exit
        return 0
