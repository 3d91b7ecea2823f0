"""Platform CPU per message on the ingest -> storage path, without sockets or rules.

The bench fleet's elevator telemetry (bench/loadgen.py payloads, 2,000 devices) goes as MQTT
``Message`` batches of 100 through ``DeviceIngest.on_batch`` (topic checks, decode, registry
check) into ``StorageService.on_device_messages`` (line protocol, outbox append with fsync
"interval"): what the platform does per telemetry message apart from reading the socket and the
rules. CPU time of this process, best of ``--repeat``. Prints figures; asserts nothing.

Run: .venv/bin/python bench/bench_ingest_path.py [--rounds 5] [--repeat 5]
(to compare with an older tree, run the same file from inside that tree's folder).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import yaml

from bench.loadgen import templates
from broker.ingest import DeviceIngest, RegisteredDevices
from broker.mqtt import Message, MqttClient
from broker.registry import DeviceRegistry
from storage.config import StorageConfig
from storage.service import StorageService


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=5, help="passes over the 4 x devices messages per measurement")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    tmpl = templates("el0-", args.devices, 4, 10.0)
    messages = []
    for k in range(4):
        ts = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ").encode()
        for i in range(args.devices):
            messages.append(Message(f"vigil/v1/elevator/el0-{i + 1:05d}/telemetry", tmpl[i][k] % (ts, k + 1), 1, False,
                                    time.time()))
    batches = [messages[i:i + 100] for i in range(0, len(messages), 100)]
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        (tmp / "registry.yaml").write_text(yaml.safe_dump(
            {"devices": [{"id": f"el0-{i + 1:05d}", "kind": "elevator"} for i in range(args.devices)]}))
        registry = DeviceRegistry.load(tmp / "registry.yaml")
        mqtt = MqttClient("mqtt://127.0.0.1:1", "bench-ingest-path")  # never connected: handlers only
        ingest = DeviceIngest(mqtt, "bench", known_device=RegisteredDevices(tmp / "registry.yaml", registry.devices))
        service = StorageService(StorageConfig(backend="influxdb-v1"), mqtt=mqtt, ingest=ingest, registry=registry,
                                 state_dir=tmp / "state")
        service.attach()

        def one_pass() -> None:
            for batch in batches:
                ingest.on_batch(batch)

        one_pass()  # warm the caches (topics, tag prefixes, metric names)
        samples = []
        for _ in range(args.repeat):
            t = time.process_time()
            for _ in range(args.rounds):
                one_pass()
            samples.append((time.process_time() - t) / (args.rounds * len(messages)) * 1e6)
        service.close()
    print(f"ingest + storage handlers: {min(samples):.2f} µs of CPU per telemetry message (best of {args.repeat}; "
          f"median {sorted(samples)[len(samples) // 2]:.2f}); accepted {ingest.accepted:,}; "
          f"load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
