"""Prompt templates: a validated sample becomes the chat messages a processor understands.

The suffix decides what the format and accuracy rewards can parse, so templates are named and
looked up in one registry: a run's config says "rec", and training and evaluation build the same
prompt. The "answer_only" variants drop the <think> block for tiny models that cannot yet afford
to reason before answering.
"""

from __future__ import annotations

from typing import Any

from vrl.data.vlm_r1 import VLMSample

PROMPT_TEMPLATES: dict[str, str] = {
    "plain": "{question}",
    "think_answer": "{question} Output the thinking process in <think> </think> and final answer "
    "in <answer> </answer> tags.",
    # VLM-R1's REC question template, word for word (docs/algorithms.md, section 2.1): its
    # Qwen2VLModule.get_question_template("rec") (src/open-r1-multimodal/src/open_r1/
    # vlm_modules/qwen_module.py), which grpo_rec.py formats with the record's "problem".
    "rec": "{question} First output the thinking process in <think> </think> tags and then output "
    "the final answer in <answer> </answer> tags. Output the final answer in JSON format.",
    "answer_only": "{question} Output the final answer in <answer> </answer> tags.",
    "rec_answer_only": "{question} Output the final answer as a JSON box in <answer> </answer> tags.",
}
"""Template name -> text with a "{question}" slot."""


def register_prompt_template(name: str, template: str) -> None:
    """Add a template; a name that exists already is refused rather than silently replaced."""
    if name in PROMPT_TEMPLATES:
        raise ValueError(f"prompt template {name!r} already exists")
    if "{question}" not in template:
        raise ValueError(f"prompt template {name!r} has no {{question}} slot: {template!r}")
    PROMPT_TEMPLATES[name] = template


def format_prompt(question: str, template: str) -> str:
    """The prompt text of ``question`` under the named template."""
    if template not in PROMPT_TEMPLATES:
        valid = ", ".join(sorted(PROMPT_TEMPLATES))
        raise ValueError(f"unknown prompt template {template!r}; valid: {valid}")
    # replace(), not format(): a question may contain braces (JSON examples, set notation).
    return PROMPT_TEMPLATES[template].replace("{question}", question)


def build_messages(sample: VLMSample, template: str) -> list[dict[str, Any]]:
    """transformers chat messages for ``sample``: one user turn, its images first, then the text.

    The images go before the text whatever the position of the original <image> markers, as in
    VLM-R1; the processor fills each {"type": "image"} slot with the images passed alongside, in
    the order of ``sample.images``.
    """
    content: list[dict[str, Any]] = [{"type": "image"} for _ in sample.images]
    content.append({"type": "text", "text": format_prompt(sample.question, template)})
    return [{"role": "user", "content": content}]
