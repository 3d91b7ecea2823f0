"""The ``cluster:`` section of ``vigil.yaml``: run the stages as one of N instances on a NATS JetStream cluster."""

from __future__ import annotations

from typing import Annotated

import msgspec


class ClusterSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Where the NATS cluster is and how this instance shares partitions with the others (docs/cluster.md)."""

    servers: list[str]
    """NATS client URLs of the cluster's nodes (``nats://host:4222``); any reachable one will do."""
    partitions: Annotated[int, msgspec.Meta(ge=1, le=1024)] = 12
    """Partitions of the device stream; must equal the servers' subject mapping (``partition(n, ...)``)."""
    replicas: Annotated[int, msgspec.Meta(ge=1, le=5)] = 3
    """JetStream replicas of every stream and bucket (3: a node can fail without loss)."""
    lease_ttl_s: Annotated[float, msgspec.Meta(ge=1.0, le=600.0)] = 10.0
    """A partition whose owner stopped renewing its lease for this long is taken over by another instance."""
    checkpoint_interval_s: Annotated[float, msgspec.Meta(gt=0.0, le=600.0)] = 2.0
    """How often each owned partition's rule state and stream position are saved (bounds the replay)."""
    fetch_batch: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 500
    """Messages fetched from a partition stream per request."""
    stream_max_age_s: Annotated[float, msgspec.Meta(ge=60.0)] = 86_400.0
    """How long the streams keep messages (the replay horizon after an outage of every instance)."""
    duplicate_window_s: Annotated[float, msgspec.Meta(ge=10.0)] = 600.0
    """JetStream drops a transition whose id it stored within this window (replays after a takeover)."""
    alerting: bool = True
    """Whether this instance may hold the alerting lease (one instance runs alerting at a time)."""


def check_cluster(settings: ClusterSettings, services: list[str]) -> list[str]:
    """Problems with a cluster section (empty when valid), each naming the key."""
    problems = []
    if not settings.servers:
        problems.append("cluster.servers: give at least one nats:// URL")
    for url in settings.servers:
        if not url.startswith(("nats://", "tls://")):
            problems.append(f"cluster.servers: {url!r} is not a nats:// or tls:// URL")
    unsupported = sorted(set(services) - {"rules", "alerting", "storage"})
    if unsupported:
        problems.append(f"services: {unsupported} cannot run in cluster mode yet (rules, storage and alerting only; "
                        "see docs/cluster.md)")
    if "storage" in services and "rules" not in services:
        problems.append("services: in cluster mode storage runs beside rules on each partition; add rules")
    if settings.replicas not in (1, 3, 5):
        problems.append("cluster.replicas: use 1, 3 or 5")
    return problems
