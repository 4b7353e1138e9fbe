"""Models on the box: the manifest, the model directory, and installing models into it.

``models/manifest.json`` lists the tested models (file name, upstream URL pinned to a commit,
size, sha256, licence). :func:`install` copies one from a local mirror directory (a
technician's laptop, the commune server's share) or downloads it over HTTP(S) (a mirror URL, or
the manifest's own URL), into a temporary file in the model directory, checks its size and
sha256, fsyncs it and renames it into place: a truncated or corrupted download never replaces
a file and leaves nothing behind. :func:`check` tells what is installed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal

from agent.errors import ConfigError, ModelError

DEFAULT_MODEL_DIR = Path("/var/lib/edge-agent/models")
MODEL_DIR_ENV = "EDGE_AGENT_MODEL_DIR"
DEFAULT_MODEL_FILE = "yolox_nano_416.onnx"  # the manifest's default (a test keeps them equal)
MANIFEST = Path(__file__).resolve().parents[2] / "models" / "manifest.json"
_CHUNK = 1 << 16

Status = Literal["installed", "missing", "mismatch"]


def default_model_dir() -> Path:
    """``$EDGE_AGENT_MODEL_DIR``, else ``/var/lib/edge-agent/models``."""
    env = os.environ.get(MODEL_DIR_ENV, "").strip()
    return Path(env) if env else DEFAULT_MODEL_DIR


def missing_model_hint(path: Path) -> str:
    """What to do about a model file that is not there."""
    return (
        f"run `edge-agent models fetch --dir {path.parent} --from MIRROR_DIR_OR_URL` to install "
        "the models (or set detector.model)"
    )


@dataclass(frozen=True, slots=True)
class ModelEntry:
    """One model of the manifest."""

    name: str
    file: str
    family: str
    url: str
    sha256: str
    size: int
    licence: str


@dataclass(frozen=True, slots=True)
class Manifest:
    default: str
    models: tuple[ModelEntry, ...]

    def select(self, names: list[str]) -> list[ModelEntry]:
        """The entries named (all of them for an empty list); ConfigError for unknown names."""
        if not names:
            return list(self.models)
        known = {m.name: m for m in self.models}
        unknown = [n for n in names if n not in known]
        if unknown:
            raise ConfigError([("models", f"not in the manifest: {', '.join(unknown)}")])
        return [known[n] for n in names]

    @property
    def default_entry(self) -> ModelEntry:
        return self.select([self.default])[0]


def _entry(raw: dict[str, Any], where: str) -> ModelEntry:
    try:
        entry = ModelEntry(
            name=str(raw["name"]),
            file=str(raw["file"]),
            family=str(raw.get("family", "auto")),
            url=str(raw["url"]),
            sha256=str(raw["sha256"]).lower(),
            size=int(raw["bytes"]),
            licence=str(raw.get("licence", "")),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError([(where, f"bad model entry: {exc!r}")]) from exc
    if Path(entry.file).name != entry.file or entry.file.startswith("."):
        raise ConfigError([(where, f"model file must be a plain file name: {entry.file!r}")])
    if len(entry.sha256) != 64 or any(c not in "0123456789abcdef" for c in entry.sha256):
        raise ConfigError([(where, f"bad sha256 for {entry.name}")])
    return entry


def load_manifest(path: Path = MANIFEST) -> Manifest:
    """The model manifest; :class:`ConfigError` naming the file if it is unreadable or bad."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        models = tuple(_entry(m, f"{path}: models.{i}") for i, m in enumerate(raw["models"]))
        manifest = Manifest(default=str(raw["default"]), models=models)
    except OSError as exc:
        raise ConfigError([(str(path), f"cannot read the model manifest: {exc.strerror}")]) from exc
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError([(str(path), f"bad model manifest: {exc!r}")]) from exc
    if manifest.default not in {m.name for m in models}:
        raise ConfigError([(str(path), f"default {manifest.default!r} is not a listed model")])
    return manifest


# -- checking --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ModelCheck:
    """What is in the model directory for one manifest entry."""

    entry: ModelEntry
    path: Path
    status: Status
    detail: str


def digest(path: Path) -> tuple[int, str]:
    """Size and sha256 of a file."""
    sha, size = hashlib.sha256(), 0
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            sha.update(chunk)
            size += len(chunk)
    return size, sha.hexdigest()


def mismatch(entry: ModelEntry, size: int, sha256: str) -> str | None:
    """Why a file of ``size`` bytes and ``sha256`` is not ``entry`` (None: it is)."""
    if size < entry.size:
        return f"truncated: {size} of {entry.size} bytes"
    if size > entry.size:
        return f"wrong size: {size} bytes, expected {entry.size}"
    if sha256 != entry.sha256:
        return f"sha256 mismatch: {sha256[:16]}..., expected {entry.sha256[:16]}..."
    return None


def check(entry: ModelEntry, model_dir: Path) -> ModelCheck:
    """Whether ``entry`` is installed intact in ``model_dir``."""
    path = model_dir / entry.file
    if not path.is_file():
        return ModelCheck(entry, path, "missing", "not installed")
    try:
        size, sha = digest(path)
    except OSError as exc:
        return ModelCheck(entry, path, "mismatch", f"unreadable: {exc.strerror}")
    why = mismatch(entry, size, sha)
    if why is not None:
        return ModelCheck(entry, path, "mismatch", why)
    return ModelCheck(entry, path, "installed", f"{size} bytes, sha256 ok")


# -- installing -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FetchResult:
    """One model's fetch: ``installed`` (new), ``kept`` (already intact) or ``refused``."""

    entry: ModelEntry
    path: Path
    outcome: Literal["installed", "kept", "refused"]
    detail: str


def source_for(entry: ModelEntry, mirror: str | None) -> str:
    """Where to fetch ``entry`` from: ``mirror/<file>`` (a directory or an http(s) URL), else
    the manifest's pinned URL."""
    if mirror is None:
        return entry.url
    if mirror.startswith(("http://", "https://")):
        return f"{mirror.rstrip('/')}/{entry.file}"
    return str(Path(mirror) / entry.file)


@contextlib.contextmanager
def _open_source(source: str, timeout_s: float) -> Iterator[IO[bytes]]:
    if source.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(source, timeout=timeout_s) as resp:  # noqa: S310 - http(s) only
                yield resp
        except urllib.error.HTTPError as exc:
            raise ModelError(f"cannot download {source}: HTTP {exc.code} {exc.reason}") from exc
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            reason = getattr(exc, "reason", None) or exc
            raise ModelError(f"cannot download {source}: {reason}") from exc
        return
    try:
        f = Path(source).open("rb")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise ModelError(f"cannot read {source}: {exc.strerror}") from exc
    with f:
        yield f


def _copy_limited(src: IO[bytes], dst: IO[bytes], limit: int) -> tuple[int, str]:
    """Copy at most ``limit`` bytes; size and sha256 of what was copied."""
    sha, size = hashlib.sha256(), 0
    while size < limit:
        chunk = src.read(min(_CHUNK, limit - size))
        if not chunk:
            break
        sha.update(chunk)
        dst.write(chunk)
        size += len(chunk)
    return size, sha.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def install(
    entry: ModelEntry, model_dir: Path, mirror: str | None, *, timeout_s: float = 60.0
) -> FetchResult:
    """Copy or download ``entry`` into ``model_dir``: temp file, size + sha256, fsync, rename.

    An intact installed file is kept. A source that is missing, truncated or corrupt gives
    ``refused`` and leaves the directory as it was. :class:`ModelError` only when the model
    directory itself cannot be written.
    """
    target = model_dir / entry.file
    if check(entry, model_dir).status == "installed":
        return FetchResult(entry, target, "kept", "already installed, sha256 ok")
    source = source_for(entry, mirror)
    try:
        model_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{entry.file}.", suffix=".part", dir=model_dir)
    except OSError as exc:
        raise ModelError(f"cannot write to the model directory {model_dir}: {exc}") from exc
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                with _open_source(source, timeout_s) as src:
                    size, sha = _copy_limited(src, out, entry.size + 1)
            except ModelError as exc:
                return FetchResult(entry, target, "refused", str(exc))
            out.flush()
            os.fsync(out.fileno())
        why = mismatch(entry, size, sha)
        if why is not None:
            return FetchResult(entry, target, "refused", f"{source}: {why}")
        tmp.chmod(0o644)
        tmp.replace(target)
        _fsync_dir(model_dir)
    except OSError as exc:
        raise ModelError(f"cannot write {target}: {exc}") from exc
    finally:
        tmp.unlink(missing_ok=True)
    return FetchResult(entry, target, "installed", f"from {source}, {size} bytes, sha256 ok")
