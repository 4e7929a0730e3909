"""Monte Carlo calibration of a signalised approach: which arrival rate explains an observed delay?

One run simulates ``replications`` independent days of ``n_cycles`` signal cycles (``cycle``
seconds, ``green`` of them green, discharging at ``saturation_flow`` veh/h) with Poisson arrivals
at ``arrival_rate`` veh/h, second by second, and returns the mean delay per vehicle with its
standard error and the squared error against ``target_delay``.  A batch sweeps ``arrival_rate``
(examples/montecarlo/batch-sweep.yaml); the run with the smallest ``loss`` is the calibrated rate.

A demand at or above the approach's capacity (saturation_flow * green / cycle) never reaches a
steady delay, whatever the seed: that run fails with ``Fatal`` (no retry).
"""
from __future__ import annotations

import math
import random

from worker.engines.base import Aborted, Engine, Fatal


def poisson(rng: random.Random, mean: float) -> int:
    """Knuth's method; the means here are well below 1 arrival per second."""
    limit, k, p = math.exp(-mean), 0, rng.random()
    while p > limit:
        k += 1
        p *= rng.random()
    return k


def replicate(rng: random.Random, arrival_rate: float, cycle: float, green: float, saturation_flow: float,
              n_cycles: int) -> tuple[float, int]:
    """(vehicle-seconds of delay, vehicles arrived) over one simulated day."""
    lam, mu = arrival_rate / 3600.0, saturation_flow / 3600.0
    queue, served_credit, delay, arrived = 0, 0.0, 0.0, 0
    seconds = int(round(cycle))
    green_s = int(round(green))
    for _ in range(n_cycles):
        for second in range(seconds):
            new = poisson(rng, lam)
            queue += new
            arrived += new
            if second < green_s:
                served_credit = min(served_credit + mu, float(queue))
                leaving = int(served_credit)
                queue -= leaving
                served_credit -= leaving
            else:
                served_credit = 0.0
            delay += queue
    return delay, arrived


def calibrate(param: dict, progress=None, abort=None) -> dict:
    """The run's result, computed from its (schema-checked) param."""
    cycle, green, s = param["cycle"], param["green"], param["saturation_flow"]
    rate = param["arrival_rate"]
    if green >= cycle:
        raise Fatal(f"green {green} s must be shorter than the cycle {cycle} s")
    capacity = s * green / cycle
    if rate >= capacity:
        raise Fatal(f"arrival_rate {rate} veh/h is at or above the capacity {capacity:.1f} veh/h: no steady delay")
    n = param["replications"]
    means = []
    for rep in range(n):
        if abort is not None and abort.is_set():
            raise Aborted(f"aborted after {rep} of {n} replications")
        rng = random.Random(param["seed"] * 1_000_003 + rep)
        delay, arrived = replicate(rng, rate, cycle, green, s, param["n_cycles"])
        means.append(delay / arrived if arrived else 0.0)
        if progress is not None:
            progress((rep + 1) / n, f"replication {rep + 1} of {n}")
    mean = sum(means) / n
    var = sum((m - mean) ** 2 for m in means) / (n - 1) if n > 1 else 0.0
    return {"arrival_rate": rate, "mean_delay": mean, "stderr": math.sqrt(var / n),
            "target_delay": param["target_delay"], "loss": (mean - param["target_delay"]) ** 2,
            "replications": n, "capacity": capacity}


class Calibration(Engine):
    name = "calibration"

    def run(self, param, progress, abort, context):
        return calibrate(param, progress, abort)
