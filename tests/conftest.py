"""Test session settings: never touch the network, keep CPU threads predictable."""

import os
import tempfile

# An accidental hub download must fail fast, not hang: nothing can be downloaded here or in CI.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# tiny models are built once per test session, never into the user's cache
os.environ.setdefault("VRL_CACHE", tempfile.mkdtemp(prefix="vrl-test-cache-"))

import torch  # noqa: E402

torch.set_num_threads(min(2, os.cpu_count() or 1))
