"""Data-parallel training over the processes `torchrun --nproc_per_node=N -m runner ...` starts: one model, every
rank taking its shard of each global batch (trainer.batch_size is the global batch) from the device-resident
data; gradients averaged by DistributedDataParallel (NCCL on GPUs, gloo on CPUs); only rank 0 writes the run
directory. torch is imported inside the functions: `python -m runner` imports this module at start-up."""

import os
import sys
from dataclasses import dataclass

from runner.config import CONFIG_DIR, ConfigError, register_resolvers


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Whether this process writes logs, metrics, checkpoints and TensorBoard events."""
        return self.rank == 0


def world() -> World:
    """This process's place, from the environment torchrun sets (a plain run is rank 0 of 1)."""
    env = os.environ
    return World(int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0)))


def init() -> None:
    """Join the process group once: gloo for CPU tensors and, where CUDA and NCCL are there, NCCL for CUDA tensors
    (each rank on GPU LOCAL_RANK)."""
    import torch
    import torch.distributed as dist

    if dist.is_initialized():
        return
    w = world()
    if torch.cuda.is_available() and dist.is_nccl_available():
        torch.cuda.set_device(w.local_rank % torch.cuda.device_count())
        dist.init_process_group("cpu:gloo,cuda:nccl")
    else:
        dist.init_process_group("gloo")


def agree_on_run_dir(argv: list[str]) -> list[str]:
    """Under torchrun, every rank composes its own config, and `${now:}` / `${runner_uid:}` differ between ranks:
    rank 0 resolves hydra.run.dir and sends it to the others, and every rank runs with that `hydra.run.dir=`
    override. Ranks other than 0 also leave out Hydra's .hydra/ copy and log file (rank 0 writes them). Returns
    argv unchanged for a plain run, a multirun, or an explicit hydra.run.dir."""
    w = world()
    if w.size == 1 or any(a.startswith("--cfg") or a in ("--help", "-h") for a in argv[1:]):
        return argv
    if any(a in ("-m", "--multirun") for a in argv[1:]):
        refuse_multirun()
    import torch.distributed as dist

    init()
    given = [a.split("=", 1)[1] for a in argv[1:] if a.startswith("hydra.run.dir=")]
    message = [given[0] if given else _resolve_run_dir()] if w.main else [None]
    dist.broadcast_object_list(message, src=0)
    extra = [] if given else [f"hydra.run.dir={message[0]}"]
    if not w.main:
        # (config.yaml's `delay` for the log file would otherwise leave the disabled logging a handler without a
        # class)
        extra += ["hydra.output_subdir=null", "hydra/job_logging=disabled", "~hydra.job_logging.handlers"]
    return [*argv, *extra]


def _resolve_run_dir() -> str:
    """config.yaml's hydra.run.dir pattern, resolved as Hydra would."""
    from hydra.core.utils import setup_globals
    from omegaconf import OmegaConf

    setup_globals()  # Hydra's ${now:} resolver
    register_resolvers()
    pattern = OmegaConf.load(CONFIG_DIR / "config.yaml").hydra.run.dir
    return str(OmegaConf.create({"dir": pattern}).dir)


def wrap(model, w: World, device, sync_batch_norm: bool):
    """`model` for data-parallel training: batch norm synchronized over ranks when asked, inside
    DistributedDataParallel. The unwrapped model stays the one to checkpoint and evaluate."""
    import torch
    from torch.nn.parallel import DistributedDataParallel

    if sync_batch_norm:
        if device.type != "cuda":
            raise ConfigError("trainer.sync_batch_norm=true needs CUDA devices (torch's SyncBatchNorm has no CPU "
                              "kernel); set trainer.sync_batch_norm=false on CPUs.")
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    ids = [device.index] if device.type == "cuda" else None
    return model, DistributedDataParallel(model, device_ids=ids)


def shard(x, w: World):
    """This rank's contiguous slice of a global batch (its size divisible by the world size, checked at start)."""
    if w.size == 1:
        return x
    n = len(x) // w.size
    return x[w.rank * n:(w.rank + 1) * n]


def sum_(*tensors) -> None:
    """Sum each tensor over the ranks, in place (a no-op for a single process)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        for t in tensors:
            dist.all_reduce(t)


def from_main(obj):
    """Rank 0's value of `obj` on every rank (so that all ranks take the same decisions: early stopping, plateau)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def close() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def refuse_multirun() -> None:
    print("error: a multirun (-m) cannot be data-parallel: run torchrun once per configuration", file=sys.stderr)
    sys.exit(2)
