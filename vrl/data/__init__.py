"""Data: the VLM-R1 JSONL format, prompt templates, and small generated datasets."""

from vrl.data.prompts import (
    PROMPT_TEMPLATES,
    build_messages,
    format_prompt,
    register_prompt_template,
)
from vrl.data.synthetic import write_colour_yes_no, write_detection, write_rec_boxes
from vrl.data.vlm_r1 import (
    DataError,
    VLMSample,
    load_image,
    load_sample_images,
    load_vlm_r1_jsonl,
)

__all__ = [
    "PROMPT_TEMPLATES",
    "DataError",
    "VLMSample",
    "build_messages",
    "format_prompt",
    "load_image",
    "load_sample_images",
    "load_vlm_r1_jsonl",
    "register_prompt_template",
    "write_colour_yes_no",
    "write_detection",
    "write_rec_boxes",
]
