"""`python -m reports.screenshot [HTML] [--out PNG]`: render a report page in headless Chromium.

For looking at index.html the way a reader's browser shows it (CI has no browser; this is a
maintainer's tool). A fresh profile directory per run, and every background service off, so
the run touches no network and leaves nothing behind.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from reports.cli import LATEST, UsageError, _Parser

CHROMIUM = ("/usr/bin/chromium", "chromium", "chromium-browser", "google-chrome")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars")


def find_chromium() -> str | None:
    for name in CHROMIUM:
        found = shutil.which(name)
        if found:
            return found
    return None


def screenshot(html: Path, out: Path, width: int = 1400, height: int = 3000, timeout: float = 120) -> Path:
    """Save a PNG of `html`; raises UsageError (one line) when it cannot."""
    if not html.is_file():
        raise UsageError(f"{html}: no such HTML file")
    browser = find_chromium()
    if browser is None:
        raise UsageError("chromium not found: install it with `apt-get install chromium`")
    out = out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="mha-report-chromium-") as profile:
        cmd = [browser, *FLAGS, f"--user-data-dir={profile}", f"--screenshot={out}",
               f"--window-size={width},{height}", html.resolve().as_uri()]
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            raise UsageError(f"chromium took more than {timeout:.0f} s to render {html}") from None
    if p.returncode != 0 or not out.is_file():
        last = (p.stderr.strip().splitlines() or ["no output"])[-1]
        raise UsageError(f"chromium failed on {html} (exit {p.returncode}): {last}")
    return out


def main(argv: list[str] | None = None) -> int:
    p = _Parser(prog="python -m reports.screenshot", description="Render a report page to PNG in headless Chromium.")
    p.add_argument("html", nargs="?", type=Path, default=LATEST / "index.html", metavar="HTML",
                   help=f"the page (default: {LATEST / 'index.html'})")
    p.add_argument("--out", type=Path, metavar="PNG", help="the PNG (default: beside the page, index.png)")
    p.add_argument("--width", type=int, default=1400)
    p.add_argument("--height", type=int, default=3000)
    try:
        args = p.parse_args(argv)
        html = args.html / "index.html" if args.html.is_dir() else args.html
        out = screenshot(html, args.out or html.with_suffix(".png"), args.width, args.height)
    except UsageError as e:
        print(f"python -m reports.screenshot: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
