"""runq with SQLite's `PRAGMA synchronous` set to the level named on the command line (FULL, EXTRA).

runq opens SQLite with synchronous=NORMAL and has no setting for it (issue 10 asks for one);
until it does, the benches measure FULL by running runq's own entry point with only that
pragma changed.  Nothing else differs from `python -m runq`.

    python bench/runq_full.py FULL [runq flags...]
"""
from __future__ import annotations

import sys

sys.path.insert(0, __file__.rsplit("/bench/", 1)[0])

import dataset  # noqa: E402


def main() -> int:
    level = sys.argv[1].upper()
    if level not in ("OFF", "NORMAL", "FULL", "EXTRA"):
        print(f"runq_full: synchronous level must be OFF, NORMAL, FULL or EXTRA, not {level!r}", file=sys.stderr)
        return 2
    connect = dataset.connect

    def connect_with(url, **kw):
        before = list(kw.get("on_connect_statements") or [])
        after = [s.replace("synchronous=NORMAL", f"synchronous={level}") for s in before]
        if url.startswith("sqlite") and after == before:
            # runq no longer sets the pragma this way: measuring "FULL" would silently measure NORMAL
            print("runq_full: runq's Store no longer passes 'PRAGMA synchronous=NORMAL' to dataset.connect; "
                  "use runq's own synchronous setting instead of bench/runq_full.py", file=sys.stderr)
            sys.exit(2)
        kw["on_connect_statements"] = after
        return connect(url, **kw)

    dataset.connect = connect_with
    from runq.__main__ import main as runq_main
    return runq_main(sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
