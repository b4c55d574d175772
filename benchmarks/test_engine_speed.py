"""Traffic engine speed: simulated seconds per wall second on a loaded city-scale grid.

Run: ``make bench`` (or ``.venv/bin/python -m pytest benchmarks/test_engine_speed.py
--benchmark-only``). Each figure is also printed as a ratio so it survives a noisy machine.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from citybrain.simulator import kernels
from citybrain.simulator.compiled import compile_network
from citybrain.simulator.demand import random_trips
from citybrain.simulator.engine import Simulation
from citybrain.simulator.networks import grid

STRIDE_S = 60.0
TARGET_IN_NETWORK = 100_000


@pytest.fixture(scope="module")
def loaded_city() -> Simulation:
    """A 100 x 100 signalized grid filled past 100,000 vehicles in the network."""
    net = compile_network(grid(100, 100))
    trips = random_trips(
        net,
        seed=11,
        duration_s=4 * 3600.0,
        vehicles_per_hour=330_000.0,
        from_boundary=False,
        max_hops=40,
    )
    sim = Simulation(net, trips)
    while sim.vehicles_in_network < TARGET_IN_NETWORK:
        sim.advance(STRIDE_S)
        if sim.now > 4 * 3600.0:
            raise RuntimeError("the grid never reached 100,000 vehicles")
    return sim


def test_city_grid_100x100_with_100k_vehicles(
    benchmark: BenchmarkFixture, loaded_city: Simulation
) -> None:
    sim = loaded_city
    benchmark.pedantic(  # type: ignore[no-untyped-call]
        sim.advance, args=(STRIDE_S,), rounds=7, iterations=1, warmup_rounds=1
    )
    stats = benchmark.stats
    assert stats is not None
    median = stats.stats.median
    factor = STRIDE_S / median
    benchmark.extra_info.update(
        {
            "vehicles_in_network": sim.vehicles_in_network,
            "intersections": len(sim.net.controller_ids),
            "real_time_factor": round(factor, 1),
            "vehicle_steps_per_s": round(sim.vehicles_in_network * STRIDE_S / median),
        }
    )
    print(f"\n100x100 grid, {sim.vehicles_in_network} vehicles: {factor:.0f}x real time")
    assert sim.vehicles_in_network >= TARGET_IN_NETWORK
    assert factor >= 100.0, f"{factor:.0f}x real time is below the 100x target"


def test_numba_against_plain_python(benchmark: BenchmarkFixture) -> None:
    """The same kernel interpreted by CPython, on a 10 x 10 grid: what Numba buys."""
    net = compile_network(grid(10, 10))
    trips = random_trips(net, seed=3, duration_s=1800.0, vehicles_per_hour=20_000.0, max_hops=30)
    compiled = Simulation(net, trips)
    compiled.advance(600.0)
    interpreted = Simulation(net, trips)
    interpreted.advance(600.0)
    started = time.perf_counter()
    interpreted.now = kernels.run_steps.py_func(30, interpreted.now, *interpreted.kernel_state())
    python_s = (time.perf_counter() - started) / 30.0
    compiled.advance(30.0)
    assert np.array_equal(compiled.state, interpreted.state)
    assert np.array_equal(compiled.arrived, interpreted.arrived, equal_nan=True)
    benchmark.pedantic(compiled.advance, args=(30.0,), rounds=5, iterations=1)  # type: ignore[no-untyped-call]
    stats = benchmark.stats
    assert stats is not None
    numba_s = stats.stats.median / 30.0
    benchmark.extra_info["speedup_over_python"] = round(python_s / numba_s, 1)
    speedup = python_s / numba_s
    print(f"\nNumba {1 / numba_s:.0f} steps/s, plain Python {1 / python_s:.1f}: x{speedup:.0f}")
