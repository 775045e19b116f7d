"""Make docs/demo.png: `vrl demo` with a trained LoRA beside its base model, in headless Chromium.

    python docs/make_demo_screenshot.py --lora runs/quickstart/hicogen/run/final --out docs/demo.png

Serves the demo on a free local port with the default model (the shapes-world checkpoint) and the
given adapter, types a shapes-world prompt, presses generate, waits for both columns and the reward
tables, and saves a full-page screenshot. Needs Debian's `chromium` and Playwright for Python (the
dev extra), as the demo's browser test does.
"""

from __future__ import annotations

import argparse
import re
import shutil
import socket
import sys

PROMPT = "a small red circle to the left of a large blue square"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lora", default=None, help="trained adapter (side by side with the base)")
    parser.add_argument("--model", default=None, help="default: the demo's DEFAULT_MODEL")
    parser.add_argument("--prompt", default=PROMPT)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="docs/demo.png")
    args = parser.parse_args(argv)

    from playwright.sync_api import sync_playwright

    from vrl.demo.app import launch
    from vrl.demo.settings import DEFAULT_MODEL, DemoSettings

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        sys.exit("needs Debian's chromium (apt-get install -y chromium)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = DemoSettings(model=args.model or DEFAULT_MODEL, lora=args.lora)
    app, url = launch(settings, port=port, block=False)
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=chromium,
                headless=True,
                args=["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"],
            )
            page = browser.new_page(viewport={"width": 1280, "height": 1500})
            page.set_default_timeout(120_000)
            page.goto(url)
            page.locator("#prompt textarea").fill(args.prompt)
            seed = page.locator("#seed input")
            if seed.count():
                seed.first.fill(str(args.seed))
            page.locator("#generate").click()
            page.locator("#status").get_by_text(re.compile(r"^done$")).wait_for()
            page.wait_for_function(
                "() => [...document.querySelectorAll('#final-a img')]"
                ".every(img => img.complete && img.naturalWidth > 0)"
            )
            page.wait_for_timeout(500)
            page.screenshot(path=args.out, full_page=True)
            browser.close()
    finally:
        app.close()
    print(f"screenshot: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
