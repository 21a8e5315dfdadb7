"""Run one optimizer in a child process and measure it: wall time, exit
status and the child's own peak RSS, with a timeout that kills its process
group. Used by ``tools/compare_simplifiers.py`` and ``tools/compare_peers.py``.

Linux carries a process's peak RSS over exec (``ru_maxrss`` of a child of this
process starts at this process's high-water mark, hundreds of MB once a model
is loaded), so the tool is run by a small launcher (a bare Python, ~10 MB)
that forks it, waits for it with ``os.wait4`` and prints its rusage; the floor
of the RSS figure is that launcher's ~10 MB.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

RUSAGE_MARK = "@@compare_simplifiers_rusage@@ "
RESULT_MARK = "@@compare_simplifiers_result@@ "
#: Run argv[1:], then print its wall time, exit code and peak RSS (KiB).
_LAUNCHER = (
    "import json, os, subprocess, sys, time\n"
    "t = time.perf_counter()\n"
    "p = subprocess.Popen(sys.argv[1:])\n"
    "_, status, usage = os.wait4(p.pid, 0)\n"
    "wall = time.perf_counter() - t\n"
    f"print({RUSAGE_MARK!r} + json.dumps(dict(wall_s=wall, rc=os.waitstatus_to_exitcode(status), "
    "maxrss_kb=usage.ru_maxrss)), flush=True)\n"
)


def spawn(cmd: list[str], dst: Path, timeout: float, log: Path) -> dict[str, Any]:
    """Run ``cmd`` (which writes ``dst``) through the launcher; its output goes
    to ``log``.

    Returns:
        ``wall_s`` (s), ``rss_mb`` (MiB, None if the launcher did not report),
        ``rc``, ``ok``, ``error`` when it failed (timeout, killed by a signal,
        non-zero exit with the last lines of its output, no output file), and
        the fields of the child's last ``RESULT_MARK`` JSON line when it
        printed one.
    """
    cmd = [sys.executable, "-S", "-c", _LAUNCHER, *cmd]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    killed = threading.Event()
    with open(log, "w") as out:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)

        def kill() -> None:
            killed.set()
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # the child's own process group
            except ProcessLookupError:
                pass

        timer = threading.Timer(timeout, kill)
        timer.start()
        try:
            _, status, _usage = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
        wall = time.perf_counter() - start
    rc = os.waitstatus_to_exitcode(status)
    text = log.read_text(errors="replace")
    row: dict[str, Any] = {"wall_s": wall, "rss_mb": None, "rc": rc}
    launched = [line for line in text.splitlines() if line.startswith(RUSAGE_MARK)]
    if launched:  # the tool's own figures, from the launcher
        info = json.loads(launched[-1][len(RUSAGE_MARK):])
        rc = info["rc"]
        row.update(wall_s=info["wall_s"], rss_mb=info["maxrss_kb"] / 1024, rc=rc)
    marks = [line for line in text.splitlines() if line.startswith(RESULT_MARK)]
    if marks:
        row.update(json.loads(marks[-1][len(RESULT_MARK):]))
    if killed.is_set():
        row.update(ok=False, error=f"timeout after {timeout:g} s (killed)")
    elif rc < 0 or rc > 128:  # the shell reports a killed child as 128 + signal
        number = -rc if rc < 0 else rc - 128
        name = signal.Signals(number).name if number in signal.Signals._value2member_map_ else f"signal {number}"
        row.update(ok=False, error=f"killed by {name}" + (" (out of memory?)" if name == "SIGKILL" else ""))
    elif not marks:
        row["ok"] = rc == 0
        if not row["ok"]:
            tail = [line for line in text.strip().splitlines() if line.strip()][-3:]
            row["error"] = f"exit {rc}: " + " | ".join(tail)[-600:]
    if row.get("ok") and not dst.is_file():
        row.update(ok=False, error="no output file written")
    return row
