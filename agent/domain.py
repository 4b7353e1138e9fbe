"""Frozen, typed domain objects shared by the pipeline stages.

Every object validates itself on construction, so a malformed value fails where it is made,
not three threads later in the publisher.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

BoxPx = tuple[float, float, float, float]
"""A box in pixels, ``(x1, y1, x2, y2)``."""

COCO_LABELS: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant",
    "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Frame:
    """One decoded picture from a camera.

    ``ts`` is media time for files and monotonic capture time for live sources: the pipeline
    advances on it. ``wall_ts`` is the epoch time at capture, used only for event timestamps.
    """

    camera_id: str
    index: int
    ts: float
    wall_ts: float
    image: npt.NDArray[np.uint8] = field(repr=False)

    def __post_init__(self) -> None:
        if self.image.ndim != 3 or self.image.shape[2] != 3 or self.image.dtype != np.uint8:
            raise ValueError(f"Frame.image must be HxWx3 uint8 BGR, got {self.image.shape}")
        if self.index < 0:
            raise ValueError("Frame.index must be >= 0")

    @property
    def width(self) -> int:
        return int(self.image.shape[1])

    @property
    def height(self) -> int:
        return int(self.image.shape[0])


@dataclass(frozen=True, slots=True)
class Detections:
    """Detections of one frame, one numpy array per field (like supervision's ``Detections``).

    ``xyxy`` is float32 ``[N, 4]`` in pixels of the original frame, ``scores`` float32 ``[N]``,
    ``class_ids`` int64 ``[N]`` indexing ``labels`` (the model's label table).
    """

    xyxy: npt.NDArray[np.float32]
    scores: npt.NDArray[np.float32]
    class_ids: npt.NDArray[np.int64]
    labels: tuple[str, ...] = COCO_LABELS

    def __post_init__(self) -> None:
        n = len(self.scores)
        if self.xyxy.shape != (n, 4):
            raise ValueError(f"Detections.xyxy must be [N,4], got {self.xyxy.shape} for N={n}")
        if self.class_ids.shape != (n,):
            raise ValueError("Detections.class_ids must be [N]")
        if n and (self.class_ids.min() < 0 or self.class_ids.max() >= len(self.labels)):
            raise ValueError("Detections.class_ids out of range of labels")

    @classmethod
    def empty(cls, labels: tuple[str, ...] = COCO_LABELS) -> Detections:
        return cls(
            np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64), labels
        )

    def __len__(self) -> int:
        return len(self.scores)

    def label(self, i: int) -> str:
        return self.labels[int(self.class_ids[i])]

    def select(self, mask: npt.NDArray[np.bool_] | npt.NDArray[np.intp]) -> Detections:
        """The detections picked by a boolean mask or an index array."""
        return Detections(self.xyxy[mask], self.scores[mask], self.class_ids[mask], self.labels)


@dataclass(frozen=True, slots=True)
class Track:
    """A snapshot of one tracked object after a tracker update."""

    track_id: int
    label: str
    box: BoxPx
    score: float
    first_ts: float
    last_ts: float
    hits: int
    confirmed: bool
    seen_now: bool
    zones: tuple[str, ...] = ()
    entered_zones: tuple[str, ...] = ()
    loitering: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        x1, y1, x2, y2 = self.box
        if not (x2 >= x1 and y2 >= y1):
            raise ValueError(f"Track.box must be x1<=x2, y1<=y2, got {self.box}")
        if self.last_ts < self.first_ts:
            raise ValueError("Track.last_ts before first_ts")


class EventType(str, enum.Enum):
    NEW = "new"
    UPDATE = "update"
    END = "end"


class EndReason(str, enum.Enum):
    """Why a visit ended (on ``end`` messages)."""

    TIMEOUT = "timeout"  # unseen for events.end_timeout_s
    SHUTDOWN = "shutdown"  # the agent stopped cleanly
    SOURCE_FINISHED = "source_finished"  # a file without loop reached its end
    RESTART = "restart"  # left open by a crash or power cut, ended by the next start


@dataclass(frozen=True, slots=True)
class Event:
    """One message about one visit of an object to a camera's view.

    ``event_id`` names the visit (shared by its new/update/end messages and its snapshots);
    ``id`` names this message, unique and stable across re-sends. Timestamps are epoch seconds.
    ``box`` is normalised ``(x1, y1, x2, y2)`` in 0..1. The per-node ``seq`` is assigned by
    the outbox when the event is committed. ``zones`` are the zones the object is in now,
    ``entered_zones`` every zone it has been in during the visit, ``loitering`` the zones it
    has stayed in longer than their ``loitering_s``.
    """

    id: str
    event_id: str
    type: EventType
    camera: str
    label: str
    score: float
    box: BoxPx
    start_ts: float
    end_ts: float | None
    ts: float
    has_snapshot: bool
    rev: int
    end_reason: EndReason | None = None
    zones: tuple[str, ...] = ()
    entered_zones: tuple[str, ...] = ()
    loitering: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if (self.type is EventType.END) != (self.end_reason is not None):
            raise ValueError("Event.end_reason is set exactly on 'end' events")
        if not all(0.0 <= v <= 1.0 for v in self.box):
            raise ValueError(f"Event.box must be normalised to 0..1, got {self.box}")
        if not 0.0 <= self.score <= 1.0:
            raise ValueError(f"Event.score must be in 0..1, got {self.score}")
        if (self.type is EventType.END) != (self.end_ts is not None):
            raise ValueError("Event.end_ts is set exactly on 'end' events")
        if self.end_ts is not None and self.end_ts < self.start_ts:
            raise ValueError("Event.end_ts before start_ts")
        if self.rev < 0:
            raise ValueError("Event.rev must be >= 0")


@dataclass(frozen=True, slots=True)
class SnapshotRequest:
    """The frame and box an event wants rendered as its JPEG snapshot."""

    event_id: str
    frame: Frame
    box: BoxPx
    label: str
    score: float


@dataclass(frozen=True, slots=True)
class OpenVisit:
    """What must survive a crash about a visit that has had ``new`` but not ``end``.

    Committed to the outbox in the same transaction as the message that changed it, so that
    the next start can end it (``end_reason`` restart) with the right ``rev``. ``last_ts`` is
    the epoch time of the latest committed observation.
    """

    event_id: str
    camera: str
    label: str
    start_ts: float
    last_ts: float
    box: BoxPx
    score: float
    rev: int

    def __post_init__(self) -> None:
        if self.last_ts < self.start_ts:
            raise ValueError("OpenVisit.last_ts before start_ts")
        if self.rev < 0:
            raise ValueError("OpenVisit.rev must be >= 0")
