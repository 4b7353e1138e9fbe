"""TLS for the MQTT link and ``edge-agent tail``: ONE ``ssl.SSLContext`` built from the config.

The broker's certificate is always verified (chain and name; TLS 1.2 or newer). There is no
switch to turn verification off: when the broker is reached by an address or name that is not
in its certificate (``127.0.0.1`` through a tunnel, a bare IP on the commune LAN), pin the
name the certificate does carry with ``server_name``: :class:`PinnedNameContext` then checks
(and sends as SNI) that name instead of the host it connects to.

Mutual TLS: ``cert_file`` and ``key_file`` (optionally encrypted, with ``key_password`` or
``key_password_file``). Bad material is a :class:`~agent.errors.ConfigError` naming the field
(``mqtt.tls.key_file: ...``), found when the context is built, never at the first handshake.
"""

from __future__ import annotations

import socket
import ssl
from pathlib import Path
from typing import TYPE_CHECKING

from agent.errors import ConfigError

if TYPE_CHECKING:
    from agent.config import TlsConfig


class PinnedNameContext(ssl.SSLContext):
    """An ``SSLContext`` that verifies ``server_name`` (when set) instead of the host name the
    caller connects to.

    paho wraps its socket with ``server_hostname=<host>``; this context substitutes the pinned
    name, so OpenSSL's own host check (``check_hostname``, always on) tests the name that the
    broker's certificate must carry. Verification is never weakened: only the expected name
    changes.
    """

    server_name: str | None = None

    def wrap_socket(  # noqa: PLR0917 - the signature of ssl.SSLContext.wrap_socket
        self,
        sock: socket.socket,
        server_side: bool = False,
        do_handshake_on_connect: bool = True,
        suppress_ragged_eofs: bool = True,
        server_hostname: str | bytes | None = None,
        session: ssl.SSLSession | None = None,
    ) -> ssl.SSLSocket:
        return super().wrap_socket(
            sock,
            server_side=server_side,
            do_handshake_on_connect=do_handshake_on_connect,
            suppress_ragged_eofs=suppress_ragged_eofs,
            server_hostname=self._expected(server_side, server_hostname),
            session=session,
        )

    def wrap_bio(
        self,
        incoming: ssl.MemoryBIO,
        outgoing: ssl.MemoryBIO,
        server_side: bool = False,
        server_hostname: str | bytes | None = None,
        session: ssl.SSLSession | None = None,
    ) -> ssl.SSLObject:
        return super().wrap_bio(
            incoming,
            outgoing,
            server_side=server_side,
            server_hostname=self._expected(server_side, server_hostname),
            session=session,
        )

    def _expected(self, server_side: bool, host: str | bytes | None) -> str | bytes | None:
        return host if server_side or self.server_name is None else self.server_name


class _NoPassword(Exception):  # noqa: N818 - a signal from OpenSSL's password callback
    """The key is encrypted and no password was configured (never let OpenSSL prompt)."""


def _no_password() -> str:
    raise _NoPassword


def build_context(tls: TlsConfig, where: str = "mqtt.tls") -> PinnedNameContext:
    """The client context for ``tls``; :class:`ConfigError` naming ``{where}.<field>`` for
    every file that is missing, unreadable or not what its field says it is."""
    ctx = PinnedNameContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED, check_hostname on
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = True
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.server_name = tls.server_name
    problems: list[tuple[str, str]] = []
    texts = {
        name: _read_pem(f"{where}.{name}", path, problems)
        for name, path in (
            ("ca_file", tls.ca_file),
            ("cert_file", tls.cert_file),
            ("key_file", tls.key_file),
        )
        if path is not None
    }
    try:
        password = tls.read_key_password()
    except ConfigError as exc:
        problems += [(f"{where}.{field}", why) for field, why in exc.problems]
    if problems:
        raise ConfigError(problems)
    if tls.ca_file is not None:
        _check(_load_ca(ctx, tls.ca_file), f"{where}.ca_file", problems)
    else:
        ctx.load_default_certs()  # the system's CA bundle
    if tls.cert_file is not None:
        cert_problem = _load_ca(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT), tls.cert_file)
        _check(cert_problem, f"{where}.cert_file", problems)
        if cert_problem is None:
            key_text = texts.get("key_file", texts["cert_file"])
            field, why = _load_chain(ctx, tls, password, key_text, where)
            _check(why, field, problems)
    if problems:
        raise ConfigError(problems)
    return ctx


def _read_pem(field: str, path: Path, problems: list[tuple[str, str]]) -> str:
    try:
        return path.read_text(encoding="ascii", errors="replace")
    except OSError as exc:
        problems.append((field, f"cannot read {path}: {exc.strerror}"))
        return ""


def _check(why: str | None, field: str, problems: list[tuple[str, str]]) -> None:
    if why is not None:
        problems.append((field, why))


def _load_ca(ctx: ssl.SSLContext, path: Path) -> str | None:
    """Load the certificates in ``path`` as trust anchors; why not, or None."""
    try:
        ctx.load_verify_locations(cafile=str(path))
    except ssl.SSLError as exc:
        if exc.reason == "NO_CERTIFICATE_OR_CRL_FOUND":
            return f"no PEM certificate in {path}"
        return f"not a valid PEM certificate file: {path} ({_reason(exc)})"
    except OSError as exc:
        return f"cannot read {path}: {exc.strerror}"
    return None


def _load_chain(
    ctx: ssl.SSLContext, tls: TlsConfig, password: str | None, key_text: str, where: str
) -> tuple[str, str | None]:
    """Load the client certificate and key; ``(field to blame, why)``, why None when fine."""
    key_field = f"{where}.key_file" if tls.key_file is not None else f"{where}.cert_file"
    pw_field = f"{where}.key_password" + ("_file" if tls.key_password_file is not None else "")
    try:
        ctx.load_cert_chain(
            str(tls.cert_file),
            str(tls.key_file) if tls.key_file is not None else None,
            password=password if password is not None else _no_password,
        )
    except _NoPassword:
        return key_field, "the private key is encrypted: set key_password_file (or key_password)"
    except ssl.SSLError as exc:
        return _key_problem(
            exc, tls, key_text, has_password=password is not None, key=key_field, pw=pw_field
        )
    except OSError as exc:
        return key_field, f"cannot read: {exc.strerror}"
    return key_field, None


def _key_problem(
    exc: ssl.SSLError, tls: TlsConfig, key_text: str, *, has_password: bool, key: str, pw: str
) -> tuple[str, str]:
    """OpenSSL says only "PEM lib" for most key problems: tell them apart by the file."""
    if exc.reason == "KEY_VALUES_MISMATCH":
        return key, f"the private key does not match the certificate {tls.cert_file}"
    if "PRIVATE KEY-----" not in key_text:
        return key, "no PEM private key in it"
    if "ENCRYPTED" in key_text and has_password:
        return pw, f"wrong password for the private key {tls.key_file or tls.cert_file}"
    return key, f"cannot load the private key ({_reason(exc)})"


def _reason(exc: ssl.SSLError) -> str:
    return str(exc.reason or exc.strerror or exc)


def describe_tls_error(exc: BaseException) -> str:
    """A handshake failure by name: ``certificate verify failed: certificate has expired``,
    ``sslv3 alert certificate expired``, ``Hostname mismatch, certificate is not valid for
    'x'``: what a person fixing the box needs, without OpenSSL's source locations."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate verify failed: {str(exc.verify_message).rstrip('.')}"
    if isinstance(exc, ssl.SSLError):
        return describe_ssl_text(exc.strerror or str(exc)) or _reason(exc)
    return str(exc)


def describe_ssl_text(text: str) -> str:
    """OpenSSL's error text without its codes: ``[SSL: SSLV3_ALERT_CERTIFICATE_EXPIRED] sslv3
    alert certificate expired (_ssl.c:2580)`` -> ``sslv3 alert certificate expired``."""
    return text.split("] ", 1)[-1].rsplit(" (_ssl.c:", 1)[0]
