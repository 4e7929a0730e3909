#!/usr/bin/env python3
"""An aurora-shaped traffic simulator: Daganzo's cell-transmission model of a freeway.

    ctm.py --mode simulation --b-time 0 --duration 100 --control false --qcontrol false
           --events false --scenario 123 [--out DIR]

``scenario`` is a built-in id or an inline YAML/XML document (see scenario.py).  ``mode``:
``simulation`` starts from an empty freeway at b_time, ``prediction`` from the free-flow state of
the demand at b_time.  ``control`` meters the on-ramps (ALINEA), ``qcontrol`` lets a ramp whose
queue passes max_queue flush its excess, ``events`` applies the scenario's incidents.

Prints ``progress F message`` lines; the result (total delay in vehicle-hours, throughput in veh/h,
mean speed in km/h, ...) goes to DIR/result.json with DIR/cells.csv (density of each cell over
time), or, without --out, to a stdout line ``result <json>``.  Exit status 3: bad input.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``scenario`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from scenario import ScenarioError, load  # type: ignore
else:
    from .scenario import ScenarioError, load

MAX_WORK = 20_000_000  # cells x steps
ALINEA_GAIN = 70.0  # veh/h per veh/km of density error
MIN_RATE = 240.0  # veh/h: a metered ramp still lets some through
MAX_ROWS = 500


def flow_at(profile, t: float) -> float:
    value = profile[0][1]
    for start, flow in profile:
        if start <= t:
            value = flow
    return value


def simulate(scenario: dict, mode: str = "simulation", b_time: float = 0.0, duration: float = 100.0,
             control: bool = False, qcontrol: bool = False, events: bool = False, progress=None):
    """(result, rows): rows are [time, density of each cell (veh/km)] samples."""
    cells = scenario["cells"]
    n, dt = len(cells), scenario["dt"]
    h = dt / 3600.0
    steps = max(1, math.ceil(duration / dt))
    if steps * n > MAX_WORK:
        raise ScenarioError(f"{steps} steps of {n} cells is more than {MAX_WORK} cell-steps")
    cap = [c["qmax"] * c["lanes"] for c in cells]
    jam = [c["kjam"] * c["lanes"] for c in cells]  # veh/km
    split = [0.0] * n
    for r in scenario["offramps"]:
        split[r["cell"]] = r["split"]
    ramps = {r["cell"]: dict(r, queue=0.0, rate=r["capacity"]) for r in scenario["onramps"]}
    density = [0.0] * n  # veh/km, all lanes
    if mode == "prediction":
        d = flow_at(scenario["demand"], b_time)
        for i, c in enumerate(cells):
            density[i] = min(d, cap[i]) / c["vf"]
    source_queue = 0.0
    vht = vmt = delay = out_main = out_ramps = 0.0
    rows, every = [], max(1, steps // MAX_ROWS)
    for step in range(steps):
        t = b_time + step * dt
        q = list(cap)
        if events:
            for e in scenario["events"]:
                if e["start"] <= t < e["end"]:
                    q[e["cell"]] = cap[e["cell"]] * e["capacity_factor"]
        send = [min(c["vf"] * density[i], q[i]) for i, c in enumerate(cells)]
        recv = [min(q[i], c["w"] * (jam[i] - density[i])) for i, c in enumerate(cells)]
        # Upstream boundary: a vertical queue in front of cell 0.
        source_queue += flow_at(scenario["demand"], t) * h
        inflow = [0.0] * n  # veh/h into each cell from upstream (mainline + ramp)
        outflow = [0.0] * n  # veh/h leaving each cell (mainline + off-ramp)
        first = min(source_queue / h, recv[0])
        inflow[0] = first
        source_queue -= first * h
        for i in range(n):
            if i == n - 1:
                outflow[i] = send[i]
                out_main += send[i] * (1 - split[i]) * h
                out_ramps += send[i] * split[i] * h
                continue
            room = recv[i + 1]
            ramp = ramps.get(i + 1)
            ramp_demand = 0.0
            if ramp is not None:
                ramp["queue"] += flow_at(ramp["demand"], t) * h
                rate = ramp["capacity"]
                if control:  # ALINEA on the density of the cell the ramp feeds
                    critical = cap[i + 1] / cells[i + 1]["vf"]
                    error = 0.9 * critical - density[i + 1]
                    rate = min(ramp["capacity"], max(MIN_RATE, ramp["rate"] + ALINEA_GAIN * error))
                    ramp["rate"] = rate
                if qcontrol and ramp["queue"] > ramp["max_queue"]:
                    rate = max(rate, min(ramp["capacity"], (ramp["queue"] - ramp["max_queue"]) / h))
                ramp_demand = min(ramp["queue"] / h, rate)
            main_demand = send[i] * (1 - split[i])
            if main_demand + ramp_demand <= room:
                main, merged = main_demand, ramp_demand
            else:  # Daganzo's merge: shares by capacity, what one side leaves goes to the other
                p = q[i] / (q[i] + (ramp["capacity"] if ramp else 0.0))
                main = min(main_demand, max(p * room, room - ramp_demand))
                merged = min(ramp_demand, room - main)
            total_out = main / (1 - split[i]) if split[i] < 1 else 0.0
            outflow[i] = total_out
            out_ramps += (total_out - main) * h
            inflow[i + 1] = main + merged
            if ramp is not None:
                ramp["queue"] -= merged * h
        for i, c in enumerate(cells):
            vehicles = density[i] * c["length"]
            vht += vehicles * h
            vmt += outflow[i] * h * c["length"]
            delay += vehicles * h - outflow[i] * h * c["length"] / c["vf"]
            density[i] = max(0.0, density[i] + (inflow[i] - outflow[i]) * h / c["length"])
        queued = source_queue + sum(r["queue"] for r in ramps.values())
        delay += queued * h
        if step % every == 0 or step == steps - 1:
            rows.append([round(t + dt, 6)] + [round(k, 6) for k in density])
        if progress is not None and (step + 1) % max(1, steps // 20) == 0:
            progress((step + 1) / steps, f"t={t + dt:g}s")
    result = {
        "scenario": scenario["name"], "mode": mode, "steps": steps, "dt": dt,
        "total_delay": round(delay, 6) + 0.0, "vht": round(vht, 6), "vmt": round(vmt, 6),
        "throughput": round(out_main / (steps * h), 6), "vehicles_out": round(out_main, 6),
        "offramp_out": round(out_ramps, 6), "mean_speed": round(vmt / vht, 6) if vht > 0 else None,
        "queued_at_end": round(source_queue + sum(r["queue"] for r in ramps.values()), 6),
    }
    return result, rows


def boolean(text: str) -> bool:
    if text.lower() in ("true", "1", "yes"):
        return True
    if text.lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"not a boolean: {text!r}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="ctm.py", description=__doc__.splitlines()[1])
    p.add_argument("--mode", choices=("simulation", "prediction"), default="simulation")
    p.add_argument("--b-time", type=float, default=0.0)
    p.add_argument("--duration", type=float, required=True)
    p.add_argument("--control", type=boolean, default=False)
    p.add_argument("--qcontrol", type=boolean, default=False)
    p.add_argument("--events", type=boolean, default=False)
    p.add_argument("--scenario", required=True)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    try:
        if not (math.isfinite(args.duration) and 0 < args.duration and math.isfinite(args.b_time)):
            raise ScenarioError("duration must be positive and b_time finite")
        scenario = load(args.scenario)
        result, rows = simulate(scenario, args.mode, args.b_time, args.duration, args.control, args.qcontrol,
                                args.events, progress=lambda f, m: print(f"progress {f:.4f} {m}", flush=True))
    except ScenarioError as exc:
        print(f"ctm.py: {exc}", file=sys.stderr)
        return 3
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        with open(out / "cells.csv", "w") as f:
            f.write("time," + ",".join(f"cell{i}" for i in range(len(scenario["cells"]))) + "\n")
            f.writelines(",".join(map(str, row)) + "\n" for row in rows)
        (out / "result.json").write_text(json.dumps(result))
    else:
        print("result " + json.dumps(result))
    print(f"{scenario['name']}: total delay {result['total_delay']:.3f} veh-h, "
          f"throughput {result['throughput']:.1f} veh/h")
    return 0


if __name__ == "__main__":
    sys.exit(main())
