"""The human-readable table printed after a run."""

from __future__ import annotations

from typing import Any

from bench.link import rows as link_rows

Row = tuple[str, str]


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}"
    return str(v)


def _machine(r: dict[str, Any]) -> list[Row]:
    m = r["machine"]
    return [
        ("cpu", f"{m['cpu_model']} ({m['cores_usable']} usable / {m['cores_logical']} logical)"),
        ("versions", f"python {m['python']}, onnxruntime {m['onnxruntime']}, "
                     f"opencv {m['opencv']}, numpy {m['numpy']}"),
        ("load avg start/end", f"{m['load_average_start']} / {m['load_average_end']}"),
    ]  # fmt: skip


def _decode(r: dict[str, Any]) -> list[Row]:
    return [
        (f"decode {d['clip']} ({d['width']}x{d['height']})", f"{d['fps']:.1f} fps, "
         f"{d['megapixels_per_s']:.0f} Mpx/s ({d['frames']} frames)")
        for d in r["decode"].values()
    ]  # fmt: skip


def _inference(r: dict[str, Any]) -> list[Row]:
    rows = []
    for name, s in r["inference"].items():
        i, d = s["inference_ms"], s["detect_ms"]
        pre, post = s["preprocess_ms"]["p50"], s["postprocess_ms"]["p50"]
        rows.append((
            f"infer {name} ({s['family']} {s['input'][0]}x{s['input'][1]})",
            f"p50 {i['p50']:.2f} ms, p95 {i['p95']:.2f} ms | pre {pre:.2f} + post {post:.2f} ms "
            f"= {s['overhead_share']:.1%} | detect() p50 {d['p50']:.2f} ms",
        ))  # fmt: skip
    return rows


def _pipelines(r: dict[str, Any]) -> list[Row]:
    e, d = r["pipeline_every_frame"], r["pipeline_default"]
    ev = d["events"]
    return [
        ("pipeline every frame", f"{e['fps']:.1f} fps over {e['frames']} frames; limit "
         f"{e['limit_fps']:.1f} fps; ratio {e['ratio_to_limit']:.3f} (target >= {e['target']})"),
        ("  limit from", f"decode {e['decode_fps']:.0f} fps + bare inference p50 "
         f"{e['inference_ms_during_run']['p50']:.2f} ms sampled between pipeline frames"),
        ("  same, inference mean", f"limit {e['with_inference_mean']['limit_fps']:.1f} fps "
         f"(mean {e['inference_ms_during_run']['mean']:.2f} ms); "
         f"ratio {e['with_inference_mean']['ratio_to_limit']:.3f}"),
        (f"pipeline detect_fps={d['detect_fps']:g}", f"{d['frames_detected']}/{d['frames']} "
         f"frames detected; events new {ev['new']} / update {ev['update']} / end {ev['end']}"),
        ("  cpu / wall", f"{d['cpu_s']:.2f} s CPU, {d['wall_s']:.2f} s wall, "
         f"{d['media_s']:.1f} s of video -> {d['cpu_per_media_s']:.3f} CPU-s per video-s"),
    ]  # fmt: skip


def _snapshot(r: dict[str, Any]) -> list[Row]:
    s = r["snapshot"]
    return [(
        f"snapshot {s['frame'][0]}x{s['frame'][1]} -> {s['max_width']}w q{s['quality']}",
        f"p50 {s['render_ms']['p50']:.2f} ms, p95 {s['render_ms']['p95']:.2f} ms, "
        f"{s['jpeg_bytes'] / 1024:.1f} KiB",
    )]  # fmt: skip


def _outbox(r: dict[str, Any]) -> list[Row]:
    o = r["outbox"]
    if o["status"] != "measured":
        return [("outbox", f"skipped: {o['reason']}")]
    return [
        (f"outbox {k}", f"{v['events_per_s']:.1f} events/s ({v['ms_per_put']:.2f} ms/put, "
         f"snapshot {v['snapshot_bytes'] / 1024:.1f} KiB)")
        for k, v in o["runs"].items()
    ]  # fmt: skip


def _wear(r: dict[str, Any]) -> list[Row]:
    w = r.get("wear", {"status": "skipped", "reason": "not run"})
    if w["status"] != "measured":
        return [("outbox wear", f"skipped: {w['reason']}")]
    return [
        (f"wear {k}", f"{v['fsyncs_per_event']} fsyncs/event, {v['kib_written_per_event']} KiB "
         f"written/event (put + ack; put only {v['kib_written_per_event_put_only']} KiB)")
        for k, v in w["runs"].items()
    ]  # fmt: skip


def _link(r: dict[str, Any]) -> list[Row]:
    return link_rows(r.get("link", {"status": "skipped", "reason": "not run"}))


def _rss(r: dict[str, Any]) -> list[Row]:
    m = r["rss"]
    return [(
        "peak RSS, one camera (fresh process)",
        f"{m['peak_rss_mb']:.1f} MiB (after imports {m['rss_after_imports_mb']:.1f}, "
        f"after model load {m['rss_after_model_load_mb']:.1f})",
    )]  # fmt: skip


def table(r: dict[str, Any]) -> str:
    """Every section as ``name | value`` lines, then the ratios."""
    rows: list[Row] = []
    for part in (_machine, _decode, _inference, _pipelines, _snapshot, _outbox, _wear, _link, _rss):
        rows.extend(part(r))
    rows.append(("ratios", ""))
    rows.extend((f"  {k}", _fmt(v)) for k, v in r["ratios"].items())
    width = max(len(k) for k, _ in rows)
    title = f"edge-agent bench ({'quick' if r['quick'] else 'full'}, {r['duration_s']:.0f} s)"
    return "\n".join([title, *(f"{k:<{width}} | {v}" for k, v in rows)])
