"""Facts about the processes a run is launched as, read from the configuration and the
launcher's environment before any Trainer exists (and without importing torch): how many
processes, which one writes the run's files, whether the command runs again per rank,
and each rank's share of the global batch."""

from __future__ import annotations

import os


def split_evenly(global_batch: int, world_size: int) -> int:
    """The per-rank batch of a global batch: the configured batch size is the global one."""
    if world_size < 1:
        raise ValueError(f"world size {world_size}: expected >= 1")
    if global_batch % world_size:
        raise ValueError(
            f"data.batch_size={global_batch} is the global batch and must divide evenly by the "
            f"number of processes ({world_size}: devices x nodes); use a multiple of {world_size}"
        )
    return global_batch // world_size


def configured_world_size(devices, num_nodes: int = 1) -> int | None:
    """The number of processes a Trainer config asks for, known before the Trainer
    exists: ``WORLD_SIZE`` when a launcher (torchrun, a re-launched rank) set it, else
    ``devices x num_nodes`` for an explicit device count or list; ``None`` for
    ``"auto"``/``-1`` (the Trainer decides; the batch split is checked again then)."""
    if "WORLD_SIZE" in os.environ:
        return int(os.environ["WORLD_SIZE"])
    if isinstance(devices, str) and devices.strip().isdigit():
        devices = int(devices)
    if isinstance(devices, int) and devices > 0:
        return devices * num_nodes
    if isinstance(devices, (list, tuple)):
        return len(devices) * num_nodes
    return None


def is_main_process() -> bool:
    """Whether this process is global rank 0 (or not distributed): the one that writes
    the run's files. Read from the launcher's environment, so it holds before the
    Trainer exists (torchrun sets ``RANK``; Lightning's re-launched ranks ``LOCAL_RANK``
    and ``NODE_RANK``)."""
    env = os.environ
    if "RANK" in env:
        return int(env["RANK"]) == 0
    return int(env.get("LOCAL_RANK", 0)) == 0 and int(env.get("NODE_RANK", 0)) == 0


def relaunches_command(strategy) -> bool:
    """Whether a strategy runs the whole command again once per rank (plain ``ddp``
    with Lightning's launcher, or any rank started by torchrun); ``ddp_spawn``
    starts workers inside the running process instead."""
    name = strategy if isinstance(strategy, str) else type(strategy).__name__.lower()
    launched_by_torchrun = "TORCHELASTIC_RUN_ID" in os.environ
    return launched_by_torchrun or (name.startswith("ddp") and "spawn" not in name and "notebook" not in name)
