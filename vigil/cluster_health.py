"""The health model of a cluster instance: ``vigil.health`` on the instance's NATS connection and workers.

``HealthMonitor`` reads a platform (its client's connection, its stages, its event loop, its figures);
``ClusterPlatform`` offers that view of a ``vigil.cluster.ClusterInstance``: the NATS connection as the
broker connection, the partitions' storage stages summed as one, the alerting stage while this
instance holds the lease, and the cluster's own facts in the figures (partitions and leases held,
stream lag and checkpoint age per partition, the NATS connection). ``ClusterHealthMonitor`` adds two
checks: a partition whose checkpoint is getting old, and a lease round failing. The platform's own
alerts go out as transitions on the transitions stream, to whichever instance holds alerting.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from broker.contracts import Severity
from broker.nats_transport import NatsBridge
from vigil.cluster_config import ClusterSettings
from vigil.config import VigilConfig
from vigil.health import CheckResult, HealthMonitor
from vigil.runtime import LoopMonitor


class ClusterView(Protocol):
    """What the health view reads of the instance."""

    name: str
    config: VigilConfig
    settings: ClusterSettings
    state_dir: Path
    counters: dict[str, int]

    def stats(self) -> dict[str, Any]:
        """The instance's figures (leases, partitions, workers)."""
        ...

    def partition_workers(self) -> list[Any]:
        """The partition workers running now."""
        ...

    def alerting_service(self) -> Any:
        """The alerting stage while this instance holds the lease, else None."""
        ...


class NatsHealthLink:
    """The NATS connection as the monitor's "broker client"; its publishes go through a bridge."""

    def __init__(self, instance: ClusterView, bridge: NatsBridge) -> None:
        self.instance = instance
        self.bridge = bridge

    @property
    def connected(self) -> bool:
        """Whether the NATS connection is up."""
        return self.bridge.connected

    @property
    def stalled_since(self) -> float | None:
        """Since when a partition has been waiting for a write it cannot make durable (monotonic), or None."""
        stalled = [w.stalled_since for w in self.instance.partition_workers() if w.stalled_since is not None]
        return min(stalled) if stalled else None

    @property
    def last_not_durable(self) -> str:
        """Why, for the longest-waiting partition."""
        waiting = [w for w in self.instance.partition_workers() if w.stalled_since is not None]
        return str(min(waiting, key=lambda w: w.stalled_since).last_not_durable) if waiting else ""

    def publish_nowait(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False, **_: Any) -> None:
        """The platform's own transitions go to the transitions stream (de-duplicated by id)."""
        self.bridge.publish_nowait(topic, payload, qos, retain)


class StorageSum:
    """The partitions' storage stages as one, for the monitor's outbox and InfluxDB checks."""

    def __init__(self, instance: ClusterView) -> None:
        self.instance = instance

    def stats(self) -> dict[str, float]:
        """Outbox bytes and drops summed; the longest time the backend has been unreachable."""
        out = {"outbox_pending_bytes": 0.0, "outbox_max_bytes": 0.0, "outbox_dropped": 0.0,
               "backend_unavailable_s": 0.0}
        for w in self.instance.partition_workers():
            if w.storage is None:
                continue
            st = w.storage.service.stats()
            for k in ("outbox_pending_bytes", "outbox_max_bytes", "outbox_dropped"):
                out[k] += st.get(k, 0.0)
            out["backend_unavailable_s"] = max(out["backend_unavailable_s"], st.get("backend_unavailable_s", 0.0))
        return out


class ClusterPlatform:
    """The ``vigil.health.Platform`` view of a cluster instance."""

    def __init__(self, instance: ClusterView, bridge: NatsBridge, nats: Any) -> None:
        self.instance = instance
        self.link = NatsHealthLink(instance, bridge)
        self.nats = nats
        self.monitor = LoopMonitor()
        self._storage = StorageSum(instance)

    @property
    def config(self) -> VigilConfig:
        """The instance's configuration."""
        return self.instance.config

    @property
    def mqtt(self) -> Any:
        """The NATS connection, as the monitor's broker client."""
        return self.link

    @property
    def stages(self) -> Mapping[str, Any]:
        """Storage (summed) when configured, and alerting while held (the per-partition rules are not one stage)."""
        out: dict[str, Any] = {}
        if "storage" in self.instance.config.services:
            out["storage"] = self._storage
        alerting = self.instance.alerting_service()
        if alerting is not None:
            out["alerting"] = alerting
        return out

    def stats(self, peek: bool = False) -> dict[str, Any]:
        """The instance's figures with the cluster's facts (served on /health and /metrics)."""
        stats = self.instance.stats()
        workers = stats.get("workers", {})
        partitions = {k: {"lag": w.get("lag", 0), "checkpoint_age_s": w.get("checkpoint_age_s", -1.0),
                          "seq": w.get("seq", 0), "checkpointed_seq": w.get("checkpointed_seq", 0),
                          "stored_seq": w.get("stored_seq", 0), "stalled": w.get("stalled", False)}
                      for k, w in workers.items() if k.startswith("p")}
        nc = self.nats
        cluster = {
            "nats_connected": bool(nc.is_connected), "nats_reconnects": int(nc.stats.get("reconnects", 0)),
            "nats_server": str(nc.connected_url.netloc) if nc.connected_url is not None else "",
            "partitions_held": len(partitions), "partitions_total": self.instance.settings.partitions,
            "alerting_held": "alerting" in workers, "leases": stats.get("leases", {}), "partitions": partitions,
            "counters": stats.get("counters", {}),
        }
        return {"cluster": cluster, "workers": workers, "loop": {"lag_recent_ms": self.monitor.recent_lag_ms()}}


class ClusterHealthMonitor(HealthMonitor):
    """``HealthMonitor`` with the cluster's checks: checkpoints keeping up, lease rounds succeeding."""

    def evaluate(self) -> list[CheckResult]:
        """The node's checks and the cluster's."""
        out = super().evaluate()
        platform = self.platform
        assert isinstance(platform, ClusterPlatform)
        inst = platform.instance
        limit = max(30.0, 10 * inst.settings.checkpoint_interval_s)
        ages = {f"p{w.partition}": time.monotonic() - w.checkpointed_at for w in inst.partition_workers()
                if w.checkpointed_at is not None}
        old = sorted(k for k, age in ages.items() if age > limit)
        worst = max(ages.values(), default=0.0)
        out.append(CheckResult("checkpoint", not old, Severity.MAJOR,
                               f"分区检查点滞后（{', '.join(old)}）：{worst:.0f} 秒未保存",
                               f"partition checkpoints behind ({', '.join(old)}): not saved for {worst:.0f} s", worst))
        failing = self._since("lease_rounds", inst.counters.get("round_failing", 0) > 0, time.monotonic())
        failing_s = time.monotonic() - failing
        out.append(CheckResult("leases", failing_s < 3 * inst.settings.lease_ttl_s, Severity.MAJOR,
                               f"租约续期失败 {failing_s:.0f} 秒", f"lease renewals failing for {failing_s:.0f} s",
                               failing_s))
        return out
