"""A small ONVIF camera of our own, for ``edge-agent discover`` tests (no simulator exists in
the registries): WS-Discovery ProbeMatch over UDP and SOAP 1.2 device + media services over
HTTP on 127.0.0.1, checking the WS-Security UsernameToken digest against its own clock.

Multicast on loopback (FIELD-NOTES): the camera joins 239.255.255.250 on 127.0.0.1; the
client must send with ``IP_MULTICAST_IF`` 127.0.0.1 (``--interface 127.0.0.1``).
"""

from __future__ import annotations

import base64
import calendar
import hashlib
import socket
import struct
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

S = "http://www.w3.org/2003/05/soap-envelope"
A = "http://schemas.xmlsoap.org/ws/2004/08/addressing"
D = "http://schemas.xmlsoap.org/ws/2005/04/discovery"
WSSE = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd"
WSU = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-utility-1.0.xsd"
GROUP, PORT = "239.255.255.250", 3702

ENVELOPE = (
    '<?xml version="1.0" encoding="UTF-8"?>'
    f'<env:Envelope xmlns:env="{S}" xmlns:wsa="{A}" xmlns:wsd="{D}" '
    'xmlns:tds="http://www.onvif.org/ver10/device/wsdl" '
    'xmlns:trt="http://www.onvif.org/ver10/media/wsdl" '
    'xmlns:tt="http://www.onvif.org/ver10/schema" '
    'xmlns:ter="http://www.onvif.org/ver10/error">'
    "<env:Header>{header}</env:Header><env:Body>{body}</env:Body></env:Envelope>"
)


@dataclass(frozen=True)
class FakeProfile:
    token: str
    name: str
    width: int
    height: int
    uri: str


@dataclass
class Call:
    action: str
    path: str
    authorized: bool


@dataclass
class OnvifCamera:
    """Answers probes (multicast on 127.0.0.1, or unicast on ``udp_port``) and SOAP calls."""

    user: str
    password: str
    scopes: tuple[str, ...]
    profiles: tuple[FakeProfile, ...]
    clock_skew_s: float = 0.0  # the camera's clock minus ours
    multicast: bool = True
    endpoint: str = field(default_factory=lambda: f"urn:uuid:{uuid.uuid4()}")
    calls: list[Call] = field(default_factory=list)
    _nonces: set[str] = field(default_factory=set)

    def start(self) -> OnvifCamera:
        camera = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                status, reply = camera.soap(self.path, body)
                data = reply.encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/soap+xml; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *_args: object) -> None:
                pass

        self._http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.http_port = self._http.server_address[1]
        self._udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._udp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if self.multicast:
            self._udp.bind((GROUP, PORT))
            mreq = struct.pack("4s4s", socket.inet_aton(GROUP), socket.inet_aton("127.0.0.1"))
            self._udp.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
        else:
            self._udp.bind(("127.0.0.1", 0))
        self.udp_port = self._udp.getsockname()[1]
        self._udp.settimeout(0.2)
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._http.serve_forever, daemon=True),
            threading.Thread(target=self._answer_probes, daemon=True),
        ]
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._http.shutdown()
        self._http.server_close()
        for t in self._threads:
            t.join(2)
        self._udp.close()

    @property
    def xaddr(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/onvif/device_service"

    # -- WS-Discovery -------------------------------------------------------------------------

    def _answer_probes(self) -> None:
        while not self._stop.is_set():
            try:
                data, sender = self._udp.recvfrom(65535)
            except TimeoutError:
                continue
            except OSError:
                return
            reply = self.probe_match(data)
            if reply is not None:
                self._udp.sendto(reply, sender)

    def probe_match(self, data: bytes) -> bytes | None:
        root = ET.fromstring(data)
        probe = root.find(f"{{{S}}}Body/{{{D}}}Probe")
        if probe is None:
            return None
        types = (probe.findtext(f"{{{D}}}Types") or "").split()
        if types and not any(t.endswith(":NetworkVideoTransmitter") for t in types):
            return None
        wanted = (probe.findtext(f"{{{D}}}Scopes") or "").split()
        if not all(any(s == w or s.startswith(w + "/") for s in self.scopes) for w in wanted):
            return None
        message_id = root.findtext(f"{{{S}}}Header/{{{A}}}MessageID")
        header = (
            "<wsa:Action>http://schemas.xmlsoap.org/ws/2005/04/discovery/ProbeMatches"
            f"</wsa:Action><wsa:MessageID>urn:uuid:{uuid.uuid4()}</wsa:MessageID>"
            f"<wsa:RelatesTo>{message_id}</wsa:RelatesTo>"
        )
        body = (
            f"<wsd:ProbeMatches><wsd:ProbeMatch><wsa:EndpointReference><wsa:Address>"
            f"{self.endpoint}</wsa:Address></wsa:EndpointReference>"
            "<wsd:Types>dn:NetworkVideoTransmitter tds:Device</wsd:Types>"
            f"<wsd:Scopes>{' '.join(self.scopes)}</wsd:Scopes>"
            f"<wsd:XAddrs>http://[fe80::1]:{self.http_port}/onvif/device_service {self.xaddr}"
            "</wsd:XAddrs><wsd:MetadataVersion>1</wsd:MetadataVersion>"
            "</wsd:ProbeMatch></wsd:ProbeMatches>"
        )
        return ENVELOPE.format(header=header, body=body).encode()

    # -- SOAP -----------------------------------------------------------------------------------

    def soap(self, path: str, data: bytes) -> tuple[int, str]:
        root = ET.fromstring(data)
        body = root.find(f"{{{S}}}Body")
        request = body[0] if body is not None and len(body) else None
        if request is None:
            return 400, self._fault("env:Sender", "ter:InvalidArgVal", "no request")
        action = request.tag.rsplit("}", 1)[-1]
        public = action == "GetSystemDateAndTime"
        authorized = public or self._authorized(root)
        self.calls.append(Call(action, path, authorized))
        if not authorized:
            return 400, self._fault("env:Sender", "ter:NotAuthorized", "Sender not Authorized")
        handler = {
            ("/onvif/device_service", "GetSystemDateAndTime"): self._date_time,
            ("/onvif/device_service", "GetCapabilities"): self._capabilities,
            ("/onvif/media", "GetProfiles"): self._profiles,
            ("/onvif/media", "GetStreamUri"): lambda: self._stream_uri(request),
        }.get((path, action))
        if handler is None:
            return 400, self._fault("env:Receiver", "ter:ActionNotSupported", action)
        return 200, ENVELOPE.format(header="", body=handler())

    def _authorized(self, root: ET.Element) -> bool:
        token = root.find(f"{{{S}}}Header/{{{WSSE}}}Security/{{{WSSE}}}UsernameToken")
        if token is None:
            return False
        user = token.findtext(f"{{{WSSE}}}Username")
        digest = token.findtext(f"{{{WSSE}}}Password") or ""
        nonce = token.findtext(f"{{{WSSE}}}Nonce") or ""
        created = token.findtext(f"{{{WSU}}}Created") or ""
        try:
            when = calendar.timegm(time.strptime(created, "%Y-%m-%dT%H:%M:%SZ"))
        except ValueError:
            return False
        if abs(when - (time.time() + self.clock_skew_s)) > 300 or nonce in self._nonces:
            return False  # stale (checked against the camera's clock) or replayed
        self._nonces.add(nonce)
        raw = base64.b64decode(nonce) + created.encode() + self.password.encode()
        expected = base64.b64encode(hashlib.sha1(raw).digest()).decode()
        return user == self.user and digest == expected

    def _date_time(self) -> str:
        t = time.gmtime(time.time() + self.clock_skew_s)
        return (
            "<tds:GetSystemDateAndTimeResponse><tds:SystemDateAndTime>"
            "<tt:DateTimeType>NTP</tt:DateTimeType><tt:DaylightSavings>false</tt:DaylightSavings>"
            "<tt:UTCDateTime>"
            f"<tt:Time><tt:Hour>{t.tm_hour}</tt:Hour><tt:Minute>{t.tm_min}</tt:Minute>"
            f"<tt:Second>{t.tm_sec}</tt:Second></tt:Time>"
            f"<tt:Date><tt:Year>{t.tm_year}</tt:Year><tt:Month>{t.tm_mon}</tt:Month>"
            f"<tt:Day>{t.tm_mday}</tt:Day></tt:Date>"
            "</tt:UTCDateTime></tds:SystemDateAndTime></tds:GetSystemDateAndTimeResponse>"
        )

    def _capabilities(self) -> str:
        return (
            "<tds:GetCapabilitiesResponse><tds:Capabilities><tt:Media>"
            f"<tt:XAddr>http://127.0.0.1:{self.http_port}/onvif/media</tt:XAddr>"
            "</tt:Media></tds:Capabilities></tds:GetCapabilitiesResponse>"
        )

    def _profiles(self) -> str:
        items = "".join(
            f'<trt:Profiles token="{p.token}" fixed="true"><tt:Name>{p.name}</tt:Name>'
            '<tt:VideoEncoderConfiguration token="enc"><tt:Name>enc</tt:Name>'
            f"<tt:Encoding>H264</tt:Encoding><tt:Resolution><tt:Width>{p.width}</tt:Width>"
            f"<tt:Height>{p.height}</tt:Height></tt:Resolution></tt:VideoEncoderConfiguration>"
            "</trt:Profiles>"
            for p in self.profiles
        )
        return f"<trt:GetProfilesResponse>{items}</trt:GetProfilesResponse>"

    def _stream_uri(self, request: ET.Element) -> str:
        token = request.findtext("{http://www.onvif.org/ver10/media/wsdl}ProfileToken")
        uri = next(p.uri for p in self.profiles if p.token == token)
        return (
            "<trt:GetStreamUriResponse><trt:MediaUri>"
            f"<tt:Uri>{uri}</tt:Uri><tt:InvalidAfterConnect>false</tt:InvalidAfterConnect>"
            "<tt:InvalidAfterReboot>false</tt:InvalidAfterReboot><tt:Timeout>PT0S</tt:Timeout>"
            "</trt:MediaUri></trt:GetStreamUriResponse>"
        )

    @staticmethod
    def _fault(code: str, subcode: str, reason: str) -> str:
        body = (
            f"<env:Fault><env:Code><env:Value>{code}</env:Value><env:Subcode>"
            f"<env:Value>{subcode}</env:Value></env:Subcode></env:Code>"
            f'<env:Reason><env:Text xml:lang="en">{reason}</env:Text></env:Reason></env:Fault>'
        )
        return ENVELOPE.format(header="", body=body)
