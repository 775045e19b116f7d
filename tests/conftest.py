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

# OMP_NUM_THREADS, when set, wins: on a shared machine a second thread can make a test 10x slower
torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or 0) or min(2, os.cpu_count() or 1))
