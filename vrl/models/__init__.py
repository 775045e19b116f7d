"""Model adapters (`vlm`) and tiny offline test models (`tiny`) for the RL trainers."""

from vrl.models.batch import Completions, PromptBatch
from vrl.models.tiny import build_tiny_vlm, build_vlm_tokenizer, save_tiny_vlm, tiny_vlm_path
from vrl.models.vlm import BoxConvention, VLMAdapter

__all__ = [
    "BoxConvention",
    "Completions",
    "PromptBatch",
    "VLMAdapter",
    "build_tiny_vlm",
    "build_vlm_tokenizer",
    "save_tiny_vlm",
    "tiny_vlm_path",
]
