"""Helpers shared by the trainer tests and the scripts they launch under torchrun."""

from __future__ import annotations

import hashlib
import signal
import subprocess
import time
from pathlib import Path

import torch


def param_digest(model: torch.nn.Module) -> str:
    """A hash of every parameter's name and exact bytes: equal digests mean identical weights."""
    h = hashlib.sha256()
    for name, p in sorted(model.named_parameters()):
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def kill_after_checkpoint(cmd: list[str], run_dir: Path, step: int, timeout: float = 600) -> None:
    """Start a training command and SIGKILL it as soon as checkpoints/step-<step> exists.

    `timeout` only guards against a run that hangs: generous, since a loaded machine is slow."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    while not (run_dir / "checkpoints" / f"step-{step}").exists():
        assert proc.poll() is None and time.time() < deadline, "run ended before the checkpoint"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
