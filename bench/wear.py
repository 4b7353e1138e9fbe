"""Storage wear per event: fsyncs and bytes written to storage for each outbox durability mode.

Each mode runs in a fresh subprocess (``python -m bench.wear FOLDER SYNC SNAPSHOT N``) so its
``/proc/self/io`` counters are its own: ``N`` emissions are committed one per transaction as
the camera worker does, then acknowledged in windows of 16 as the publisher does after
PUBACKs (an event's whole life in the outbox). ``write_bytes`` is what the kernel sent (or
will send) to storage for this process; fsync and fdatasync calls are counted with ``strace
-c`` when it is installed (else ``null``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.outbox_rate import MODES, batch_factory, outbox_api_problem, sample_event

ACK_WINDOW = 16


def proc_io() -> dict[str, int]:
    """This process's ``/proc/self/io`` counters."""
    out = {}
    for line in Path("/proc/self/io").read_text().splitlines():
        key, _, value = line.partition(":")
        out[key.strip()] = int(value)
    return out


def _child(folder: Path, sync: str, with_jpeg: bool, n: int) -> dict[str, Any]:
    from agent.config import OutboxConfig  # noqa: PLC0415 - child only
    from agent.delivery.outbox import Outbox  # noqa: PLC0415

    jpeg = os.urandom(40_000) if with_jpeg else None  # incompressible, as a JPEG is
    box = Outbox.open(OutboxConfig(path=folder / "wear.db", synchronous=sync))  # type: ignore[arg-type]
    batches = [batch_factory(sample_event(i), jpeg) for i in range(n)]
    before = proc_io()
    for batch in batches:
        box.put(batch)
    after_put = proc_io()
    last = 0
    while True:
        rows = box.peek(last, ACK_WINDOW)
        if not rows:
            break
        box.ack([r.rowid for r in rows])
        last = rows[-1].rowid
    box.close()
    after = proc_io()
    return {
        "puts": n,
        "put_write_bytes": after_put["write_bytes"] - before["write_bytes"],
        "write_bytes": after["write_bytes"] - before["write_bytes"],
        "wchar": after["wchar"] - before["wchar"],
        "write_syscalls": after["syscw"] - before["syscw"],
    }


def _fsyncs(strace_out: Path) -> int | None:
    """fsync + fdatasync calls from an ``strace -c`` summary."""
    total = 0
    found = False
    for line in strace_out.read_text().splitlines():
        m = re.match(r"\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?(fsync|fdatasync)$", line)
        if m:
            total += int(m.group(1))
            found = True
    return total if found else 0


def run_mode(workdir: Path, sync: str, with_jpeg: bool, n: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="wear-", dir=workdir) as tmp:
        folder = Path(tmp)
        cmd = [sys.executable, "-m", "bench.wear", str(folder), sync, str(int(with_jpeg)), str(n)]
        strace = shutil.which("strace")
        trace = folder / "strace.txt"
        if strace:
            cmd = [strace, "-f", "-c", "-e", "trace=fsync,fdatasync", "-o", str(trace), *cmd]
        out = subprocess.run(  # noqa: S603 - our own interpreter and module
            cmd, capture_output=True, text=True, check=True, timeout=300
        )
        res: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
        res["fsyncs"] = _fsyncs(trace) if strace else None
    puts = res["puts"]
    res["fsyncs_per_event"] = None if res["fsyncs"] is None else round(res["fsyncs"] / puts, 3)
    res["kib_written_per_event"] = round(res["write_bytes"] / puts / 1024, 2)
    res["kib_written_per_event_put_only"] = round(res["put_write_bytes"] / puts / 1024, 2)
    res["synchronous"] = sync
    res["snapshot_bytes"] = 40_000 if with_jpeg else 0
    return res


def wear_stats(workdir: Path, *, events: int) -> dict[str, Any]:
    """Every mode of :data:`bench.outbox_rate.MODES`, or ``status: skipped``."""
    problem = outbox_api_problem()
    if problem is not None:
        return {"status": "skipped", "reason": problem}
    runs = {}
    for sync, with_jpeg in MODES:
        key = f"{sync.lower()}_{'snapshot' if with_jpeg else 'event'}"
        runs[key] = run_mode(workdir, sync, with_jpeg, events)
    return {"status": "measured", "fsync_counter": shutil.which("strace") or None, "runs": runs}


if __name__ == "__main__":
    folder_arg, sync_arg, jpeg_arg, n_arg = sys.argv[1:5]
    print(json.dumps(_child(Path(folder_arg), sync_arg, jpeg_arg == "1", int(n_arg))))
