"""One exception tree for the agent, rooted in :class:`AgentError`.

Vendor errors (OpenCV, onnxruntime, sqlite3, paho) are translated at the boundary with
``raise ... from exc`` so callers only ever catch these.
"""

from __future__ import annotations


class AgentError(Exception):
    """Base of every error the agent raises on purpose."""


class ConfigError(AgentError):
    """The configuration is invalid; ``problems`` holds one ``(field path, reason)`` per issue."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{path}: {reason}" for path, reason in problems))


class SourceError(AgentError):
    """A camera could not be opened or stopped delivering frames."""


class SourceFinished(SourceError):  # noqa: N818 - it is a state, not a failure
    """A finite source (a file without ``loop``) has no more frames."""


class DetectorError(AgentError):
    """Inference failed."""


class ModelError(DetectorError):
    """The model file is missing, corrupt, or of a family we cannot decode."""


class OutboxError(AgentError):
    """The durable outbox failed."""


class OutboxCorrupt(OutboxError):  # noqa: N818 - named after the state of the file
    """The outbox database is not a valid SQLite file; it has been quarantined."""


class LinkError(AgentError):
    """The MQTT link failed (refused connection, bad TLS material)."""


class OnvifError(AgentError):
    """An ONVIF camera could not be queried (unreachable, bad reply, SOAP fault)."""


class OnvifAuthError(OnvifError):
    """The camera refused the credentials (or needs some)."""
