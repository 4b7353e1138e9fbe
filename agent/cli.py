"""``edge-agent``: the only entry point.

Exit codes: 0 done, 1 unexpected failure, 2 bad configuration or usage, 3 refused to run
(corrupt model, unusable outbox): systemd should not restart on 2 or 3.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from pydantic import ValidationError

from agent import __version__
from agent.config import (
    DetectorConfig,
    MqttConfig,
    Settings,
    config_warnings,
    known_secrets,
    load_settings,
    preflight,
    validation_problems,
)
from agent.errors import AgentError, ConfigError, ModelError, OutboxError
from agent.node.logs import setup_logging
from agent.tools.models import DEFAULT_MODEL_DIR, MANIFEST, MODEL_DIR_ENV, default_model_dir

EXIT_OK, EXIT_FAIL, EXIT_CONFIG, EXIT_REFUSED = 0, 1, 2, 3
log = logging.getLogger("agent")
# tail's TLS options and the mqtt.tls fields they set
TAIL_TLS_OPTIONS = {
    "--cafile": "ca_file",
    "--cert": "cert_file",
    "--key": "key_file",
    "--key-password-file": "key_password_file",
    "--tls-server-name": "server_name",
}


def _add_detect_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``detect``: one JSON line per detection in an image or clip."""
    det = sub.add_parser("detect", help="print one JSON line per detection in an image or clip")
    det.add_argument("path", type=Path)
    det.add_argument(
        "--model", type=Path, default=None, help="default: the default model in the model dir"
    )
    det.add_argument("--family", default="auto")
    det.add_argument("--min-score", type=float, default=0.5)
    det.add_argument("--labels", default=None, help="comma-separated; default the six COCO ones")
    det.add_argument("--threads", type=int, default=2)
    det.add_argument("--every", type=int, default=1, help="clips: detect on every Nth frame")
    det.add_argument("--annotate", type=Path, help="write the picture (last frame) with boxes")


def _add_scene_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``evaluate`` (counting quality) and ``draw`` (zones and masks on a picture)."""
    ev = sub.add_parser("evaluate", help="score the events of a labelled clip (counting quality)")
    ev.add_argument("clip", type=Path)
    ev.add_argument("labels", type=Path, help="CSV: label,first,last,visibility[,note]")
    ev.add_argument("--detect-fps", type=float, nargs="+", default=[5.0])
    ev.add_argument("--model", type=Path, default=DetectorConfig().model)
    ev.add_argument("--config", type=Path, help="use this config's detector, events, camera")
    ev.add_argument("--camera", default="", help="with --config: the camera id (default first)")
    ev.add_argument("--json", action="store_true", help="one JSON object per detect fps")
    ev.add_argument("--verbose", action="store_true", help="also list each visit's events")
    drw = sub.add_parser("draw", help="a camera's picture with its zones and masks drawn")
    drw.add_argument("--config", type=Path, required=True)
    drw.add_argument("--camera", required=True, help="camera id")
    drw.add_argument("--image", type=Path, help="draw on this picture, not the current frame")
    drw.add_argument("--out", type=Path, required=True, help="PNG to write")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edge-agent", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"edge-agent {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the agent")
    run.add_argument("--config", type=Path, required=True, help="YAML config file")
    chk = sub.add_parser("check-config", help="validate a config file (exit 0 or 2)")
    chk.add_argument("file", type=Path)
    _add_detect_command(sub)
    _add_scene_commands(sub)
    mod = sub.add_parser("models", help="list, fetch or verify the models on this box")
    mod.add_argument("action", choices=["list", "fetch", "verify"])
    mod.add_argument("names", nargs="*", help="models of the manifest (default: all)")
    mod.add_argument(
        "--dir", type=Path, default=None, help=f"model directory (default: {DEFAULT_MODEL_DIR} "
        f"or ${MODEL_DIR_ENV})",
    )  # fmt: skip
    mod.add_argument(
        "--from", dest="mirror", default=None,
        help="fetch: a mirror directory or http(s) URL (default: each model's pinned URL)",
    )  # fmt: skip
    mod.add_argument("--manifest", type=Path, default=MANIFEST, help="the model manifest")
    box = sub.add_parser("outbox", help="inspect or deliver the durable outbox (agent stopped)")
    box_sub = box.add_subparsers(dest="action", required=True)
    for name, text in (("stats", "depth, bytes, counters"), ("drain", "deliver what is queued")):
        one = box_sub.add_parser(name, help=text)
        one.add_argument("--config", type=Path, required=True)
        one.add_argument("--timeout", type=float, default=60.0, help="drain: give up after s")
    dead = box_sub.add_parser("dead-letters", help="messages the broker refused for good")
    dead.add_argument("dl_action", choices=["list", "requeue", "purge"])
    dead.add_argument("--config", type=Path, required=True)
    dead.add_argument("--id", type=int, action="append", dest="ids", help="only these (repeat)")
    tail = sub.add_parser("tail", help="print what a commune server receives, as it arrives")
    tail.add_argument("--config", type=Path, help="reuse the mqtt section of an agent config")
    tail.add_argument("--host", help="default 127.0.0.1 (or the config's)")
    tail.add_argument("--port", type=int, help="default 1883, 8883 with TLS (or the config's)")
    tail.add_argument("--topic", help="default {topic_prefix}/#, i.e. camnet/#")
    tail.add_argument("--json", action="store_true", help="JSON lines instead of text")
    tail.add_argument("--snapshots", type=Path, help="save snapshot JPEGs in this folder")
    tls = tail.add_argument_group("TLS (--tls or any TLS option turns it on) and credentials")
    tls.add_argument("--tls", action="store_true", help="TLS with the system's CA certificates")
    helps = {
        "ca_file": "CA that signed the broker's certificate (PEM)",
        "cert_file": "client certificate (PEM) for mutual TLS",
        "key_file": "its private key (PEM)",
        "key_password_file": "file holding the password of an encrypted key",
        "server_name": "the name the broker's certificate carries, if not --host",
    }
    for opt, field in TAIL_TLS_OPTIONS.items():
        kind = Path if field != "server_name" else str
        tls.add_argument(opt, dest=field, type=kind, metavar="NAME" if kind is str else "FILE",
                         help=helps[field])  # fmt: skip
    tls.add_argument("--username", help="MQTT user name (with --password-file)")
    tls.add_argument("--password-file", type=Path, metavar="FILE", help="file holding the password")
    demo = sub.add_parser("demo", help="local broker + agent on a sample clip + live view")
    demo.add_argument("--clip", type=Path, help="default: one-by-one-person-detection.mp4")
    demo.add_argument("--model", type=Path, help="default: yolox_nano_416.onnx in ../shared")
    demo.add_argument("--realtime", action="store_true", help="play at the clip's own speed")
    _discover_parser(sub)
    return p


def _discover_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    dis = sub.add_parser("discover", help="find ONVIF cameras and print their RTSP URIs")
    dis.add_argument(
        "--user", help="camera user (ONVIF); the password comes from a file or a prompt"
    )
    dis.add_argument("--password-file", type=Path, help="file holding the camera password")
    dis.add_argument(
        "--interface", help="send the multicast probe from this interface or IPv4 address"
    )
    dis.add_argument("--address", help="probe this HOST[:PORT] by unicast instead of multicast")
    dis.add_argument("--device", action="append", default=[], metavar="URL",
                     help="skip discovery: query this device service URL (repeatable)")  # fmt: skip
    dis.add_argument("--scope", action="append", default=[],
                     help="only cameras with this ONVIF scope (repeatable)")  # fmt: skip
    dis.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for answers")
    dis.add_argument("--json", action="store_true", help="JSON lines instead of text")


def _logging_for(settings: Settings) -> None:
    level, as_json = settings.logging.level, settings.logging.json_format
    setup_logging(level, json_format=as_json, secrets=known_secrets(settings))


def cmd_check_config(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(args.file)
    except ConfigError as exc:
        for path, reason in exc.problems:
            print(f"{path}: {reason}", file=sys.stderr)
        return EXIT_CONFIG
    for path, reason in config_warnings(settings, args.file):
        print(f"warning: {path}: {reason}", file=sys.stderr)
    problems = preflight(settings)  # also builds the TLS context
    for path, reason in problems:
        print(f"{path}: {reason}", file=sys.stderr)
    if problems:
        return EXIT_CONFIG
    print(f"{args.file}: ok ({len(settings.cameras)} camera(s), node {settings.node_id})")
    return EXIT_OK


def cmd_detect(args: argparse.Namespace) -> int:
    from agent.tools.detect_cmd import detect_path

    labels = args.labels.split(",") if args.labels else None
    cfg = DetectorConfig(
        model=args.model,
        family=args.family,
        threads=args.threads,
        min_score=args.min_score,
        **({"labels": labels} if labels else {}),
    )
    for line in detect_path(args.path, cfg, every=args.every, annotate=args.annotate):
        print(json.dumps(line), flush=True)
    return EXIT_OK


def cmd_evaluate(args: argparse.Namespace) -> int:
    from agent.tools.evaluate import run_all

    return run_all(args)


def cmd_draw(args: argparse.Namespace) -> int:
    from agent.tools.draw import draw

    settings = load_settings(args.config)
    print(draw(settings, args.camera, args.out, args.image))
    return EXIT_OK


def cmd_models(args: argparse.Namespace) -> int:
    from agent.tools.models_cmd import run_models

    model_dir = args.dir or default_model_dir()
    return run_models(args.action, model_dir, args.manifest, args.names, args.mirror)


def cmd_run(args: argparse.Namespace) -> int:
    from agent.node.app import App

    settings = load_settings(args.config)
    _logging_for(settings)
    for path, reason in config_warnings(settings, args.config):
        log.warning("config: %s: %s", path, reason)
    problems = preflight(settings)  # the same checks as check-config: exit 2, not a crash loop
    if problems:
        raise ConfigError(problems)
    return App(settings).run_until_done()


def cmd_outbox(args: argparse.Namespace) -> int:
    from agent.node.app import dead_letters, drain_outbox, outbox_stats

    settings = load_settings(args.config)
    _logging_for(settings)
    if args.action == "stats":
        print(json.dumps(outbox_stats(settings)))
        return EXIT_OK
    if args.action == "dead-letters":
        for line in dead_letters(settings, args.dl_action, args.ids):
            print(json.dumps(line))
        return EXIT_OK
    left = drain_outbox(settings, timeout=args.timeout)
    print(json.dumps({"left": left}))
    return EXIT_OK if left == 0 else EXIT_FAIL


def tail_mqtt_config(args: argparse.Namespace) -> tuple[MqttConfig, str]:
    """The broker connection for ``tail``: the config's mqtt section (``--config``), with any
    command-line option overriding it; and the topic filter."""
    settings = load_settings(args.config) if args.config is not None else None
    base = settings.mqtt if settings is not None else MqttConfig()
    tls_opts = {f: getattr(args, f) for f in TAIL_TLS_OPTIONS.values() if getattr(args, f)}
    tls = {**base.tls.model_dump(exclude_unset=True), **tls_opts}
    tls["enabled"] = base.tls.enabled or args.tls or bool(tls_opts)
    if "key_password_file" in tls_opts:
        tls.pop("key_password", None)
    mqtt = base.model_dump(exclude_unset=True) | {"tls": tls}
    given = {"host": args.host, "port": args.port, "username": args.username}
    mqtt |= {k: v for k, v in given.items() if v is not None}
    if args.password_file is not None:
        mqtt.pop("password", None)
        mqtt["password_file"] = args.password_file
    if tls["enabled"] and args.port is None and "port" not in mqtt:
        mqtt["port"] = 8883
    try:
        cfg = MqttConfig.model_validate(mqtt)
    except ValidationError as exc:
        raise ConfigError(validation_problems(exc, "tail")) from exc
    topic = args.topic or f"{cfg.topic_prefix}/#"
    return cfg, topic


def cmd_tail(args: argparse.Namespace) -> int:
    from agent.tools.tail import tail

    cfg, topic = tail_mqtt_config(args)
    if args.config is not None:
        return tail(cfg, topic, as_json=args.json, snapshots=args.snapshots)
    options = {f"tail.tls.{field}": opt for opt, field in TAIL_TLS_OPTIONS.items()}
    options["tail.password_file"] = "--password-file"
    try:
        return tail(cfg, topic, as_json=args.json, snapshots=args.snapshots, where="tail")
    except ConfigError as exc:  # name the option the user typed
        raise ConfigError([(options.get(f, f), why) for f, why in exc.problems]) from exc


def cmd_demo(args: argparse.Namespace) -> int:
    from agent.tools.demo import run_demo

    return run_demo(clip=args.clip, model=args.model, realtime=args.realtime)


def cmd_discover(args: argparse.Namespace) -> int:
    from agent.tools.discover_cmd import read_credentials, run_discover

    return run_discover(
        timeout=args.timeout, interface=args.interface, address=args.address,
        devices=args.device, scopes=args.scope,
        creds=read_credentials(args.user, args.password_file), as_json=args.json,
        out=sys.stdout, err=sys.stderr,
    )  # fmt: skip


COMMANDS = {
    "run": cmd_run,
    "check-config": cmd_check_config,
    "detect": cmd_detect,
    "evaluate": cmd_evaluate,
    "draw": cmd_draw,
    "models": cmd_models,
    "outbox": cmd_outbox,
    "tail": cmd_tail,
    "demo": cmd_demo,
    "discover": cmd_discover,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command not in {"run", "outbox"}:
        setup_logging("INFO")
    try:
        return COMMANDS[args.command](args)
    except ConfigError as exc:
        for path, reason in exc.problems:
            print(f"config error: {path}: {reason}", file=sys.stderr)
        return EXIT_CONFIG
    except (ModelError, OutboxError) as exc:
        log.error("cannot go on: %s", exc)  # noqa: TRY400 - the message is the whole story
        return EXIT_REFUSED
    except AgentError as exc:
        log.error("%s", exc)  # noqa: TRY400
        return EXIT_FAIL
    except KeyboardInterrupt:
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
