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

from agent import __version__
from agent.config import DetectorConfig, Settings, known_secrets, load_settings, preflight
from agent.errors import AgentError, ConfigError, ModelError, OutboxError
from agent.logs import setup_logging

EXIT_OK, EXIT_FAIL, EXIT_CONFIG, EXIT_REFUSED = 0, 1, 2, 3
log = logging.getLogger("agent")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edge-agent", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"edge-agent {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the agent")
    run.add_argument("--config", type=Path, required=True, help="YAML config file")
    chk = sub.add_parser("check-config", help="validate a config file (exit 0 or 2)")
    chk.add_argument("file", type=Path)
    det = sub.add_parser("detect", help="print one JSON line per detection in an image or clip")
    det.add_argument("path", type=Path)
    det.add_argument("--model", type=Path, default=DetectorConfig().model)
    det.add_argument("--family", default="auto")
    det.add_argument("--min-score", type=float, default=0.5)
    det.add_argument("--labels", default=None, help="comma-separated; default the six COCO ones")
    det.add_argument("--threads", type=int, default=2)
    det.add_argument("--every", type=int, default=1, help="clips: detect on every Nth frame")
    det.add_argument("--annotate", type=Path, help="write the picture (last frame) with boxes")
    ev = sub.add_parser("evaluate", help="score the events of a labelled clip (counting quality)")
    ev.add_argument("clip", type=Path)
    ev.add_argument("labels", type=Path, help="CSV: label,first,last,visibility[,note]")
    ev.add_argument("--detect-fps", type=float, nargs="+", default=[5.0])
    ev.add_argument("--model", type=Path, default=DetectorConfig().model)
    ev.add_argument("--config", type=Path, help="use this config's detector, events, camera")
    ev.add_argument("--camera", default="", help="with --config: the camera id (default first)")
    ev.add_argument("--json", action="store_true", help="one JSON object per detect fps")
    drw = sub.add_parser("draw", help="a camera's picture with its zones and masks drawn")
    drw.add_argument("--config", type=Path, required=True)
    drw.add_argument("--camera", required=True, help="camera id")
    drw.add_argument("--image", type=Path, help="draw on this picture, not the current frame")
    drw.add_argument("--out", type=Path, required=True, help="PNG to write")
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
    tail.add_argument("--host", default="127.0.0.1")
    tail.add_argument("--port", type=int, default=1883)
    tail.add_argument("--topic", default="camnet/#")
    tail.add_argument("--json", action="store_true", help="JSON lines instead of text")
    tail.add_argument("--snapshots", type=Path, help="save snapshot JPEGs in this folder")
    demo = sub.add_parser("demo", help="local broker + agent on a sample clip + live view")
    demo.add_argument("--clip", type=Path, help="default: one-by-one-person-detection.mp4")
    demo.add_argument("--model", type=Path, help="default: yolox_nano_416.onnx in ../shared")
    demo.add_argument("--realtime", action="store_true", help="play at the clip's own speed")
    return p


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
    problems = preflight(settings)
    for path, reason in problems:
        print(f"{path}: {reason}", file=sys.stderr)
    if problems:
        return EXIT_CONFIG
    print(f"{args.file}: ok ({len(settings.cameras)} camera(s), node {settings.node_id})")
    return EXIT_OK


def cmd_detect(args: argparse.Namespace) -> int:
    from agent.detect_cmd import detect_path

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
    from agent.evaluate import run_all

    return run_all(args)


def cmd_draw(args: argparse.Namespace) -> int:
    from agent.draw import draw

    settings = load_settings(args.config)
    print(draw(settings, args.camera, args.out, args.image))
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    from agent.app import App

    settings = load_settings(args.config)
    _logging_for(settings)
    return App(settings).run_until_done()


def cmd_outbox(args: argparse.Namespace) -> int:
    from agent.app import dead_letters, drain_outbox, outbox_stats

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


def cmd_tail(args: argparse.Namespace) -> int:
    from agent.tail import tail

    return tail(args.host, args.port, args.topic, as_json=args.json, snapshots=args.snapshots)


def cmd_demo(args: argparse.Namespace) -> int:
    from agent.demo import run_demo

    return run_demo(clip=args.clip, model=args.model, realtime=args.realtime)


COMMANDS = {
    "run": cmd_run,
    "check-config": cmd_check_config,
    "detect": cmd_detect,
    "evaluate": cmd_evaluate,
    "draw": cmd_draw,
    "outbox": cmd_outbox,
    "tail": cmd_tail,
    "demo": cmd_demo,
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
