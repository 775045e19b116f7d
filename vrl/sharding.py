"""What the trainers need to run under FSDP2 (accelerate's `fsdp_version: 2`).

FSDP2 shards a prepared model in place: its parameters (and so the optimizer's state) become
DTensors, each process holding one slice. Four things follow, and each is kept here:

- accelerate 1.16 takes the FSDP plugin only on accelerator devices; on a CPU-only machine the
  processes form a gloo group (MULTI_CPU) and the plugin is dropped. `enable_fsdp_on_cpu` puts it
  back, so that the FSDP recipe runs on CPUs too (tests, and a CPU cluster);
- a checkpoint holds whole tensors, so that it reads the same whatever the process count or
  sharding: `full_tensor` gathers a slice into the whole (every process must call it) and
  `shard_like` cuts a whole tensor back into this process's slice;
- only a module's own `forward` unshards what it holds: generation (which calls the inner model)
  and the vision tower called on its own need the root module's parameters gathered first
  (`root_unsharded`);
- processes must run the same number of forwards, so `generate` keeps stepping on a process whose
  samples have all ended until every process's have (`synced_gpus`, see `is_sharded`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import torch

from vrl.errors import ConfigError


def fsdp_requested() -> bool:
    """Whether the launcher asked for FSDP (`accelerate launch` with an FSDP config sets this)."""
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"


def check_launch(cpu: bool) -> None:
    """Refuse the launches that would not train as asked: FSDP other than FSDP2 (the in-place
    sharding the trainers are written for), and DeepSpeed on CPUs, which accelerate 1.16 drops
    there for plain data parallelism without a word."""
    version = os.environ.get("FSDP_VERSION", "1")
    if fsdp_requested() and version != "2":
        raise ConfigError(
            f"FSDP version {version} is not supported: set fsdp_version: 2 in the accelerate config "
            "(FSDP_VERSION=2)"
        )
    if cpu and os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
        raise ConfigError(
            "DeepSpeed does not run on CPUs under accelerate (it would train unsharded): launch "
            "with configs/accelerate/fsdp.yaml, or torchrun, on CPUs"
        )


def enable_fsdp_on_cpu(accelerator: Any) -> None:
    """Turn a CPU process group (MULTI_CPU, gloo) into an FSDP2 one with the launcher's plugin
    settings (read from the FSDP_* variables); `prepare` then shards the model with `fully_shard`,
    which runs over gloo."""
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    state = accelerator.state
    state.fsdp_plugin = FullyShardedDataParallelPlugin()
    if state.mixed_precision != "no":
        state.fsdp_plugin.set_mixed_precision(state.mixed_precision)
    state.distributed_type = DistributedType.FSDP
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP


def is_sharded(model: torch.nn.Module) -> bool:
    """Whether `model` (or any module in it) was sharded by FSDP2."""
    from torch.distributed.fsdp import FSDPModule

    return any(isinstance(m, FSDPModule) for m in model.modules())


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a DTensor slice (a collective: every process calls it), else `t`."""
    from torch.distributed.tensor import DTensor

    return t.full_tensor() if isinstance(t, DTensor) else t


def shard_like(value: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """`value`, a whole tensor, cut to this process's slice when `like` is a DTensor (no
    communication: every process holds `value` whole), else `value` itself."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    if not isinstance(like, DTensor):
        return value
    value = value.to(device=like.device, dtype=like.dtype)
    return distribute_tensor(value, like.device_mesh, like.placements, src_data_rank=None)


@contextlib.contextmanager
def root_unsharded(model: torch.nn.Module) -> Iterator[None]:
    """Gather the root module's own parameters (embeddings, final norm, head, the vision tower's
    patch embedding and merger) for calls that bypass its `forward`; the sharded blocks inside
    still gather theirs as each runs. Nothing happens for an unsharded model."""
    from torch.distributed.fsdp import FSDPModule

    if not isinstance(model, FSDPModule):
        yield
        return
    # FSDP takes the first module to run as the root: make it this one, not a block inside
    model._get_fsdp_state()._lazy_init()
    model.unshard()
    try:
        yield
    finally:
        model.reshard()


def gather_optimizer_state(state: dict[str, Any]) -> dict[str, Any]:
    """An optimizer `state_dict()` with every DTensor gathered whole: the same layout an
    unsharded run saves (a collective: every process calls it)."""
    return {
        **state,
        "state": {
            index: {k: full_tensor(v) if torch.is_tensor(v) else v for k, v in entry.items()}
            for index, entry in state["state"].items()
        },
    }


def shard_optimizer_state(optimizer: torch.optim.Optimizer) -> None:
    """After `load_state_dict` of whole tensors: cut each parameter-shaped state tensor (Adam's
    moments) to the slice of its parameter, which is a DTensor under FSDP2."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            entry = optimizer.state.get(p, {})
            for key, value in entry.items():
                if torch.is_tensor(value) and value.shape == p.shape and value.dim() > 0:
                    entry[key] = shard_like(value, p)
