"""The agent's configuration: one pydantic-settings tree.

Sources, highest priority first: ``EDGE_AGENT__SECTION__KEY`` environment variables, the YAML
file given with ``--config``, then the defaults below. Unknown keys are errors. Validators
never touch disk or network: :func:`preflight` does the file checks separately.
"""

from __future__ import annotations

import re
import stat
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from agent.delivery.tls import build_context
from agent.domain import COCO_LABELS
from agent.errors import ConfigError
from agent.node.redact import source_secrets
from agent.tools.models import (
    DEFAULT_MODEL_DIR,
    DEFAULT_MODEL_FILE,
    default_model_dir,
    missing_model_hint,
)
from agent.vision.geometry import polygon_problem

DEFAULT_LABELS = ["person", "bicycle", "car", "motorcycle", "bus", "truck"]
_ID = r"^[a-z0-9][a-z0-9-]{0,62}$"


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def read_secret(value: SecretStr | None, path: Path | None, field: str | None = None) -> str | None:
    """The secret from its inline value or from its ``*_file`` (read here, never in validators).

    A file that cannot be read is a :class:`ConfigError` naming ``field`` (or the file)."""
    if path is not None:
        try:
            return path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            why = f"cannot read secret file {path}: {exc.strerror}"
            raise ConfigError([(field or str(path), why)]) from exc
    return value.get_secret_value() if value is not None else None


_HOST_NAME = r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$"


class TlsConfig(Section):
    """TLS to the broker. The broker's certificate and name are always verified (TLS >= 1.2);
    ``server_name`` pins the name to check when ``mqtt.host`` is not in the certificate."""

    enabled: bool = Field(False, description="Connect with TLS.")
    ca_file: Path | None = Field(
        None, description="CA bundle that signed the broker certificate (default: the system's)."
    )
    cert_file: Path | None = Field(None, description="Client certificate for mutual TLS (PEM).")
    key_file: Path | None = Field(
        None, description="Client private key for mutual TLS (PEM; default: in cert_file)."
    )
    key_password: SecretStr | None = Field(
        None, description="Password of an encrypted key_file (prefer key_password_file)."
    )
    key_password_file: Path | None = Field(
        None, description="File holding the password of an encrypted key_file."
    )
    server_name: str | None = Field(
        None,
        pattern=_HOST_NAME,
        description="Name the broker certificate must carry, when it is not mqtt.host "
        "(e.g. the broker is reached by IP address). Also sent as SNI.",
    )

    @model_validator(mode="before")
    @classmethod
    def _no_verify_switch(cls, data: Any) -> Any:
        if isinstance(data, dict) and "verify_hostname" in data:
            raise ValueError(
                "verify_hostname was removed: the broker's name is always verified; "
                "pin the name its certificate carries with server_name"
            )
        return data

    @model_validator(mode="after")
    def _consistent(self) -> TlsConfig:
        if self.key_password is not None and self.key_password_file is not None:
            raise ValueError("give key_password or key_password_file, not both")
        if self.key_file is not None and self.cert_file is None:
            raise ValueError("key_file needs cert_file (the client certificate)")
        return self

    def read_key_password(self) -> str | None:
        """The key password (inline or from its file); ConfigError naming the field."""
        return read_secret(self.key_password, self.key_password_file, "key_password_file")


class MqttConfig(Section):
    host: str = Field("127.0.0.1", description="Commune broker host name or address.")
    port: int = Field(1883, ge=1, le=65535, description="Broker port.")
    username: str | None = Field(None, description="MQTT user name.")
    password: SecretStr | None = Field(None, description="MQTT password (prefer password_file).")
    password_file: Path | None = Field(None, description="File holding the MQTT password.")
    tls: TlsConfig = Field(default_factory=TlsConfig, description="TLS settings.")
    topic_prefix: str = Field("camnet", pattern=r"^[A-Za-z0-9_-]+$", description="Topic root.")
    keepalive_s: int = Field(30, ge=5, le=3600, description="MQTT keepalive in seconds.")
    client_id: str | None = Field(None, description="Client id; defaults to edge-<node_id>.")
    reconnect_min_s: float = Field(1.0, gt=0, description="First reconnect delay.")
    reconnect_max_s: float = Field(60.0, gt=0, description="Largest reconnect delay (jittered).")
    max_inflight: int = Field(16, ge=1, le=1000, description="Unacknowledged messages at once.")
    max_inflight_snapshots: int = Field(
        1,
        ge=1,
        le=1000,
        description="Of those, at most this many snapshots: an event waits behind at most "
        "this many JPEGs on a slow uplink.",
    )
    refused_retries: int = Field(
        5,
        ge=1,
        le=1000,
        description="A publish refused as 'not authorized' is tried this many times (with "
        "backoff) before it is dead-lettered.",
    )
    max_payload_bytes: int = Field(
        1_000_000, ge=1024, description="Larger messages are dead-lettered, never sent."
    )

    @model_validator(mode="after")
    def _one_password(self) -> MqttConfig:
        if self.password is not None and self.password_file is not None:
            raise ValueError("give password or password_file, not both")
        if self.reconnect_max_s < self.reconnect_min_s:
            raise ValueError("reconnect_max_s must be >= reconnect_min_s")
        return self


def _check_polygon(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    problem = polygon_problem(points)
    if problem:
        raise ValueError(problem)
    return points


PolygonField = Annotated[
    list[tuple[float, float]],
    AfterValidator(_check_polygon),
    Field(description="[[x, y], ...] in 0..1 of the frame width/height, at least 3 points."),
]


class ZoneConfig(Section):
    """A named area of the picture; an object is in it when its bottom centre is."""

    name: str = Field(pattern=_ID, description="Zone name, as events report it: [a-z0-9-].")
    polygon: PolygonField
    labels: list[str] = Field(
        default_factory=list, description="Labels this zone reports (empty: every label)."
    )
    inertia_s: float = Field(
        0.0, ge=0, description="Time an object must be inside before it counts as in the zone."
    )
    loitering_s: float | None = Field(
        None,
        gt=0,
        description="Present longer than this: the event gets an update naming the "
        "zone in 'loitering'.",
    )

    @field_validator("labels")
    @classmethod
    def _coco(cls, labels: list[str]) -> list[str]:
        unknown = [lab for lab in labels if lab not in COCO_LABELS]
        if unknown:
            raise ValueError(f"labels not known to COCO models: {unknown}")
        return labels


class ObjectFilterConfig(Section):
    """Per-label detection filters (areas are fractions of the frame area, ratio is w/h)."""

    min_area: float = Field(0.0, ge=0, le=1, description="Smallest box area (frame fraction).")
    max_area: float = Field(1.0, gt=0, le=1, description="Largest box area (frame fraction).")
    min_ratio: float = Field(0.0, ge=0, description="Smallest width/height.")
    max_ratio: float = Field(1000.0, gt=0, description="Largest width/height.")
    min_median_score: float = Field(
        0.0, ge=0, le=1, description="Median detection score over the track before 'new'."
    )
    masks: list[PolygonField] = Field(
        default_factory=list,
        description="Objects whose bottom centre is inside one of these polygons are ignored "
        "(a poster, a mannequin, a parked scooter).",
    )

    @model_validator(mode="after")
    def _ranges(self) -> ObjectFilterConfig:
        if self.max_area < self.min_area:
            raise ValueError("max_area must be >= min_area")
        if self.max_ratio < self.min_ratio:
            raise ValueError("max_ratio must be >= min_ratio")
        return self


class MotionConfig(Section):
    """The motion gate: the detector runs only where and when something moved."""

    enabled: bool = Field(True, description="Gate the detector on motion (false: every due frame).")
    height: int = Field(100, ge=16, le=1080, description="Rows of the small grey motion frame.")
    threshold: int = Field(25, ge=1, le=254, description="Grey-level change that counts as motion.")
    contour_area: int = Field(
        12, ge=1, description="Smallest moving blob, in pixels of the small motion frame."
    )
    background_s: float = Field(
        4.0, gt=0, description="Time constant of the running background average (seconds)."
    )
    contrast: bool = Field(True, description="Normalise contrast before comparing.")
    dilate: int = Field(2, ge=0, le=10, description="Dilation passes joining nearby blobs.")
    recalibrate_fraction: float = Field(
        0.4, gt=0, le=1,
        description="More than this fraction of the frame changed at once (a lamp, IR at dusk): "
        "relearn the background and report no motion for recalibrate_s.",
    )  # fmt: skip
    recalibrate_s: float = Field(1.0, ge=0, description="Blind time after a global light change.")
    masks: list[PolygonField] = Field(
        default_factory=list,
        description="Areas whose motion is ignored (a tree, a TV, a flickering sign): polygons "
        "of normalised [x, y] points, e.g. [[[0, 0], [0.3, 0], [0.3, 0.2]]].",
    )
    confirm_interval_s: float = Field(
        1.5, gt=0,
        description="While objects are tracked and nothing new moves, detect this often to keep "
        "them (must be below events.end_timeout_s).",
    )  # fmt: skip
    refresh_interval_s: float = Field(
        30.0, gt=0, description="Detect on the whole frame at least this often."
    )
    regions: bool = Field(
        True, description="Detect on a crop around small motion instead of the whole frame."
    )
    region_max_area: float = Field(
        0.4, gt=0, le=1, description="Crops larger than this fraction of the frame: whole frame."
    )


class CameraConfig(Section):
    """One camera. ``password_file`` keeps the camera's password out of the config file."""

    id: str = Field(pattern=_ID, description="Camera id, unique on this box: [a-z0-9-].")
    source: str = Field(
        min_length=1,
        description="rtsp:// URL, /dev/videoN, a device index, a file path or a GStreamer "
        "pipeline (containing '!').",
    )
    detect_fps: float = Field(5.0, gt=0, le=60, description="Frames per second to detect on.")
    realtime: bool = Field(True, description="Files only: false plays as fast as possible.")
    loop: bool = Field(False, description="Files only: start again at the end.")
    password_file: Path | None = Field(
        None,
        description="File holding the camera password; it replaces the password in the "
        "source URL (rtsp://user@host/... or rtsp://user:placeholder@host/...).",
    )
    open_timeout_s: float = Field(10.0, gt=0, description="Give up opening after this long.")
    read_timeout_s: float = Field(10.0, gt=0, description="No frame for this long: reopen.")
    width: int | None = Field(
        None, gt=0, description="Frame width: required for GStreamer; ffmpeg scales to it."
    )
    height: int | None = Field(
        None, gt=0, description="Frame height: required for GStreamer; ffmpeg scales to it."
    )
    motion: MotionConfig = Field(default_factory=MotionConfig, description="Motion gate.")
    decoder: Literal["opencv", "ffmpeg", "gstreamer"] = Field(
        "opencv",
        description="URL and file sources: decode in-process with OpenCV, or in an ffmpeg or "
        "gst-launch-1.0 subprocess (killed and restarted when it hangs). Pipelines "
        "(containing '!') always run in gst-launch-1.0.",
    )
    hwaccel: str | None = Field(
        None,
        pattern=r"^[a-z0-9_]+$",
        description="decoder ffmpeg: its -hwaccel method, e.g. drm or v4l2m2m (Pi), cuda "
        "(Jetson, NVIDIA), vaapi (Intel).",
    )
    ffmpeg_codec: str | None = Field(
        None,
        pattern=r"^[a-z0-9_]+$",
        description="decoder ffmpeg: the decoder to force with -c:v, e.g. h264_v4l2m2m (Pi 4), "
        "h264_nvv4l2dec (Jetson's ffmpeg build).",
    )
    gst_decoder: str = Field(
        "decodebin",
        min_length=1,
        description="decoder gstreamer with an rtsp:// source: the H.264 decoding element(s), "
        "e.g. v4l2h264dec (Pi), 'nvv4l2decoder ! nvvidconv' (Jetson), avdec_h264 (software).",
    )
    privacy_masks: list[PolygonField] = Field(
        default_factory=list,
        description="Polygons blacked out on every frame before anything sees it (detection, "
        "snapshots, anything that leaves the box).",
    )
    zones: list[ZoneConfig] = Field(default_factory=list, description="Named zones.")
    tiles: tuple[int, int] | None = Field(
        None,
        description="[cols, rows]: also detect on a grid of tiles at full resolution (small, "
        "distant objects, crowds); each tile costs one more inference per detection.",
    )
    tile_overlap: float = Field(0.2, ge=0, lt=0.9, description="Tile overlap (tile fraction).")
    required_zones: list[str] = Field(
        default_factory=list,
        description="Report only objects that entered one of these zones (a gate, a lane).",
    )
    filters: dict[str, ObjectFilterConfig] = Field(
        default_factory=dict, description="Per-label object filters."
    )

    @model_validator(mode="after")
    def _gstreamer_decoder_needs(self) -> CameraConfig:
        if self.decoder != "gstreamer" or "!" in self.source:
            return self
        if not re.match(r"^rtsps?://", self.source.strip(), re.IGNORECASE):
            raise ValueError("decoder gstreamer needs an rtsp:// source (or write a pipeline)")
        if self.width is None or self.height is None:
            raise ValueError("decoder gstreamer needs width and height")
        return self

    @field_validator("tiles")
    @classmethod
    def _tiles(cls, tiles: tuple[int, int] | None) -> tuple[int, int] | None:
        if tiles is not None and not (1 <= tiles[0] <= 8 and 1 <= tiles[1] <= 8):
            raise ValueError("tiles must be [cols, rows], each 1..8")
        return tiles

    @model_validator(mode="after")
    def _zone_names(self) -> CameraConfig:
        names = [z.name for z in self.zones]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"zone names must be unique, repeated: {dupes}")
        unknown = sorted(set(self.required_zones) - set(names))
        if unknown:
            raise ValueError(f"required_zones names zones not defined in zones: {unknown}")
        not_coco = sorted(set(self.filters) - set(COCO_LABELS))
        if not_coco:
            raise ValueError(f"filters names labels not known to COCO models: {not_coco}")
        return self

    @model_validator(mode="after")
    def _password_file_needs_url(self) -> CameraConfig:
        if self.password_file is not None and not re.match(
            r"^[a-z][a-z0-9+.-]*://[^/@]+@", self.source
        ):
            raise ValueError("password_file needs a URL source with a user: scheme://user@host/...")
        return self


Family = Literal["auto", "yolox", "picodet", "nanodet", "yolov5", "yolov8"]
GraphOptimization = Literal["disable", "basic", "extended", "all"]


class DetectorConfig(Section):
    model: Path = Field(
        DEFAULT_MODEL_DIR / DEFAULT_MODEL_FILE,  # replaced by _default_model: model_dir wins
        description="ONNX model file; default: the default model (yolox_nano_416.onnx) in "
        "model_dir, where `edge-agent models fetch` installs it.",
    )
    model_dir: Path = Field(
        default_factory=default_model_dir,
        description="Directory of the installed models: $EDGE_AGENT_MODEL_DIR, else "
        "/var/lib/edge-agent/models.",
    )
    family: Family = Field("auto", description="Model family; auto detects it from the graph.")
    threads: int = Field(2, ge=1, le=64, description="onnxruntime intra-op threads.")
    spin: bool = Field(False, description="Let onnxruntime threads spin (burns CPU).")
    providers: list[str] = Field(
        default_factory=lambda: ["CPUExecutionProvider"],
        min_length=1,
        description="onnxruntime execution providers, best first (e.g. TensorrtExecutionProvider, "
        "CUDAExecutionProvider on a Jetson); missing ones are skipped with one log line and the "
        "CPU is always the last resort.",
    )
    graph_optimization: GraphOptimization = Field(
        "all", description="onnxruntime graph optimisation level."
    )
    max_fps: float | None = Field(
        None, gt=0,
        description="Detector runs per second for the whole box, shared fairly by the cameras "
        "(None: as fast as it goes). About 6 on a Raspberry Pi 4 with YOLOX-Nano.",
    )  # fmt: skip
    labels: list[str] = Field(
        default_factory=lambda: list(DEFAULT_LABELS), min_length=1, description="Labels to report."
    )
    min_score: float = Field(0.5, gt=0, le=1, description="Default minimum score.")
    label_min_score: dict[str, float] = Field(
        default_factory=dict, description="Per-label minimum scores overriding min_score."
    )
    nms_iou: float = Field(0.45, gt=0, le=1, description="IoU above which NMS suppresses.")

    @model_validator(mode="before")
    @classmethod
    def _default_model(cls, data: Any) -> Any:
        """No ``model``: the default model file in ``model_dir``."""
        if isinstance(data, dict) and data.get("model") is None:
            model_dir = data.get("model_dir") or default_model_dir()
            return {**data, "model": Path(model_dir) / DEFAULT_MODEL_FILE}
        return data

    @model_validator(mode="after")
    def _labels_known(self) -> DetectorConfig:
        not_coco = [lab for lab in self.labels if lab not in COCO_LABELS]
        if not_coco:
            raise ValueError(f"labels not known to COCO models: {not_coco}")
        unknown = set(self.label_min_score) - set(self.labels)
        if unknown:
            raise ValueError(f"label_min_score names labels not in labels: {sorted(unknown)}")
        if any(not 0 < v <= 1 for v in self.label_min_score.values()):
            raise ValueError("label_min_score values must be in (0, 1]")
        return self


class EventsConfig(Section):
    min_hits: int = Field(3, ge=1, description="Detections a track needs before it is an event.")
    min_confirm_s: float = Field(
        0.8, ge=0, description="... and the time they must span (the same at any detect_fps)."
    )
    iou_match: float = Field(0.2, gt=0, le=1, description="IoU to match a detection to a track.")
    end_timeout_s: float = Field(
        4.0, gt=0, description="An object unseen this long has left: its event ends."
    )
    update_interval_s: float = Field(
        10.0, ge=0, description="At most one update per event in this many seconds."
    )
    min_move: float = Field(
        0.25, gt=0, description="Moving this fraction of the frame diagonal is a change."
    )
    snapshot_gain: float = Field(
        0.1, ge=0, description="A snapshot this much better (score x area) is a change."
    )
    track_low_score: float = Field(
        0.1,
        gt=0,
        le=1,
        description="The detector also returns detections down to this score; below "
        "detector.min_score they only keep existing tracks alive (a person half hidden in a "
        "crowd), they never start one.",
    )


class SnapshotsConfig(Section):
    enabled: bool = Field(True, description="Publish a JPEG per event.")
    max_width: int = Field(640, ge=64, le=4096, description="Largest JPEG width.")
    quality: int = Field(70, ge=10, le=100, description="JPEG quality.")


class OutboxConfig(Section):
    path: Path = Field(Path("/var/lib/edge-agent/outbox.db"), description="SQLite outbox file.")
    max_bytes: int = Field(256 * 1024 * 1024, ge=1024 * 1024, description="Outbox size bound.")
    synchronous: Literal["FULL", "NORMAL"] = Field(
        "FULL", description="SQLite durability: FULL survives power cuts, NORMAL writes less."
    )


class HeartbeatConfig(Section):
    interval_s: float = Field(30.0, ge=1, description="Seconds between heartbeats.")
    qos: Literal[0, 1] = Field(0, description="Heartbeat QoS.")


class ShutdownConfig(Section):
    drain_timeout_s: float = Field(
        10.0, ge=0, description="On exit, wait this long for the outbox to drain."
    )


class LoggingConfig(Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Log level.")
    json_format: bool = Field(False, description="One JSON object per log line.")


class Settings(BaseSettings):
    """The whole configuration tree."""

    model_config = SettingsConfigDict(
        env_prefix="EDGE_AGENT__",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    node_id: str = Field(pattern=_ID, description="This box's id, unique in the commune.")
    commune_id: str = Field(pattern=_ID, description="The commune (ward) id.")
    mqtt: MqttConfig = Field(default_factory=MqttConfig, description="Broker connection.")
    cameras: Annotated[list[CameraConfig], Field(min_length=1, description="Cameras.")]
    detector: DetectorConfig = Field(default_factory=DetectorConfig, description="Detector.")
    events: EventsConfig = Field(default_factory=EventsConfig, description="Tracking, events.")
    snapshots: SnapshotsConfig = Field(default_factory=SnapshotsConfig, description="JPEGs.")
    outbox: OutboxConfig = Field(default_factory=OutboxConfig, description="Durable outbox.")
    heartbeat: HeartbeatConfig = Field(default_factory=HeartbeatConfig, description="Heartbeat.")
    shutdown: ShutdownConfig = Field(default_factory=ShutdownConfig, description="Exit.")
    logging: LoggingConfig = Field(default_factory=LoggingConfig, description="Logging.")

    @field_validator("cameras")
    @classmethod
    def _unique_cameras(cls, cams: list[CameraConfig]) -> list[CameraConfig]:
        ids = [c.id for c in cams]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"camera ids must be unique, repeated: {dupes}")
        return cams

    @model_validator(mode="after")
    def _confirm_before_end(self) -> Settings:
        for cam in self.cameras:
            if cam.motion.enabled and cam.motion.confirm_interval_s >= self.events.end_timeout_s:
                raise ValueError(
                    f"camera {cam.id}: motion.confirm_interval_s must be below "
                    "events.end_timeout_s, or still objects end while still there"
                )
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,  # noqa: ARG003 - pydantic's signature
        file_secret_settings: PydanticBaseSettingsSource,  # noqa: ARG003
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [env_settings, init_settings]
        if settings_cls.model_config.get("yaml_file") is not None:
            sources.append(YamlConfigSettingsSource(settings_cls))
        return tuple(sources)


def validation_problems(exc: ValidationError, where: str = "") -> list[tuple[str, str]]:
    """One ``(field path, reason)`` per pydantic error, the paths under ``where`` if given."""
    out = []
    for err in exc.errors():
        path = ".".join([where] * bool(where) + [str(p) for p in err["loc"]]) or "(root)"
        out.append((path, err["msg"]))
    return out


def load_settings(path: Path | None, **overrides: Any) -> Settings:
    """Load and validate the configuration; raise :class:`ConfigError` naming every problem."""
    if path is not None and not path.is_file():
        raise ConfigError([(str(path), "config file not found")])

    class _FromFile(Settings):
        model_config = SettingsConfigDict(yaml_file=path)

    try:
        return _FromFile(**overrides)
    except ValidationError as exc:
        raise ConfigError(validation_problems(exc)) from exc
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1}, column {where.column + 1}" if where else ""
        reason = getattr(exc, "problem", None) or type(exc).__name__
        raise ConfigError([(str(path), f"cannot parse YAML{at}: {reason}")]) from exc
    except OSError as exc:
        raise ConfigError([(str(path), f"cannot read: {exc.strerror}")]) from exc


def preflight(settings: Settings) -> list[tuple[str, str]]:
    """Checks that need the disk: files the config names exist and are readable, and the TLS
    context builds from them (so bad TLS material is a config problem, exit 2)."""
    problems: list[tuple[str, str]] = []
    if not settings.detector.model.is_file():
        model = settings.detector.model
        problems.append(
            ("detector.model", f"model file not found: {model}; {missing_model_hint(model)}")
        )
    mqtt = settings.mqtt
    try:
        read_secret(None, mqtt.password_file, "mqtt.password_file")
        if mqtt.tls.enabled:
            build_context(mqtt.tls, "mqtt.tls")
    except ConfigError as exc:
        problems += exc.problems
    for i, cam in enumerate(settings.cameras):
        if _looks_like_file(cam.source) and not Path(cam.source).exists():
            problems.append((f"cameras.{i}.source", f"file not found: {cam.source}"))
        if cam.password_file is not None and not cam.password_file.is_file():
            problems.append((f"cameras.{i}.password_file", f"file not found: {cam.password_file}"))
    return problems


def config_warnings(settings: Settings, config_file: Path | None) -> list[tuple[str, str]]:
    """What works but should not be so: the config or a secret file readable by other local
    users, a password sent in clear text, TLS files that are not used."""
    warnings: list[tuple[str, str]] = []
    mqtt, tls = settings.mqtt, settings.mqtt.tls
    secrets: list[tuple[str, Path | None]] = [
        ("config file", config_file),
        ("mqtt.password_file", mqtt.password_file),
        ("mqtt.tls.key_file", tls.key_file if tls.key_file is not None else tls.cert_file),
        ("mqtt.tls.key_password_file", tls.key_password_file),
    ]
    secrets += [
        (f"cameras.{i}.password_file", c.password_file) for i, c in enumerate(settings.cameras)
    ]
    for field, path in secrets:
        mode = _mode(path)
        if path is not None and mode is not None and mode & 0o044:
            why = f"{path} is readable by other users (mode {mode:04o}); chmod 600 it"
            warnings.append((field, why))
    has_password = mqtt.password is not None or mqtt.password_file is not None
    if has_password and not tls.enabled:
        warnings.append(("mqtt.password", "sent in clear text: mqtt.tls.enabled is false"))
    unused = [n for n in ("ca_file", "cert_file", "key_file") if getattr(tls, n) is not None]
    if unused and not tls.enabled:
        warnings.append(("mqtt.tls", f"{', '.join(unused)} set but enabled is false: not used"))
    return warnings


def _mode(path: Path | None) -> int | None:
    try:
        return None if path is None else stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return None  # missing files are preflight's problems


def known_secrets(settings: Settings) -> list[str]:
    """Every password the config names (inline or in files), for the log filter to mask:
    the MQTT password, the TLS key password and the cameras' passwords."""
    found: list[str] = []
    tls = settings.mqtt.tls
    candidates = [
        (settings.mqtt.password, settings.mqtt.password_file),
        (tls.key_password, tls.key_password_file),
    ]
    candidates += [(None, cam.password_file) for cam in settings.cameras]
    for value, path in candidates:
        try:
            secret = read_secret(value, path)
        except ConfigError:
            continue  # reported where the file is used
        if secret:
            found.append(secret)
    for cam in settings.cameras:
        found += source_secrets(cam.source)
    return found


def _looks_like_file(source: str) -> bool:
    return not (re.match(r"^[a-z][a-z0-9+.-]*://", source) or "!" in source or source.isdigit())
