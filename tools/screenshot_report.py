"""Screenshot an HTML report with headless Chromium (Debian's ``chromium``).

    python tools/screenshot_report.py REPORT.html OUT.png [--width 1280] [--height 2400]

Runs chromium with no network-facing features (background networking,
component updates, sync off), a fresh temporary profile, no GPU and no
sandbox (it runs as root in containers), and writes a PNG of the first
``--height`` pixels of the page at ``--width``. Install once with
``apt-get install -y chromium``. Exits 2 when chromium is missing or the
report does not exist, and 1 when chromium fails or writes no PNG.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> str | None:
    """The first Chromium-like browser on PATH, or None."""
    for name in CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return None


def screenshot(report: Path, out: Path, width: int = 1280, height: int = 2400, timeout: float = 120.0) -> Path:
    """Write a ``width`` x ``height`` PNG screenshot of ``report`` to ``out``.

    Raises:
        FileNotFoundError: chromium or the report is missing.
        RuntimeError: chromium failed or wrote no PNG (its stderr in the message).
    """
    browser = find_chromium()
    if browser is None:
        raise FileNotFoundError("no chromium on PATH; install it with: apt-get install -y chromium")
    report = report.resolve()
    if not report.is_file():
        raise FileNotFoundError(f"report '{report}' does not exist")
    out = out.resolve()
    out.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix="graphopt-chromium-") as profile:
        cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
               f"--user-data-dir={profile}", f"--screenshot={out}", f"--window-size={width},{height}",
               report.as_uri()]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0 or not out.is_file():
        raise RuntimeError(f"chromium exited {proc.returncode} and wrote {'a' if out.is_file() else 'no'} PNG: "
                           f"{proc.stderr.strip()[-2000:]}")
    return out


def main(argv: list[str] | None = None) -> int:
    """Command line entry: see the module doc."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=2400)
    args = parser.parse_args(argv)
    try:
        path = screenshot(args.report, args.out, args.width, args.height)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (RuntimeError, subprocess.TimeoutExpired) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
