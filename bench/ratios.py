"""Every ratio the benchmark reports, computed from the sections of one run."""

from __future__ import annotations

from typing import Any

from bench.common import DEFAULT_MODEL

PIPELINE_TARGET = 0.9  # pipeline fps / serial decode+inference limit


def _div(a: float, b: float, nd: int = 3) -> float | None:
    return round(a / b, nd) if b else None


def limit_ratios(decode_fps: float, inference_s: float, pipeline_fps: float) -> dict[str, Any]:
    """The serial limit ``1 / (1/decode_fps + inference_s)`` and the pipeline's share of it."""
    frame_s = 1.0 / decode_fps + inference_s
    limit = 1.0 / frame_s
    ratio = round(pipeline_fps / limit, 3)
    return {
        "limit_fps": round(limit, 2),
        "ratio_to_limit": ratio,
        "target": PIPELINE_TARGET,
        "meets_target": ratio >= PIPELINE_TARGET,
        "decode_share_of_limit": round((1.0 / decode_fps) / frame_s, 3),
    }


def _inference_ratios(inference: dict[str, Any]) -> dict[str, Any]:
    base = inference[DEFAULT_MODEL]["inference_ms"]["p50"]
    out: dict[str, Any] = {}
    for name, res in inference.items():
        out[f"{name}.detect_overhead_share"] = res["overhead_share"]
        out[f"{name}.inference_p50_vs_{DEFAULT_MODEL}"] = _div(res["inference_ms"]["p50"], base)
    return out


def _outbox_ratios(outbox: dict[str, Any]) -> dict[str, Any]:
    if outbox.get("status") != "measured":
        return {}
    rates = {k: v["events_per_s"] for k, v in outbox["runs"].items()}
    return {
        "outbox.normal_vs_full.event": _div(rates["normal_event"], rates["full_event"]),
        "outbox.normal_vs_full.snapshot": _div(rates["normal_snapshot"], rates["full_snapshot"]),
        "outbox.snapshot_vs_event.full": _div(rates["full_snapshot"], rates["full_event"]),
        "outbox.snapshot_vs_event.normal": _div(rates["normal_snapshot"], rates["normal_event"]),
    }


def all_ratios(r: dict[str, Any]) -> dict[str, Any]:
    """Flat ``name -> ratio`` over the whole result (None where a baseline was zero)."""
    every, default = r["pipeline_every_frame"], r["pipeline_default"]
    detect_p50 = r["inference"][DEFAULT_MODEL]["detect_ms"]["p50"]
    out: dict[str, Any] = {
        "pipeline_every_frame.ratio_to_limit": every["ratio_to_limit"],
        "pipeline_every_frame.ratio_to_limit_inference_mean": every["with_inference_mean"][
            "ratio_to_limit"
        ],
        "pipeline_every_frame.ratio_to_limit_inference_section_p50": every[
            "with_inference_section_p50"
        ]["ratio_to_limit"],
        "pipeline_every_frame.decode_share_of_limit": every["decode_share_of_limit"],
        "pipeline_every_frame.inference_p50_during_vs_section": _div(
            every["inference_ms_during_run"]["p50"],
            r["inference"][DEFAULT_MODEL]["inference_ms"]["p50"],
        ),
        "pipeline_every_frame.cpu_per_wall_s": every["cpu_per_wall_s"],
        "pipeline_default.cpu_per_media_s": default["cpu_per_media_s"],
        "pipeline_default.cpu_per_wall_s": default["cpu_per_wall_s"],
        "pipeline_default.detected_share": _div(default["frames_detected"], default["frames"]),
        "pipeline_default.realtime_factor": default["realtime_factor"],
        "pipeline_default_vs_every_frame.cpu_s": _div(default["cpu_s"], every["cpu_s"]),
        "snapshot_render_vs_detect.p50": _div(r["snapshot"]["render_ms"]["p50"], detect_p50),
        "decode.other_vs_main.megapixels_per_s": _div(
            r["decode"]["other"]["megapixels_per_s"], r["decode"]["main"]["megapixels_per_s"]
        ),
        "rss.peak_vs_after_imports": _div(
            r["rss"]["peak_rss_mb"], r["rss"]["rss_after_imports_mb"]
        ),
    }
    out.update(_inference_ratios(r["inference"]))
    out.update(_outbox_ratios(r["outbox"]))
    out.update(_fault_ratios(r))
    return out


def _fault_ratios(r: dict[str, Any]) -> dict[str, Any]:
    """Wear and link numbers that are already ratios or counts per event."""
    out: dict[str, Any] = {}
    wear = r.get("wear", {})
    if wear.get("status") == "measured":
        for k, v in wear["runs"].items():
            out[f"wear.{k}.fsyncs_per_event"] = v["fsyncs_per_event"]
            out[f"wear.{k}.kib_written_per_event"] = v["kib_written_per_event"]
    link = r.get("link", {})
    if link.get("status") == "measured":
        out["link.flap.duplicate_factor"] = link["flap"]["duplicate_factor"]
        out["link.flap.lost"] = link["flap"]["lost"]
        out["link.backlog.events_per_s_after_connack"] = link["backlog"]["events_per_s"]
        out["link.latency_p50_snapshot_backlog_vs_alone"] = link.get("latency_p50_backlog_vs_alone")
    return out
