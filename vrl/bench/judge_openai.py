"""The "openai" judge: an OpenAI-compatible chat-completions endpoint answers every question of an
image, the GPT-4o-style protocol of the HiCoGen paper's HiCoPrompt evaluation.

One request per image: the image as a base64 PNG data URL and the numbered questions, at
temperature 0, asking for a JSON object {"1": "yes", "2": "no", ...}. The reply is read
leniently (the first JSON object in it, `vrl.hicogen.extract_json_object`); "yes"/"no",
true/false or a number in [0, 1] per question; a question without a readable answer is None
(left out of the score). A failed request is retried `max_retries` times, then every question of
that image is None and the error is kept in `last_errors`.

Only `urllib.request` is used; `opener(request, timeout=...)` defaults to
`urllib.request.urlopen`, and tests pass a fake or point `base_url` at a local server.
The API key is read from the `api_key` argument or the OPENAI_API_KEY environment variable.
"""

from __future__ import annotations

import base64
import io
import json
import os
import urllib.request
from collections.abc import Callable
from typing import Any

INSTRUCTION = (
    "You are judging whether an image matches a description. Look at the image and answer each "
    "question with yes or no. Answer only from what is visible.\n\nQuestions:\n{questions}\n\n"
    'Reply with only a JSON object mapping each question number to "yes" or "no", e.g. '
    '{{"1": "yes", "2": "no"}}.'
)


class OpenAIJudge:
    name = "openai"

    def __init__(
        self,
        base_url: str,
        model: str = "gpt-4o",
        *,
        api_key: str | None = None,
        timeout: float = 120.0,
        max_retries: int = 2,
        max_tokens: int = 1024,
        opener: Callable[..., Any] | None = None,
    ):
        url = base_url.rstrip("/")
        self.url = url if url.endswith("/chat/completions") else url + "/chat/completions"
        self.model = model
        self.api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
        self.timeout, self.max_retries, self.max_tokens = timeout, max_retries, max_tokens
        self.opener = opener or urllib.request.urlopen
        self.last_errors: list[str | None] = []

    def request_body(self, image, questions) -> dict[str, Any]:
        numbered = "\n".join(f"{k}. {q.text}" for k, q in enumerate(questions, 1))
        return {
            "model": self.model,
            "temperature": 0,
            "max_tokens": self.max_tokens,
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": INSTRUCTION.format(questions=numbered)},
                        {"type": "image_url", "image_url": {"url": _data_url(image)}},
                    ],
                }
            ],
        }

    def _post(self, body: dict[str, Any]) -> str:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(
            self.url, json.dumps(body).encode(), headers, method="POST"
        )
        with self.opener(request, timeout=self.timeout) as response:
            payload = json.loads(response.read().decode("utf-8"))
        return payload["choices"][0]["message"]["content"] or ""

    def answer(self, images, scenes, questions) -> list[dict[str, float | None]]:
        from vrl.hicogen.decompose import extract_json_object

        if not len(images) == len(scenes) == len(questions):
            raise ValueError("images, scenes and questions must have one entry per image")
        out, self.last_errors = [], []
        for image, qs in zip(images, questions, strict=True):
            answers: dict[str, float | None] = {q.id: None for q in qs}
            error = None
            if qs:
                body = self.request_body(image, qs)
                for _ in range(self.max_retries + 1):
                    try:
                        reply = extract_json_object(self._post(body))
                        for k, q in enumerate(qs, 1):
                            answers[q.id] = parse_yes_no(reply.get(str(k), reply.get(k)))
                        error = None
                        break
                    except Exception as err:  # a flaky endpoint must not stop a benchmark run
                        error = f"{type(err).__name__}: {err}"
            out.append(answers)
            self.last_errors.append(error)
        return out


def parse_yes_no(value: Any) -> float | None:
    """ "yes" -> 1.0, "no" -> 0.0, booleans, numbers in [0, 1]; anything else None."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float):
        return float(value) if 0.0 <= value <= 1.0 else None
    if isinstance(value, str):
        word = value.strip().strip(".!").lower()
        return {"yes": 1.0, "no": 0.0, "true": 1.0, "false": 0.0}.get(word)
    return None


def _data_url(image) -> str:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
