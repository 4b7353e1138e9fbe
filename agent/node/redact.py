"""Keep credentials out of logs, status values and error messages.

:func:`redact_url` rewrites every URL user-info inside a string (``rtsp://user:pass@host`` ->
``rtsp://user:***@host``, ``https://token@host`` -> ``https://***@host``) and the values of
credential-like ``key=value`` pairs (``?password=...``, GStreamer ``user-pw=...``). It works on
whole strings such as a GStreamer pipeline or an exception message, and is idempotent.
:class:`RedactingFilter` applies it to log records; attach it to *handlers* (a logger's filters
do not see records propagated from child loggers).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from urllib.parse import unquote

MASK = "***"

# scheme://authority, where the authority ends like FFmpeg's av_url_split: at / ? # (and at
# whitespace or quotes, which end a URL embedded in a longer string).
_URL = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<authority>[^/?#\s\"'<>]*)")
# A quoted URL (a GStreamer ``location="..."``) may have spaces in its user-info.
_QUOTED_URL = re.compile(
    r"(?P<quote>[\"'])(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<authority>[^/?#\"']*)"
)

# key=value pairs whose value is a secret: URL query parameters and element properties.
_SENSITIVE_KEYS = (
    r"user-pw|proxy-pw|password|passwd|passphrase|pwd|pass|secret|token|access_token"
    r"|api[_-]?key|apikey|auth"
)
_SECRET_PAIR = re.compile(
    rf"(?P<key>(?<![A-Za-z0-9_-])(?:{_SENSITIVE_KEYS})\s*=\s*)"
    r"(?P<value>\"[^\"]*\"|'[^']*'|[^&\s\"';,!)]+)",
    re.IGNORECASE,
)


def _redact_authority(match: re.Match[str]) -> str:
    authority = match.group("authority")
    if "@" not in authority:
        return match.group(0)
    start = (match.groupdict().get("quote") or "") + match.group("scheme")
    userinfo, host = authority.rsplit("@", 1)  # the last '@' ends the user-info
    if ":" in userinfo:
        user = userinfo.split(":", 1)[0]
        return f"{start}{user}:{MASK}@{host}"
    return f"{start}{MASK}@{host}"  # a lone user-info is often a token


def _redact_pair(match: re.Match[str]) -> str:
    value = match.group("value")
    if value == MASK:
        return match.group(0)
    quote = value[0] if value[:1] in ("'", '"') else ""
    return f"{match.group('key')}{quote}{MASK}{quote}"


def redact_url(text: str) -> str:
    """``text`` with the password and user-info of every URL in it, and credential-like
    ``key=value`` values, replaced by ``***``."""
    if "=" not in text and "@" not in text:
        return text
    text = _URL.sub(_redact_authority, _QUOTED_URL.sub(_redact_authority, text))
    return _SECRET_PAIR.sub(_redact_pair, text)


_SCHEME = re.compile(r"^\s*[A-Za-z][A-Za-z0-9+.-]*://")


def source_secrets(source: str) -> list[str]:
    """The password in a configured URL, read the way a person types it: the user-info runs
    to the LAST ``@``, so ``rtsp://admin:pa#ss/w?rd@cam/ch1`` yields ``pa#ss/w?rd`` (a pattern
    that stops at ``#``, ``/`` or ``?``, as FFmpeg does, would miss it). Also its %-decoded form.
    """
    match = _SCHEME.match(source)
    if not match or "@" not in source[match.end() :]:
        return []
    userinfo = source[match.end() : source.rindex("@")]
    if ":" not in userinfo:
        return []  # a user name alone (its password comes from a file) is not a secret
    secret = userinfo.split(":", 1)[1]
    return [s for s in dict.fromkeys((secret, unquote(secret))) if s]


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """:func:`redact_url`, after masking every literal occurrence of the known ``secrets``."""
    for secret in sorted(secrets, key=len, reverse=True):
        if len(secret) >= 2:
            text = text.replace(secret, MASK)
    return redact_url(text)


class RedactingFilter(logging.Filter):
    """A logging filter that redacts credentials from a record's final message, its
    exception text and its stack info, including the literal ``secrets`` it is given (the
    configured passwords). It never drops a record."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self.secrets = tuple(secrets)

    def _clean(self, text: str) -> str:
        return redact(text, self.secrets)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = self._clean(message)
        if redacted != message or record.args:
            record.msg, record.args = redacted, None
        if record.exc_info and not record.exc_text:
            text = logging.Formatter().formatException(record.exc_info)
            record.exc_text = self._clean(text)  # formatters use exc_text when it is set
        elif record.exc_text:
            record.exc_text = self._clean(record.exc_text)
        if record.stack_info:
            record.stack_info = self._clean(record.stack_info)
        return True
