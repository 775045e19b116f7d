"""The demo as a person uses it: served on a free local port, driven in a real headless Chromium.

Needs Debian's `chromium` (`apt-get install chromium`; .ci/run installs it) and Playwright for
Python (the dev extra), which drives that browser: no browser is ever downloaded.
Set VRL_DEMO_SCREENSHOT=path to keep the screenshot (docs/demo.png was made that way).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
from pathlib import Path

import pytest
from _demo import PROMPT, shared_engine

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="Debian's chromium is not installed (apt-get install -y chromium); .ci/run installs it",
)
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def url():
    from vrl.demo.app import launch

    engine = shared_engine()
    app, local_url = launch(engine.settings, port=free_port(), engine=engine, block=False)
    yield local_url
    app.close()


@pytest.fixture(scope="module")
def page(url, tmp_path_factory):
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")),  # a fresh user-data-dir
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 1500},
        )
        page = browser.new_page()
        page.set_default_timeout(90_000)
        expect.set_options(timeout=30_000)
        yield page
        browser.close()


def test_an_oversize_prompt_gets_the_limit_message_in_the_page(page, url):
    page.goto(url)
    page.locator("#prompt textarea").fill("a red circle " * 40)
    page.locator("#generate").click()
    page.get_by_text("prompt: has 519 characters; this demo takes at most 300").wait_for()
    assert page.locator("#final-a img").count() == 0  # refused before any compute


def test_the_api_refuses_what_the_page_would_not_send(url):
    """A client can post anything: the demo's checks answer with the argument and its limit,
    and the server goes on serving (the next test generates)."""
    from gradio_client import Client

    client = Client(url, verbose=False)
    values = dict(seed=0, steps=2, guidance=1.0, chain=True, sampler="sde")
    values |= dict(schedule="decaying", noise_level=0.7, strength=0.7, num_images=1)
    for change, message in [
        ({"steps": 500}, "steps: must be a whole number from 1 to 50, got 500"),
        ({"num_images": 64}, "num_images: must be a whole number from 1 to 4, got 64"),
        ({"sampler": "cps"}, "sampler: must be one of ode, sde, got 'cps'"),
        ({"chain": "no"}, "chain: must be true or false"),
    ]:
        with pytest.raises(Exception, match=message):
            client.predict(PROMPT, *{**values, **change}.values(), api_name="/generate")
    with pytest.raises(Exception, match="this demo takes at most 300"):
        client.predict("x" * 301, *values.values(), api_name="/generate")


def test_a_prompt_is_generated_and_scored_in_the_browser(page, url, tmp_path):
    from playwright.sync_api import expect

    page.goto(url)
    page.locator("#prompt textarea").fill(PROMPT)
    page.locator("#generate").click()
    page.locator("#status").get_by_text(re.compile(r"^done$")).wait_for()

    # images arrive as URLs: wait until the browser has them decoded, not just the <img> tags
    loaded = "img => img.complete && img.naturalWidth"
    page.wait_for_function(
        f"() => [...document.querySelectorAll('#final-a img')].map({loaded})[0] >= 256"
    )
    page.wait_for_function(
        f"() => [...document.querySelectorAll('#chain-a img')].filter({loaded}).length === 3"
    )  # unit 1, unit 2, the final pass
    assert page.locator("#final-a img").count() == 1

    expect(page.locator("#units")).to_contain_text("A small red circle")
    expect(page.locator("#units")).to_contain_text("A large blue square")
    levels = page.locator("#reward-levels")
    for header in ("global", "subject", "relation", "total"):
        expect(levels).to_contain_text(header)
    # a score for each of the three levels, and the total
    expect(levels).to_contain_text(re.compile(r"\d\.\d{3}(\D+\d\.\d{3}){3}"))
    expect(page.locator("#reward-subjects")).to_contain_text("a small red circle")
    expect(page.locator("#reward-subjects")).to_contain_text("a large blue square")
    expect(page.locator("#reward-relations")).to_contain_text("circle left of square")

    shot = tmp_path / "demo.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 20_000
    if os.environ.get("VRL_DEMO_SCREENSHOT"):
        target = Path(os.environ["VRL_DEMO_SCREENSHOT"])
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, target)
