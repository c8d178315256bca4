"""Drive the running web app in a real headless Chromium: run the example, wait for the 3D
view, save a screenshot (used by the browser test and for docs/img/app.png).

    python app.py &            # or any URL serving the app
    python -m scripts.app_screenshot http://127.0.0.1:7860/ docs/img/app.png
"""

from __future__ import annotations

import sys
from pathlib import Path

CHROMIUM_FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--use-angle=swiftshader",
                  "--enable-unsafe-swiftshader"]


def screenshot_example(url: str, out_png: Path, chromium: str = "/usr/bin/chromium",
                       timeout_ms: int = 600_000) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        # gradio keeps a connection open, so "networkidle" never comes: wait for the button
        page.goto(url, wait_until="load", timeout=120_000)
        page.wait_for_selector("#example-button", timeout=120_000)
        page.click("#example-button")
        # the 3D viewer mounts a canvas once the GLB has arrived
        page.wait_for_selector("#model3d canvas", timeout=timeout_ms)
        page.wait_for_function(
            "document.querySelector('#summary') && "
            "document.querySelector('#summary').innerText.includes('fragments')",
            timeout=timeout_ms)
        page.wait_for_timeout(3000)  # let the viewer render the meshes
        out_png.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(out_png), full_page=True)
        browser.close()


if __name__ == "__main__":
    screenshot_example(sys.argv[1], Path(sys.argv[2]))
