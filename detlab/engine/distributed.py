"""Training on several processes with torch.distributed, as ``torchrun`` launches them (no launcher of detlab's).

    torchrun --nproc_per_node=4 tools/train_det.py --config configs/yolov3_resnet50_voc.yaml
    torchrun --nnodes=2 --node_rank=0 --nproc_per_node=8 --rdzv_backend=c10d --rdzv_endpoint=host0:29500 \\
        tools/train_det.py ...

``torchrun`` sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; :func:`setup` joins the process group they describe
(NCCL on GPUs, gloo on CPUs) and gives each process its device (``cuda:LOCAL_RANK``). Without them (a plain
``python tools/train_det.py``) it is a world of one process and every function here is a no-op.

The rules a run follows on N processes (the trainer applies them):

- ``train.batch_size`` is per process: a step trains on N x batch_size images;
- the LR is ``train.lr`` x N (the linear scaling rule of Goyal et al., "Accurate, Large Minibatch SGD", which
  Detectron2's reference scaling and MMDetection's ``auto_scale_lr`` also follow), warmup unchanged in epochs;
- each epoch, one permutation of the training set (seeded by ``train.seed`` + epoch, the same on every process) is
  dealt out round-robin, so the images of step k on N processes with batch b are those of
  step k of one process with batch N x b (:class:`~detlab.data.loader.ShardSampler`); aspect-ratio grouping
  then batches each process's share;
- evaluation deals whole batches of the validation set out round-robin
  (:class:`~detlab.data.loader.ShardBatchSampler`), without padding, and gathers the predictions in dataset order
  on process 0, which scores them for all: each image is predicted in the same batch as on one process, so the
  metric is the same;
- process 0 alone prints, logs and writes checkpoints; the EMA is broadcast from it at the end of every epoch, so
  every process evaluates and continues with the same average (its BatchNorm statistics otherwise drift apart:
  each process normalises its own images).
"""

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from detlab.engine.runtime import DeviceError


@dataclass(frozen=True)
class World:
    """Where this process stands: ``rank`` of ``size`` processes, ``local_rank`` on its machine."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Whether this process prints, logs and writes files (rank 0)."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


SINGLE = World()


def world_from_env() -> World:
    """The world ``torchrun`` describes in ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK``; one process without them."""
    names = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
    values = {}
    for name in names:
        raw = os.environ.get(name)
        if raw is not None:
            try:
                values[name] = int(raw)
            except ValueError:
                raise ValueError(f"environment variable {name}={raw!r} is not an integer (torchrun sets it)") from None
    if values.get("WORLD_SIZE", 1) <= 1:
        return SINGLE
    missing = [name for name in names[:2] if name not in values]
    if missing:
        raise ValueError(f"WORLD_SIZE={values['WORLD_SIZE']} but {', '.join(missing)} is not set: launch with torchrun")
    return World(values["RANK"], values["WORLD_SIZE"], values.get("LOCAL_RANK", values["RANK"]))


def setup(device: torch.device) -> World:
    """Join the process group of ``torchrun``'s environment (once; later calls return the same world), on
    ``device`` (a CUDA device means NCCL and ``cuda:LOCAL_RANK``, see :func:`process_device`, else gloo). One
    process without torchrun's variables: nothing to join."""
    global _joined
    world = world_from_env()
    if world.distributed and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            if world.local_rank >= torch.cuda.device_count():
                raise DeviceError(f"process LOCAL_RANK={world.local_rank} has no GPU of its own: this machine has "
                                  f"{torch.cuda.device_count()}; start at most that many processes per machine "
                                  f"(torchrun --nproc_per_node)")
            torch.cuda.set_device(world.local_rank)
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=30))
        _joined = True
    return world


def teardown() -> None:
    """Leave the process group :func:`setup` joined (a no-op without one; a group the caller made stays)."""
    global _joined
    if _joined and dist.is_initialized():
        dist.destroy_process_group()
    _joined = False


_joined = False  # whether setup() made the process group, so teardown() ends it


def process_device(device: torch.device, world: World) -> torch.device:
    """This process's device: ``cuda:LOCAL_RANK`` when the run is on CUDA and distributed (one GPU per process, as
    torchrun's ``--nproc_per_node`` = GPUs per machine), else ``device`` as given."""
    if device.type == "cuda" and world.distributed:
        return torch.device("cuda", world.local_rank)
    return device


def convert_sync_batchnorm(model: nn.Module) -> nn.Module:
    """Replace, in place, every trainable ``nn.BatchNorm2d`` by a ``torch.nn.SyncBatchNorm`` (statistics over
    the whole distributed batch); frozen BatchNorms (:class:`detlab.transfer.FrozenBatchNorm2d`, a subclass) stay
    frozen, which torch's own ``convert_sync_batchnorm`` would undo."""
    for name, child in model.named_children():
        if type(child) is nn.BatchNorm2d:
            sync = nn.SyncBatchNorm(child.num_features, child.eps, child.momentum, child.affine,
                                    child.track_running_stats)
            sync.load_state_dict(child.state_dict())
            setattr(model, name, sync.to(child.weight.device if child.affine else child.running_mean.device))
        else:
            convert_sync_batchnorm(child)
    return model


def broadcast_module(module: nn.Module, world: World) -> None:
    """Give every process rank 0's parameters and buffers of ``module`` (in place)."""
    if world.distributed:
        for tensor in module.state_dict().values():
            dist.broadcast(tensor, src=0)


def broadcast_object(value, world: World):
    """Rank 0's ``value`` (any picklable object) on every process, e.g. its clock, so that all plan the same
    epochs, or the evaluation it scored."""
    if not world.distributed:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def mean_over_processes(values: torch.Tensor, world: World) -> torch.Tensor:
    """The mean of ``values`` (any shape) over the processes, on every process (one all-reduce)."""
    if not world.distributed:
        return values
    values = values.clone()
    dist.all_reduce(values)  # SUM: gloo has no AVG
    return values / world.size


def gather_in_order(items: list, world: World) -> list:
    """The ``(position, value)`` pairs of every process, on process 0, as the values sorted by position (process
    ``r``'s ``items`` are what :class:`~detlab.data.loader.ShardBatchSampler` gave it); an empty list on the other
    processes, which do not score (only process 0 needs them, so they travel once)."""
    if not world.distributed:
        return [value for _, value in sorted(items, key=lambda pair: pair[0])]
    gathered = [None] * world.size if world.is_main else None
    dist.gather_object(items, gathered, dst=0)
    if not world.is_main:
        return []
    return [value for _, value in sorted((pair for part in gathered for pair in part), key=lambda pair: pair[0])]
