"""A page opened in headless Chromium (Debian's ``chromium``) as its reader would open it, with no network."""
from __future__ import annotations

import pathlib
import re
import shutil
import subprocess
from typing import NamedTuple

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--host-resolver-rules=MAP * ~NOTFOUND",  # any request for a host fails: the page must need none
         "--enable-logging=stderr", "--v=0", "--virtual-time-budget=20000", "--window-size=1280,4000")


class Rendered(NamedTuple):
    charts: dict[str, str]  # each plotly chart's div id: the DOM inside it once scripts ran
    console: list[str]  # every console message and uncaught error
    screenshot: pathlib.Path


def render(page: pathlib.Path, screenshot: pathlib.Path) -> Rendered:
    binary = shutil.which("chromium")
    assert binary, "Debian's chromium is not installed (make test installs it: apt-get install chromium)"
    opened = subprocess.run([binary, *FLAGS, "--dump-dom", page.resolve().as_uri()], capture_output=True, text=True,
                            timeout=120, check=True)
    subprocess.run([binary, *FLAGS, f"--screenshot={screenshot}", page.resolve().as_uri()], capture_output=True,
                   timeout=120, check=True)
    parts = re.split(r'<div id="(chart-\d+)"', opened.stdout)
    return Rendered(dict(zip(parts[1::2], parts[2::2])),
                    [line for line in opened.stderr.splitlines() if ":CONSOLE" in line], screenshot)


def drawn(chart_dom: str) -> bool:
    """Whether plotly drew the chart: its SVG, with a heatmap image, a line or bars in it."""
    return 'class="main-svg"' in chart_dom and any(
        mark in chart_dom for mark in ('class="hm"', 'class="js-line"', 'class="point"'))
