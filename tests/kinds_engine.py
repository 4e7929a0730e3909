"""A small Python engine for tests of failure kinds (worker --engine kinds_engine:Kinds, with
tests/ on PYTHONPATH).  param ``fail``: "fatal" raises Fatal (kind run), "flaky" fails the first
attempt with a transient error, anything else succeeds at once."""
from worker.engines.base import Engine, Fatal


class Kinds(Engine):
    name = "kinds"

    def run(self, param, progress, abort, context):
        fail = param.get("fail")
        if fail == "fatal":
            raise Fatal("this input can never work")
        if fail == "flaky" and context.attempt == 1:
            raise RuntimeError("flaky: first attempt fails")
        progress(1.0)
        return {"attempt": context.attempt}
