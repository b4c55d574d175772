"""How fast and in how much memory ``sumo_xml.read_net_file`` reads a big SUMO network.

Run: ``.venv/bin/python benchmarks/sumo_import.py`` (needs ``pip install eclipse-sumo``; add
``--sumolib`` to time ``sumolib.net.readNet`` on the same file, which takes minutes).

The network is a 317 x 317 grid (100,489 junctions) as ``netgenerate_grid`` builds it for our
importer: 3 lanes, a traffic light at every grid junction, feeders to dead ends; 1.5 GB of
XML. ``netgenerate`` needs ~5 minutes and 4 GB for it, so the file is kept in ``--cache`` and
built once. One line says whether the read fits the limits: timings on a shared 2-core machine
are noisy, so CPU time is printed next to the wall time.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from citybrain.simulator.sumo import netgenerate_grid
from citybrain.simulator.sumo_xml import read_net_file

SUMOLIB_READ = """
import resource, sys, time
import sumolib
started = time.perf_counter()
sumolib.net.readNet(sys.argv[1], withPrograms=True)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
print(f"{time.perf_counter() - started:.1f} {peak}")
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=317, help="grid junctions per side")
    parser.add_argument("--net", type=Path, help="read this .net.xml instead of a grid")
    cache = Path(tempfile.gettempdir()) / "citybrain-bench"
    parser.add_argument("--cache", type=Path, default=cache, help="where the grid is kept")
    parser.add_argument("--max-seconds", type=float, default=20.0)
    parser.add_argument("--max-mb", type=float, default=1500.0)
    parser.add_argument("--sumolib", action="store_true", help="also time sumolib.net.readNet")
    args = parser.parse_args()

    path = args.net or args.cache / f"grid{args.size}x{args.size}.net.xml"
    if not path.is_file():
        print(f"building {path} with netgenerate (minutes)...", flush=True)
        netgenerate_grid(path, rows=args.size, columns=args.size, timeout_s=None)

    wall, cpu = time.perf_counter(), time.process_time()
    net = read_net_file(path)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    size_mb = path.stat().st_size / 1e6
    fits = wall <= args.max_seconds and peak_mb <= args.max_mb
    print(
        f"read_net_file {path.name} ({size_mb:.0f} MB): {len(net.junctions):,} junctions, "
        f"{len(net.edges):,} edges, {len(net.connections):,} connections in {wall:.1f} s "
        f"(CPU {cpu:.1f} s), peak RSS {peak_mb:.0f} MB: "
        f"{'PASS' if fits else 'FAIL'} (limits {args.max_seconds:g} s, {args.max_mb:g} MB)"
    )
    if args.sumolib:
        done = subprocess.run(  # noqa: S603 - this interpreter and our own script
            [sys.executable, "-c", SUMOLIB_READ, str(path)],
            capture_output=True,
            text=True,
            check=True,
        )
        seconds, peak = done.stdout.split()
        print(f"sumolib.net.readNet on the same file: {seconds} s, peak RSS {peak} MB")
    return 0 if fits else 1


if __name__ == "__main__":
    sys.exit(main())
