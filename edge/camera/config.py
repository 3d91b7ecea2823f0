"""Camera agent configuration: validated at load time, unknown keys are errors.

Coordinates of zones, masks and lines are pixels of the source frame (x right, y down).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
import yaml

from edge.errors import EdgeError

Point = tuple[float, float]
Polygon = Annotated[list[Point], msgspec.Meta(min_length=3)]
PositiveFloat = Annotated[float, msgspec.Meta(gt=0)]
NonNegFloat = Annotated[float, msgspec.Meta(ge=0)]
Fraction = Annotated[float, msgspec.Meta(gt=0, le=1)]
Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
ALL_DAYS: tuple[Weekday, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


class ConfigError(EdgeError, ValueError):
    """The configuration is invalid; the message names the file, the key and the problem."""

    def __init__(self, source: str, detail: str) -> None:
        super().__init__(f"{source}: {detail}")
        self.source = source
        self.detail = detail


class TimeWindow(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A daily window in local time; ``start`` after ``end`` wraps past midnight (22:00-06:00)."""

    start: Annotated[str, msgspec.Meta(pattern=r"^([01]\d|2[0-3]):[0-5]\d$")] = "00:00"
    end: Annotated[str, msgspec.Meta(pattern=r"^(([01]\d|2[0-3]):[0-5]\d|24:00)$")] = "24:00"
    days: list[Weekday] = msgspec.field(default_factory=lambda: list(ALL_DAYS))


class IntrusionSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Motion or an object in the zone during the schedule raises ``intrusion``."""

    schedule: list[TimeWindow] = msgspec.field(default_factory=lambda: [TimeWindow()])
    min_area: PositiveFloat = 150.0
    """Moving pixels (in source-frame pixels) inside the zone that count as an intrusion."""
    on_after_s: NonNegFloat = 0.6
    off_after_s: NonNegFloat = 5.0
    """Hold time: someone who stops or blends in for a moment does not split the event."""


class LoiteringSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Something tracked inside the zone for longer than ``after_s`` raises ``loitering``."""

    after_s: PositiveFloat = 20.0
    off_after_s: NonNegFloat = 5.0


class CrowdSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Zone occupancy at or above a level for ``on_after_s`` raises ``crowd``."""

    min_people: Annotated[int, msgspec.Meta(ge=1)] | None = 5
    min_occupancy: Fraction | None = None
    """Share of the zone covered by foreground; an alternative to counting people."""
    person_area: PositiveFloat = 1200.0
    """Typical foreground area of one person in source-frame pixels (for people estimates)."""
    person_height: PositiveFloat | None = None
    """Typical height of a person standing in the zone, source pixels; default estimated from ``person_area``."""
    count_method: Literal["auto", "motion"] = "auto"
    """``auto``: HOG people detector where OpenCV ships it and people are tall enough, else motion regions."""
    on_after_s: NonNegFloat = 5.0
    off_after_s: NonNegFloat = 5.0


class ZoneConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A named polygon with the analytics that apply inside it."""

    name: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_.\-]{1,64}$")]
    polygon: Polygon
    intrusion: IntrusionSettings | None = None
    loitering: LoiteringSettings | None = None
    crowd: CrowdSettings | None = None


class LineConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A tripwire from ``points[0]`` to ``points[1]``.

    ``forward`` is a crossing to the right-hand side of someone standing on the first point and
    facing the second (in image coordinates, y down); ``backward`` the opposite.
    """

    name: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_.\-]{1,64}$")]
    points: Annotated[list[Point], msgspec.Meta(min_length=2, max_length=2)]
    direction: Literal["both", "forward", "backward"] = "both"


class MotionSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Background-difference motion detection on the downscaled frame."""

    threshold: Annotated[float, msgspec.Meta(gt=0, lt=255)] = 10.0
    """Grey-level difference from the background that counts as motion (after light compensation)."""
    min_blob_area: PositiveFloat = 120.0
    """Smallest moving region reported, in source-frame pixels."""
    background_alpha: Fraction = 0.05
    """Learning rate per analysed frame where nothing moves."""
    foreground_alpha: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.002
    """Learning rate under moving regions: slow, so that someone standing still stays visible."""
    static_absorb_s: PositiveFloat = 4.0
    """A moving region that stays exactly unchanged this long becomes background (parked car, codec artifact)."""
    global_change: Fraction = 0.5
    """Share of the frame changing at once that is a scene change (light switch, cover), not motion."""


class TrackerSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Nearest-neighbour tracker of moving regions."""

    max_distance: Fraction = 0.15
    """Largest jump between two analysed frames, as a share of the frame diagonal."""
    max_missed_s: NonNegFloat = 2.5


class HealthSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Camera health thresholds; each condition must hold ``on_after_s`` to start and clear ``off_after_s`` to end."""

    warmup_s: NonNegFloat = 2.0
    dark_level: Annotated[float, msgspec.Meta(ge=0, le=255)] = 12.0
    bright_level: Annotated[float, msgspec.Meta(ge=0, le=255)] = 245.0
    uniform_contrast: NonNegFloat = 5.0
    """Grey-level standard deviation below which the picture is uniform (lens covered, sprayed)."""
    defocus_ratio: Fraction = 0.45
    """Sharpness below this share of the camera's own baseline is out of focus."""
    moved_similarity: Annotated[float, msgspec.Meta(ge=-1, le=1)] = 0.5
    """Scene correlation with the reference below which the camera has moved."""
    on_after_s: NonNegFloat = 3.0
    off_after_s: NonNegFloat = 2.0
    video_loss_after_s: PositiveFloat = 5.0


class CameraSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Analytics settings of one camera (also the ``camera`` defaults section)."""

    analysis_fps: PositiveFloat = 5.0
    analysis_height: Annotated[int, msgspec.Meta(ge=32, le=1080)] = 120
    timezone: str = "Asia/Shanghai"
    masks: list[Polygon] = []
    zones: list[ZoneConfig] = []
    lines: list[LineConfig] = []
    motion: MotionSettings = MotionSettings()
    tracker: TrackerSettings = TrackerSettings()
    health: HealthSettings = HealthSettings()
    telemetry_interval_s: PositiveFloat = 10.0
    people_interval_s: PositiveFloat = 1.0
    """Source seconds between two runs of the HOG people detector on this camera's crowd zones."""


class CameraConfig(CameraSettings, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """One camera: identity, source and analytics."""

    id: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")]
    source: str
    loop: bool = False
    realtime: bool | None = None
    """Files only: play at the video's own speed; default when looping (demos), else as fast as possible."""
    start_time: str | None = None
    """For files: the wall-clock time (RFC 3339) of the video's first frame; default: when the run starts."""


class EvidenceSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Where snapshots go and how long they stay."""

    dir: str = "var/evidence"
    base_url: str | None = None
    """If set, snapshot URLs are this base plus the path relative to ``dir``; else ``file://`` URLs."""
    retention_days: PositiveFloat = 30.0
    jpeg_quality: Annotated[int, msgspec.Meta(ge=10, le=100)] = 85


class AgentConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The whole camera agent config file."""

    mqtt: str | None = None
    workers: Annotated[int, msgspec.Meta(ge=0, le=64)] | None = None
    """Worker processes; default one per core, at most one per camera; 0 runs cameras in-process."""
    evidence: EvidenceSettings = EvidenceSettings()
    data_dir: str | None = None
    """Outbox folder (one sub-folder per camera): publish through ``EdgeLink`` (store-and-forward)."""
    camera: dict[str, Any] = {}
    """Defaults applied to every camera (any ``CameraSettings`` key)."""
    cameras: list[dict[str, Any]] = []


def _convert(raw: Any, kind: type[Any], source: str) -> Any:
    try:
        return msgspec.convert(raw, kind)
    except msgspec.ValidationError as exc:
        raise ConfigError(source, str(exc)) from None


def camera_from_dict(raw: dict[str, Any], defaults: dict[str, Any] | None = None,
                     source: str = "<memory>") -> CameraConfig:
    """Build one camera's config from its own keys over the shared defaults.

    Raises:
        ConfigError: naming the source, the key and the problem.
    """
    merged = {**(defaults or {}), **raw}
    cfg: CameraConfig = _convert(merged, CameraConfig, f"{source} (camera {raw.get('id', '?')!r})")
    _check_camera(cfg, source)
    return cfg


def _check_camera(cfg: CameraConfig, source: str) -> None:
    where = f"{source} (camera {cfg.id!r})"
    names = [z.name for z in cfg.zones]
    if len(set(names)) != len(names):
        raise ConfigError(where, "zone names must be unique")
    try:
        from zoneinfo import ZoneInfo
        ZoneInfo(cfg.timezone)
    except Exception:
        raise ConfigError(where, f"unknown timezone {cfg.timezone!r} - at `$.timezone`") from None
    if cfg.start_time is not None:
        from datetime import datetime
        try:
            parsed = datetime.fromisoformat(cfg.start_time)
        except ValueError:
            raise ConfigError(where, f"start_time {cfg.start_time!r} is not RFC 3339 - at `$.start_time`") from None
        if parsed.tzinfo is None:
            raise ConfigError(where, "start_time needs an offset - at `$.start_time`")
    for zone in cfg.zones:
        if zone.crowd is not None and zone.crowd.min_people is None and zone.crowd.min_occupancy is None:
            raise ConfigError(where, f"zone {zone.name!r}: crowd needs min_people or min_occupancy")


def load_agent_config(path: str | Path | None) -> tuple[AgentConfig, list[CameraConfig]]:
    """Load the agent config file (or defaults when ``path`` is None) and its cameras.

    Raises:
        ConfigError: the file is unreadable, not YAML, or has an invalid or unknown key.
    """
    if path is None:
        return AgentConfig(), []
    source = str(path)
    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise ConfigError(source, f"cannot read: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(source, f"not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(source, "top level must be a mapping")
    agent: AgentConfig = _convert(raw, AgentConfig, source)
    # Validate the defaults on their own so that a typo there is reported against `camera`.
    _convert(agent.camera, CameraSettings, f"{source} (section camera)")
    cameras = [camera_from_dict(c, agent.camera, source) for c in agent.cameras]
    ids = [c.id for c in cameras]
    if len(set(ids)) != len(ids):
        raise ConfigError(source, "camera ids must be unique")
    return agent, cameras
