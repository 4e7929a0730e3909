"""The dummy engine: counts steps with a delay between them, as the original's did.

param ``step_count`` (default 10) and ``step_delay`` (seconds, default 1.0);
``fail`` (text) makes the run fail after its steps, while ``context.attempt``
is at most ``fail_attempts`` if that is given (tests of retries use it).
``step_count: 0`` returns at once without touching the clock (benchmarks).
"""
from __future__ import annotations

from .base import Aborted, Engine


class DummyEngine(Engine):
    name = "dummy"

    def runs_inline(self, param):
        return param.get("step_count", 10) == 0   # returns at once: no step, no clock

    def run(self, param, progress, abort, context):
        steps = int(param.get("step_count", 10))
        delay = float(param.get("step_delay", 1.0))
        if steps < 0 or delay < 0:
            raise ValueError("step_count and step_delay must not be negative")
        for i in range(1, steps + 1):
            # Event.wait doubles as the sleep, so an abort interrupts a step at once.
            if abort.wait(delay) if delay > 0 else abort.is_set():
                raise Aborted(f"aborted after {i - 1} of {steps} steps")
            progress(i / steps)
        fail = param.get("fail")
        fail_attempts = param.get("fail_attempts")
        if fail and (fail_attempts is None or context.attempt <= int(fail_attempts)):
            raise RuntimeError(str(fail))
        return f"dummy run {context.batch_index} of batch {context.batch_id}: {steps} steps"
