"""The demo's API as any HTTP client sees it (issue 20, item 8): every refused call is answered
with a message naming the argument, is one line on the server's console (no traceback), and
SIGTERM removes the demo's image folder."""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest
from _demo import PROMPT, unscored_engine

VALUES = dict(prompt=PROMPT, seed=0, steps=1, guidance=1.0, chain=True, sampler="ode")
VALUES |= dict(schedule="decaying", noise_level=0.7, strength=0.7, num_images=1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    from vrl.demo.app import launch

    engine = unscored_engine()
    app, local_url = launch(engine.settings, port=free_port(), engine=engine, block=False)
    yield local_url
    app.close()


def call(url: str, data: list) -> tuple[str, object]:
    """POST the values as raw JSON (NaN included, as Python's json writes it), then read the
    event stream: (last event name, its data)."""
    body = json.dumps({"data": data})
    post = httpx.post(
        f"{url}gradio_api/call/generate",
        content=body,
        headers={"content-type": "application/json"},
        timeout=30,
    )
    post.raise_for_status()
    stream = httpx.get(f"{url}gradio_api/call/generate/{post.json()['event_id']}", timeout=120)
    event = data_line = None
    for line in stream.text.splitlines():
        if line.startswith("event:"):
            event = line.split(":", 1)[1].strip()
        elif line.startswith("data:"):
            data_line = line.split(":", 1)[1].strip()
    return event, json.loads(data_line)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"steps": "2"}, "steps: must be a whole number from 1 to 50, got '2'"),
        ({"seed": "abc"}, "seed: must be a whole number from 0 to 2147483647, got 'abc'"),
        ({"seed": math.nan}, "seed: must be a whole number from 0 to 2147483647, got nan"),
        ({"guidance": "1.5"}, "guidance: must be a number from 0 to 15, got '1.5'"),
        ({"chain": "no"}, "chain: must be true or false (a JSON boolean), got 'no'"),
        ({"chain": 0}, "chain: must be true or false (a JSON boolean), got 0"),
        ({"sampler": 3}, "sampler: must be one of ode, sde, got 3"),
        ({"prompt": 7}, "prompt: must be text, got 7"),
        ({"steps": 500}, "steps: must be a whole number from 1 to 50, got 500"),
        ({"prompt": "x" * 301}, "prompt: has 301 characters; this demo takes at most 300."),
        (3, "guidance, chain, sampler, schedule, noise_level, strength, num_images: missing;"),
        (0, "prompt, seed, steps, guidance, chain, sampler, schedule, noise_level, strength,"),
    ],
)
def test_a_refused_call_names_the_argument_in_one_line(url, change, message, caplog, capfd):
    data = (
        list(VALUES.values())[:change]
        if isinstance(change, int)
        else [*{**VALUES, **change}.values()]
    )
    with caplog.at_level(logging.WARNING, logger="vrl.demo"):
        event, answer = call(url, data)
    assert event == "error" and answer["title"] == "Request refused"
    assert answer["error"].startswith(message)
    refused = [r for r in caplog.records if r.name.startswith("vrl.demo")]
    assert [r.getMessage() for r in refused] == [f"refused a request: {answer['error']}"]
    assert refused[0].exc_info is None
    out, err = capfd.readouterr()
    assert "Traceback" not in out + err


def test_a_good_call_still_generates(url):
    """The values reach the handler as sent (Gradio's preprocessing is off): a good call works."""
    event, answer = call(url, list({**VALUES, "seed": 3.0}.values()))
    assert event == "complete"
    status, units = answer[0], answer[1]
    assert status.startswith("**done**") and "seed 3," in status
    assert [row[0] for row in units["data"]] == ["unit 1", "unit 2", "final"]
    assert answer[5]["path"].endswith(".png")  # the final image


SERVE = """
import sys, types
from vrl.demo.app import launch
from vrl.demo.engine import DemoEngine
from vrl.demo.settings import DemoSettings

settings = DemoSettings(reward="none", size=32)
# a stand-in for the model (loading one takes long): what the page reads of it before a request
model = types.SimpleNamespace(sigmas=lambda steps, height, width: None, trained_on_references=True)
engine = DemoEngine(settings, adapter=model, reward=("none", None))
launch(settings, engine=engine, port=int(sys.argv[1]))  # serves as `vrl demo` does, blocking
"""


def test_sigterm_removes_the_image_folder(tmp_path):
    """The demo's server killed with SIGTERM (kill, systemd, docker stop) removes its image
    folder and exits with 128 + 15, as it would have without a handler."""
    port = free_port()
    env = {**os.environ, "TMPDIR": str(tmp_path), "GRADIO_ANALYTICS_ENABLED": "False"}
    server = subprocess.Popen(
        [sys.executable, "-c", SERVE, str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while True:  # until the page answers
            assert server.poll() is None, server.communicate()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the demo did not start"
            time.sleep(0.1)
        folders = list(tmp_path.glob("vrl-demo-*"))
        assert len(folders) == 1 and folders[0].is_dir()
        (folders[0] / "made-earlier.png").write_bytes(b"an image")  # not empty: as after use
        # and on the server's own console a refused call is one line
        assert call(f"http://127.0.0.1:{port}/", [PROMPT, 0])[0] == "error"
        server.send_signal(signal.SIGTERM)
        _, err = server.communicate(timeout=30)
    finally:
        if server.poll() is None:
            server.kill()
            server.communicate()
    assert server.returncode == 128 + signal.SIGTERM, err
    assert not folders[0].exists()
    assert "Traceback" not in err and f"removed {folders[0]}" in err
    refused = [line for line in err.splitlines() if "steps, guidance" in line]
    assert refused == ["refused a request: steps, guidance, chain, sampler, schedule, noise_level, "
                       "strength, num_images: missing; this call takes 10 values (prompt, seed, "
                       "steps, guidance, chain, sampler, schedule, noise_level, strength, "
                       "num_images), got 2"]  # fmt: skip
