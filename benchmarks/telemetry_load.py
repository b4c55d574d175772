"""Telemetry load for the cloud ingest benchmark, in a process of its own so that its CPU is not
the ingest worker's: one MQTT 3.1.1 session publishing realistic edge telemetry (the city's
intersection and approach ids, 4 approaches, 8 signal groups, the wire form the edge sends) at
QoS 1, paced to a fixed rate, round-robin over ``--count`` intersections with a seq that
increases per intersection. Message ``n`` is intersection ``n % count`` in round
``n // count``, so at ``rate == count`` every intersection reports once a second.

    .venv/bin/python benchmarks/telemetry_load.py --port 1883 --rate 10000 --seconds 60

The ids come from ``--network`` (the cloud refuses telemetry from intersections it does not
know), or from ``--ids``, a JSON list of ``[intersection, [approach, ...]]`` written by the
benchmark so that each run does not build the network again.

Prints one JSON object when done: messages published, acknowledged by the broker (PUBACK), the
rate reached and the process's CPU seconds. Only PUBACKed messages count as sent: the broker has
taken responsibility for them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from citybrain.models.codec import DEFAULT_CODEC
from citybrain.models.messages import ApproachState, Telemetry
from citybrain.models.signal import Indication, Interval
from citybrain.models.topics import TopicKind, intersection_topic

REGION = "city"
"""The region the load is published in (the ingest workers serve it)."""
_SEQ_MARK = 987_654_321_987
_TIME_MARK = 2_222_222_222.5
TICK_S = 0.005


def city_ids(network: str, count: int) -> list[tuple[str, list[str]]]:
    """The first ``count`` signalized intersections of a network, each with its approaches."""
    from citybrain.simulator.scenarios import load_network

    road = load_network(network)
    approaches: dict[str, list[str]] = {}
    for approach in road.network.approaches:
        approaches.setdefault(approach.intersection_id, []).append(approach.id)
    names = [n.id for n in road.network.intersections if n.id in road.plans][:count]
    if len(names) < count:
        raise SystemExit(f"{network} has only {len(names)} signalized intersections")
    return [(name, approaches[name]) for name in names]


def templates(ids: list[tuple[str, list[str]]]) -> list[tuple[str, bytes]]:
    """(topic, payload template) per intersection; the template takes (controller_time, seq).
    Built by encoding a real ``Telemetry`` with marker values, so the bytes are exactly what
    the codec writes, then checked by decoding one back."""
    out = []
    for index, (name, approaches) in enumerate(ids):
        message = Telemetry(
            intersection=name,
            controller_time=_TIME_MARK,
            seq=_SEQ_MARK,
            phase="p2-6",
            interval=Interval.GREEN,
            signals={
                str(g): Indication.GREEN if g in (2, 6) else Indication.RED for g in range(1, 9)
            },
            approaches=tuple(
                ApproachState(
                    approach=approach,
                    queue_veh=float((index * 7 + i * 3) % 23) + 0.5,
                    occupancy=((index + i) % 10) / 10,
                    flow_vph=float(600 + 40 * ((index * i) % 17)),
                )
                for i, approach in enumerate(approaches)
            ),
        )
        encoded = DEFAULT_CODEC.encode(message)
        time_at, seq_at = encoded.index(b"2222222222.5"), encoded.index(b"987654321987")
        assert time_at < seq_at, "controller_time is encoded before seq"
        template = encoded.replace(b"%", b"%%").replace(b"2222222222.5", b"%.1f")
        template = template.replace(b"987654321987", b"%d")
        out.append((intersection_topic(TopicKind.TELEMETRY, REGION, name), template))
    probe = DEFAULT_CODEC.decode(out[0][1] % (1_700_000_000.0, 42), Telemetry)
    assert probe.seq == 42
    assert len(probe.signals) == 8
    return out


async def publish(args: argparse.Namespace) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    acked = 0
    connected = asyncio.Event()

    def on_publish(client: paho.Client, userdata: object, mid: int, rc: object, p: object) -> None:
        nonlocal acked
        acked += 1

    client = paho.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=args.client_id,
        protocol=paho.MQTTv311,
    )
    client.max_inflight_messages_set(0)  # no client-side window: the broker paces us
    client.on_publish = on_publish

    def on_connect(c: paho.Client, u: object, f: object, rc: object, p: object) -> None:
        loop.call_soon(connected.set)

    # paho driven by this asyncio loop (socket readiness), not by a thread of its own
    def on_unregister_write(c: paho.Client, u: object, sock: Any) -> None:
        loop.remove_writer(sock)

    def on_close(c: paho.Client, u: object, sock: Any) -> None:
        loop.remove_reader(sock)

    client.on_connect = on_connect
    client.on_socket_open = lambda c, u, s: loop.add_reader(s, c.loop_read)
    client.on_socket_register_write = lambda c, u, s: loop.add_writer(s, c.loop_write)
    client.on_socket_unregister_write = on_unregister_write
    client.on_socket_close = on_close
    client.connect(args.host, args.port, keepalive=60)
    await asyncio.wait_for(connected.wait(), 10.0)
    if args.ids is not None:
        ids = [(name, list(approaches)) for name, approaches in json.loads(args.ids.read_text())]
    else:
        ids = city_ids(args.network, args.count)
    topics = templates(ids[: args.count])
    count, t0, seq0 = args.count, float(args.t0), args.seq0
    total = int(args.rate * args.seconds)
    sent = 0
    cpu, started = time.process_time(), time.monotonic()  # CLOCK_MONOTONIC: system-wide
    while sent < total:
        due = min(total, int((time.monotonic() - started) * args.rate))
        while sent < due:
            round_, node = divmod(sent, count)
            topic, template = topics[node]
            client.publish(topic, template % (t0 + round_, seq0 + round_), qos=1)
            sent += 1
        client.loop_misc()
        await asyncio.sleep(TICK_S)
    seconds = time.monotonic() - started
    deadline = time.monotonic() + 60.0
    while acked < sent and time.monotonic() < deadline:
        client.loop_misc()
        await asyncio.sleep(0.01)
    cpu = time.process_time() - cpu
    client.disconnect()
    return {
        "started_at": started,
        "published": sent,
        "acked": acked,
        "seconds": seconds,
        "rate": sent / seconds,
        "cpu_s": cpu,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--rate", type=float, required=True, help="messages per second")
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--count", type=int, default=10_000, help="intersections")
    parser.add_argument("--network", default="grid:100x100", help="where the ids come from")
    parser.add_argument("--ids", type=Path, default=None, help="JSON [[id, [approach...]]...]")
    parser.add_argument("--t0", type=float, default=float(int(time.time())))
    parser.add_argument("--seq0", type=int, default=1, help="seq of the first round")
    parser.add_argument("--client-id", default="telemetry-load")
    args = parser.parse_args()
    result = asyncio.run(publish(args))
    json.dump(result, sys.stdout)
    print()
    return 0 if result["acked"] == result["published"] else 1


if __name__ == "__main__":
    sys.exit(main())
