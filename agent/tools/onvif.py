"""ONVIF camera discovery and stream addresses, by hand with the standard library.

1. WS-Discovery: a SOAP-over-UDP ``Probe`` for ``dn:NetworkVideoTransmitter`` sent to
   239.255.255.250:3702 (or unicast to one address); cameras answer ``ProbeMatches`` with
   their device service URLs (``XAddrs``).
2. For each device, SOAP 1.2 over HTTP: ``GetSystemDateAndTime`` (unauthenticated, to learn
   the camera's clock: a WS-Security digest is checked against it), ``GetCapabilities`` (the
   media service URL), Media ``GetProfiles`` and ``GetStreamUri`` per profile, authenticated
   with a WS-Security UsernameToken digest: ``base64(sha1(nonce + created + password))``.

Replies are untrusted: size-bounded, and refused if they carry a DTD (SOAP forbids them; it
also rules out entity expansion). Passwords never appear in results or errors; stream URIs
are returned with any user-info masked.
"""

from __future__ import annotations

import base64
import calendar
import hashlib
import logging
import os
import socket
import time
import urllib.error
import urllib.request
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple
from urllib.parse import unquote, urlsplit
from xml.sax.saxutils import escape

from agent.errors import OnvifAuthError, OnvifError
from agent.node.redact import redact, redact_url

log = logging.getLogger(__name__)

MULTICAST_GROUP = "239.255.255.250"
DISCOVERY_PORT = 3702
MAX_DATAGRAM = 65_535
MAX_REPLY_BYTES = 2 * 1024 * 1024

NS = {
    "s": "http://www.w3.org/2003/05/soap-envelope",
    "a": "http://schemas.xmlsoap.org/ws/2004/08/addressing",
    "d": "http://schemas.xmlsoap.org/ws/2005/04/discovery",
    "dn": "http://www.onvif.org/ver10/network/wsdl",
    "tds": "http://www.onvif.org/ver10/device/wsdl",
    "trt": "http://www.onvif.org/ver10/media/wsdl",
    "tt": "http://www.onvif.org/ver10/schema",
    "wsse": "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd",
    "wsu": "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-utility-1.0.xsd",
}
PROBE_ACTION = "http://schemas.xmlsoap.org/ws/2005/04/discovery/Probe"
_UTP = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-username-token-profile-1.0"
PASSWORD_DIGEST = _UTP + "#PasswordDigest"
BASE64_BINARY = (
    "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-soap-message-security-1.0#Base64Binary"
)


@dataclass(frozen=True, slots=True)
class Device:
    """A camera that answered the probe: its endpoint id, device service URLs, scopes."""

    endpoint: str
    xaddrs: tuple[str, ...]
    scopes: tuple[str, ...]

    @property
    def name(self) -> str | None:
        """The ``onvif://www.onvif.org/name/...`` scope, if any."""
        return _scope_value(self.scopes, "name")

    @property
    def hardware(self) -> str | None:
        return _scope_value(self.scopes, "hardware")

    @property
    def xaddr(self) -> str:
        """The device service URL to use: the first IPv4 http(s) one, else the first."""
        for url in self.xaddrs:
            host = urlsplit(url).hostname or ""
            if url.startswith(("http://", "https://")) and ":" not in host:
                return url
        return self.xaddrs[0]


@dataclass(frozen=True, slots=True)
class Profile:
    """A media profile: ``token`` names it in ``GetStreamUri``."""

    token: str
    name: str
    encoding: str | None
    width: int | None
    height: int | None


@dataclass(frozen=True, slots=True)
class CameraStream:
    """One line of ``edge-agent discover``: a device's profile and its RTSP URI."""

    host: str
    endpoint: str
    name: str | None
    hardware: str | None
    profile: str
    profile_name: str
    encoding: str | None
    width: int | None
    height: int | None
    rtsp_uri: str


class Credentials(NamedTuple):
    user: str
    password: str


# -- pure: messages -----------------------------------------------------------------------------


def probe_message(message_id: str, scopes: Sequence[str] = ()) -> bytes:
    """A WS-Discovery Probe for ONVIF video transmitters (matching every scope in ``scopes``)."""
    scope_xml = f"<d:Scopes>{escape(' '.join(scopes))}</d:Scopes>" if scopes else ""
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        f'<s:Envelope xmlns:s="{NS["s"]}" xmlns:a="{NS["a"]}" xmlns:d="{NS["d"]}" '
        f'xmlns:dn="{NS["dn"]}"><s:Header>'
        f'<a:Action s:mustUnderstand="1">{PROBE_ACTION}</a:Action>'
        f"<a:MessageID>{escape(message_id)}</a:MessageID>"
        "<a:ReplyTo><a:Address>"
        "http://schemas.xmlsoap.org/ws/2004/08/addressing/role/anonymous"
        "</a:Address></a:ReplyTo>"
        '<a:To s:mustUnderstand="1">urn:schemas-xmlsoap-org:ws:2005:04:discovery</a:To>'
        "</s:Header><s:Body><d:Probe><d:Types>dn:NetworkVideoTransmitter</d:Types>"
        f"{scope_xml}</d:Probe></s:Body></s:Envelope>"
    ).encode()


def password_digest(nonce: bytes, created: str, password: str) -> str:
    """WS-Security UsernameToken PasswordDigest: ``base64(sha1(nonce + created + password))``."""
    raw = hashlib.sha1(nonce + created.encode() + password.encode(), usedforsecurity=False)
    return base64.b64encode(raw.digest()).decode()


def security_header(creds: Credentials, created: str, nonce: bytes) -> str:
    digest = password_digest(nonce, created, creds.password)
    return (
        f'<wsse:Security s:mustUnderstand="1" xmlns:wsse="{NS["wsse"]}" xmlns:wsu="{NS["wsu"]}">'
        f"<wsse:UsernameToken><wsse:Username>{escape(creds.user)}</wsse:Username>"
        f'<wsse:Password Type="{PASSWORD_DIGEST}">{digest}</wsse:Password>'
        f'<wsse:Nonce EncodingType="{BASE64_BINARY}">{base64.b64encode(nonce).decode()}'
        f"</wsse:Nonce><wsu:Created>{created}</wsu:Created></wsse:UsernameToken>"
        "</wsse:Security>"
    )


def envelope(body: str, header: str = "") -> bytes:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        f'<s:Envelope xmlns:s="{NS["s"]}" xmlns:tds="{NS["tds"]}" xmlns:trt="{NS["trt"]}" '
        f'xmlns:tt="{NS["tt"]}"><s:Header>{header}</s:Header><s:Body>{body}</s:Body>'
        "</s:Envelope>"
    ).encode()


def stream_uri_body(token: str) -> str:
    return (
        "<trt:GetStreamUri><trt:StreamSetup><tt:Stream>RTP-Unicast</tt:Stream>"
        "<tt:Transport><tt:Protocol>RTSP</tt:Protocol></tt:Transport></trt:StreamSetup>"
        f"<trt:ProfileToken>{escape(token)}</trt:ProfileToken></trt:GetStreamUri>"
    )


def iso_utc(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


# -- pure: replies ------------------------------------------------------------------------------


def parse_xml(data: bytes, what: str) -> ET.Element:
    """Parse an untrusted reply: bounded, no DTD (hence no entity expansion)."""
    if len(data) > MAX_REPLY_BYTES:
        raise OnvifError(f"{what}: reply larger than {MAX_REPLY_BYTES} bytes")
    if b"<!DOCTYPE" in data.upper() or b"<!ENTITY" in data.upper():
        raise OnvifError(f"{what}: reply carries a DTD (not allowed in SOAP)")
    try:
        return ET.fromstring(data)  # noqa: S314 - see above
    except ET.ParseError as exc:
        raise OnvifError(f"{what}: not XML ({exc})") from exc


def _text(el: ET.Element | None) -> str | None:
    if el is None or el.text is None:
        return None
    return el.text.strip() or None


def _int(el: ET.Element | None) -> int | None:
    text = _text(el)
    return int(text) if text is not None and text.isdigit() else None


def _scope_value(scopes: Sequence[str], key: str) -> str | None:
    prefix = f"onvif://www.onvif.org/{key}/"
    for scope in scopes:
        if scope.startswith(prefix):
            return unquote(scope[len(prefix) :])
    return None


def parse_probe_matches(data: bytes, message_id: str) -> list[Device]:
    """The devices in a ProbeMatches reply to ``message_id`` (other messages: none)."""
    root = parse_xml(data, "probe reply")
    relates_to = _text(root.find("s:Header/a:RelatesTo", NS))
    if relates_to is not None and relates_to != message_id:  # some cameras omit it
        return []
    devices = []
    for match in root.iterfind("s:Body/d:ProbeMatches/d:ProbeMatch", NS):
        endpoint = _text(match.find("a:EndpointReference/a:Address", NS))
        xaddrs = tuple((_text(match.find("d:XAddrs", NS)) or "").split())
        if endpoint and xaddrs:
            scopes = tuple((_text(match.find("d:Scopes", NS)) or "").split())
            devices.append(Device(endpoint, xaddrs, scopes))
    return devices


def parse_fault(root: ET.Element) -> tuple[str, str] | None:
    """``(subcode, reason)`` of a SOAP 1.2 fault, or None."""
    fault = root.find("s:Body/s:Fault", NS)
    if fault is None:
        return None
    code = _text(fault.find("s:Code/s:Subcode/s:Value", NS)) or _text(
        fault.find("s:Code/s:Value", NS)
    )
    reason = _text(fault.find("s:Reason/s:Text", NS)) or "no reason given"
    return (code or "unknown", reason)


def parse_device_time(root: ET.Element) -> float | None:
    """The camera's UTC clock from GetSystemDateAndTime, as epoch seconds."""
    utc = root.find(
        "s:Body/tds:GetSystemDateAndTimeResponse/tds:SystemDateAndTime/tt:UTCDateTime", NS
    )
    if utc is None:
        return None
    fields = ("Date/tt:Year", "Date/tt:Month", "Date/tt:Day",
              "Time/tt:Hour", "Time/tt:Minute", "Time/tt:Second")  # fmt: skip
    parts = [_int(utc.find(f"tt:{field}", NS)) for field in fields]
    if any(p is None for p in parts):
        return None
    y, mo, d, h, mi, s = (int(p) for p in parts if p is not None)
    try:
        return float(calendar.timegm((y, mo, d, h, mi, s, 0, 0, 0)))
    except (ValueError, OverflowError):
        return None


def parse_media_xaddr(root: ET.Element) -> str | None:
    return _text(
        root.find("s:Body/tds:GetCapabilitiesResponse/tds:Capabilities/tt:Media/tt:XAddr", NS)
    )


def parse_profiles(root: ET.Element) -> list[Profile]:
    profiles = []
    for el in root.iterfind("s:Body/trt:GetProfilesResponse/trt:Profiles", NS):
        token = el.get("token")
        if not token:
            continue
        enc = el.find("tt:VideoEncoderConfiguration", NS)
        res = enc.find("tt:Resolution", NS) if enc is not None else None
        profiles.append(
            Profile(
                token=token,
                name=_text(el.find("tt:Name", NS)) or token,
                encoding=_text(enc.find("tt:Encoding", NS)) if enc is not None else None,
                width=_int(res.find("tt:Width", NS)) if res is not None else None,
                height=_int(res.find("tt:Height", NS)) if res is not None else None,
            )
        )
    return profiles


def parse_stream_uri(root: ET.Element) -> str | None:
    return _text(root.find("s:Body/trt:GetStreamUriResponse/trt:MediaUri/tt:Uri", NS))


# -- I/O: discovery -----------------------------------------------------------------------------


def discover(
    *,
    timeout: float,
    interface: str | None = None,
    address: tuple[str, int] | None = None,
    scopes: Sequence[str] = (),
    repeat: int = 2,
) -> list[Device]:
    """Probe by multicast (from ``interface``, an IPv4 address) or unicast to ``address``;
    the devices that answered within ``timeout`` seconds, merged by endpoint."""
    message_id = f"urn:uuid:{uuid.uuid4()}"
    probe = probe_message(message_id, scopes)
    found: dict[str, Device] = {}
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        target = address or (MULTICAST_GROUP, DISCOVERY_PORT)
        try:
            if address is None:
                _multicast_from(sock, interface)
            for i in range(repeat):  # UDP may drop one; replies are merged by endpoint
                if i:
                    time.sleep(0.1)
                sock.sendto(probe, target)
        except OSError as exc:
            raise OnvifError(f"cannot send the discovery probe to {target[0]}: {exc}") from exc
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            try:
                data, sender = sock.recvfrom(MAX_DATAGRAM)
            except TimeoutError:
                break
            except OSError as exc:  # e.g. an ICMP error for a unicast probe
                log.debug("discovery: %s", exc)
                continue
            for dev in _devices_in(data, message_id, sender[0]):
                old = found.get(dev.endpoint)
                xaddrs = dev.xaddrs if old is None else old.xaddrs + dev.xaddrs
                found[dev.endpoint] = Device(dev.endpoint, tuple(dict.fromkeys(xaddrs)), dev.scopes)
    return list(found.values())


def _multicast_from(sock: socket.socket, interface: str | None) -> None:
    """Link-local multicast (TTL 1), from ``interface`` when given."""
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
    if interface is not None:
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(interface))
        sock.bind((interface, 0))


def _devices_in(data: bytes, message_id: str, sender: str) -> list[Device]:
    try:
        return parse_probe_matches(data, message_id)
    except OnvifError as exc:
        log.debug("ignoring a reply from %s: %s", sender, exc)
        return []


# -- I/O: SOAP ----------------------------------------------------------------------------------


class OnvifClient:
    """SOAP 1.2 calls to one device, authenticated when ``creds`` are given."""

    def __init__(self, xaddr: str, creds: Credentials | None, *, timeout: float) -> None:
        self.xaddr = xaddr
        self.host = urlsplit(xaddr).hostname or xaddr
        self._creds = creds
        self._timeout = timeout
        self._offset = 0.0  # camera clock minus ours
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # LAN: no proxy

    def sync_clock(self) -> None:
        """Learn the camera's clock (digests are checked against it; many cameras drift)."""
        try:
            root = self.call(self.xaddr, "device/wsdl/GetSystemDateAndTime",
                             "<tds:GetSystemDateAndTime/>", auth=False)  # fmt: skip
        except OnvifError as exc:
            log.debug("%s: no GetSystemDateAndTime (%s); using our clock", self.host, exc)
            return
        camera = parse_device_time(root)
        if camera is not None:
            self._offset = camera - time.time()

    def media_xaddr(self) -> str:
        """The media service URL (GetCapabilities), else the device service URL itself."""
        try:
            root = self.call(self.xaddr, "device/wsdl/GetCapabilities",
                             "<tds:GetCapabilities><tds:Category>Media</tds:Category>"
                             "</tds:GetCapabilities>")  # fmt: skip
        except OnvifAuthError:
            raise
        except OnvifError as exc:
            log.debug("%s: GetCapabilities failed (%s); trying the device URL", self.host, exc)
            return self.xaddr
        return parse_media_xaddr(root) or self.xaddr

    def profiles(self, media: str) -> list[Profile]:
        return parse_profiles(self.call(media, "media/wsdl/GetProfiles", "<trt:GetProfiles/>"))

    def stream_uri(self, media: str, token: str) -> str | None:
        return parse_stream_uri(self.call(media, "media/wsdl/GetStreamUri", stream_uri_body(token)))

    def call(self, url: str, action: str, body: str, *, auth: bool = True) -> ET.Element:
        """POST one SOAP request; the reply's root, or OnvifError / OnvifAuthError."""
        header = ""
        if auth and self._creds is not None:
            created = iso_utc(time.time() + self._offset)
            header = security_header(self._creds, created, os.urandom(16))
        name = action.rsplit("/", 1)[-1]
        request = urllib.request.Request(  # noqa: S310 - http(s) URLs from the device
            url,
            data=envelope(body, header),
            headers={
                "Content-Type": "application/soap+xml; charset=utf-8; "
                f'action="http://www.onvif.org/ver10/{action}"'
            },
            method="POST",
        )
        if urlsplit(url).scheme not in ("http", "https"):
            raise OnvifError(f"{self.host}: {name}: not an http(s) service URL: {url}")
        try:
            with self._opener.open(request, timeout=self._timeout) as reply:
                data = reply.read(MAX_REPLY_BYTES + 1)
        except urllib.error.HTTPError as exc:
            data = exc.read(MAX_REPLY_BYTES + 1)
            raise self._failure(name, exc.code, data) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise OnvifError(f"{self.host}: {name}: cannot reach {url}: {reason}") from exc
        root = parse_xml(data, f"{self.host}: {name}")
        fault = parse_fault(root)
        if fault is not None:
            raise self._fault_error(name, *fault)
        return root

    def _failure(self, name: str, status: int, data: bytes) -> OnvifError:
        try:
            fault = parse_fault(parse_xml(data, name))
        except OnvifError:
            fault = None
        if fault is not None:
            return self._fault_error(name, *fault, status=status)
        if status == 401:
            return self._fault_error(name, "NotAuthorized", "HTTP 401", status=status)
        return OnvifError(f"{self.host}: {name}: HTTP {status}")

    def _fault_error(self, name: str, code: str, reason: str, status: int = 0) -> OnvifError:
        reason = redact(reason, [self._creds.password] if self._creds else [])
        if "NotAuthorized" in code or status == 401:
            hint = "check --user and the password" if self._creds else "give --user"
            return OnvifAuthError(f"{self.host}: {name}: not authorized ({reason}): {hint}")
        return OnvifError(f"{self.host}: {name}: {code}: {reason}")


def query_device(
    device: Device, creds: Credentials | None, *, timeout: float
) -> list[CameraStream]:
    """Every profile of ``device`` with its RTSP URI (user-info masked)."""
    client = OnvifClient(device.xaddr, creds, timeout=timeout)
    client.sync_clock()
    media = client.media_xaddr()
    secrets = [creds.password] if creds else []
    streams = []
    for prof in client.profiles(media):
        uri = client.stream_uri(media, prof.token)
        if uri is None:
            log.warning("%s: profile %s has no stream URI", client.host, prof.token)
            continue
        streams.append(
            CameraStream(
                host=client.host, endpoint=device.endpoint, name=device.name,
                hardware=device.hardware, profile=prof.token, profile_name=prof.name,
                encoding=prof.encoding, width=prof.width, height=prof.height,
                rtsp_uri=redact(redact_url(uri), secrets),
            )
        )  # fmt: skip
    return streams
