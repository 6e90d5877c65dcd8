"""Regenerate the dashboard screenshots of the README (docs/dashboard-run.png,
docs/dashboard-overview.png): `perdure dev` on a fresh SQLite file runs the research agent of
examples/ (its search step fails twice before it succeeds), then Debian's chromium, driven by
Playwright, photographs the run's page and the overview."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parent.parent
APP = "examples.research_agent:app"


def main() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="perdure-screenshot-") as tmp:
        env = {
            **os.environ,
            "PERDURE_DATABASE_URL": f"sqlite:///{tmp}/perdure.db",
            "PERDURE_BLOB_URL": f"file://{tmp}/blobs",
            "PYTHONPATH": str(ROOT),
        }
        perdure = [sys.executable, "-m", "perdure"]
        dev = subprocess.Popen(
            [*perdure, "dev", APP, "--no-reload", "--port", str(port), "--log-level", "warning"],
            cwd=ROOT,
            env=env,
        )
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    urllib.request.urlopen(f"{url}/healthz", timeout=2)
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)
            trigger = [*perdure, "trigger", APP, "research", "--json"]
            done = json.loads(
                subprocess.run(
                    [
                        *trigger[:-1],
                        '["durable execution"]',
                        "--wait",
                        "--timeout",
                        "120",
                        "--json",
                    ],
                    cwd=ROOT,
                    env=env,
                    check=True,
                    capture_output=True,
                    text=True,
                ).stdout
            )
            for topic in ("sagas", "outbox pattern"):
                args = json.dumps([topic])
                subprocess.run([*trigger, args], cwd=ROOT, env=env, check=True)
            with sync_playwright() as p:
                browser = p.chromium.launch(
                    executable_path="/usr/bin/chromium",
                    args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
                )
                page = browser.new_page(viewport={"width": 1280, "height": 900})
                page.goto(f"{url}/runs/{done['id']}")
                page.wait_for_selector("#steps")
                page.screenshot(path=str(ROOT / "docs" / "dashboard-run.png"), full_page=True)
                time.sleep(4)  # the other two runs get going
                page.goto(f"{url}/")
                page.screenshot(path=str(ROOT / "docs" / "dashboard-overview.png"))
                browser.close()
        finally:
            dev.terminate()
            dev.wait(60)
    print("wrote docs/dashboard-run.png and docs/dashboard-overview.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
