"""Multi-process training with TorchRec: the only module that knows about process groups.

`cmrec train --nproc N` starts N processes with ``torchrun --standalone``; several machines run
plain ``torchrun`` (see the README). In each process:

- `Cluster.from_env` joins the process group torchrun describes (RANK, WORLD_SIZE, LOCAL_RANK,
  MASTER_ADDR...): gloo on CPU, nccl with one GPU per process.
- `shard_model` wraps a registered model (CM or a baseline: every model embeds through
  `ItemEmbeddings`, a TorchRec `EmbeddingCollection`) in `DistributedModelParallel`. The
  `EmbeddingShardingPlanner` plans the tables over a `Topology` of the world; the sharding type
  is table-wise, row-wise, column-wise, or the planner's choice among those three (data-parallel
  sharding of an `EmbeddingCollection` fails in TorchRec, so it is never offered). Dense parts
  are data-parallel (DDP, gradients averaged over ranks).
- Optimisers: the tables get a fused optimiser applied in the backward pass (RowWiseAdagrad by
  default; Adagrad or SGD; fused Adam only on GPU, FBGEMM refuses it on CPU), the dense parameters
  Adam; one `CombinedOptimizer` steps both. Lazy optimiser state is created when the optimiser is
  built, so a checkpoint always holds (and restores) every state.
- Checkpoints are `torch.distributed.checkpoint` folders (each rank writes its own shards),
  written to a scratch folder and renamed when complete. `plain_state_dict` reads one back
  without any process group, for the single-process checkpoint that evaluate, refresh and score
  load.

TorchRec's sharded tables sum the gradients that all ranks send to a row, while DDP averages the
dense gradients; with RowWiseAdagrad (scale-adaptive) this matters little.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed._shard.sharded_tensor import ShardedTensor
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save
from torchrec.distributed.embedding import EmbeddingCollectionSharder
from torchrec.distributed.model_parallel import DistributedModelParallel
from torchrec.distributed.planner import EmbeddingShardingPlanner, ParameterConstraints, Topology
from torchrec.distributed.planner.storage_reservations import FixedPercentageStorageReservation
from torchrec.distributed.types import ShardingPlan, ShardingType
from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward
from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizer, KeyedOptimizerWrapper
from torchrec.optim.optimizers import in_backward_optimizer_filter
from torchrec.optim.rowwise_adagrad import RowWiseAdagrad

from cmrec.atomic import aside_folder, partial_folder, swap_in
from cmrec.embeddings.tables import ItemEmbeddings
from cmrec.errors import CmrecError, ConfigError
from cmrec.train.loop import Predictions

SHARDING_TYPES: dict[str, list[str]] = {
    "table-wise": [ShardingType.TABLE_WISE.value],
    "row-wise": [ShardingType.ROW_WISE.value],
    "column-wise": [ShardingType.COLUMN_WISE.value],
    "auto": [ShardingType.TABLE_WISE.value, ShardingType.ROW_WISE.value, ShardingType.COLUMN_WISE.value],
}
EMBEDDING_OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "rowwise-adagrad": RowWiseAdagrad,
    "adagrad": torch.optim.Adagrad,
    "sgd": torch.optim.SGD,
    "adam": torch.optim.Adam,  # fused Adam: GPU only
}
GPU_ONLY_OPTIMIZERS = ("adam",)
TRAINER_STATE = "trainer.json"


@dataclass(frozen=True)
class ShardingOptions:
    """How a model is distributed and optimised.

    Args:
        sharding: "auto" (the planner's choice), "table-wise", "row-wise" or "column-wise".
        embedding_optimizer: fused optimiser of the sharded tables: "rowwise-adagrad" (one
            accumulator per row), "adagrad", "sgd", or "adam" (GPU only).
        embedding_lr: its learning rate.
        dense_lr: Adam's learning rate for every other parameter (paper: 1e-3).
    """

    sharding: str = "auto"
    embedding_optimizer: str = "rowwise-adagrad"
    embedding_lr: float = 0.01
    dense_lr: float = 1e-3

    def __post_init__(self) -> None:
        if self.sharding not in SHARDING_TYPES:
            raise ConfigError(f"sharding must be one of {', '.join(SHARDING_TYPES)}, got {self.sharding!r}")
        if self.embedding_optimizer not in EMBEDDING_OPTIMIZERS:
            raise ConfigError(
                f"embedding optimizer must be one of {', '.join(EMBEDDING_OPTIMIZERS)}, "
                f"got {self.embedding_optimizer!r}"
            )
        if not (self.embedding_lr > 0 and self.dense_lr > 0):
            raise ConfigError("learning rates must be > 0")

    def check_device(self, device_type: str) -> None:
        """Refuse a table optimiser that cannot run on `device_type` ("cpu" or "cuda")."""
        if self.embedding_optimizer in GPU_ONLY_OPTIMIZERS and device_type != "cuda":
            raise ConfigError(
                f"the fused {self.embedding_optimizer!r} embedding optimizer runs on GPU only (FBGEMM "
                "refuses it on CPU); use rowwise-adagrad, adagrad or sgd"
            )


@dataclass(frozen=True)
class Cluster:
    """This process's place among the training processes.

    Args:
        rank, world_size: this process and the number of processes (all machines).
        local_rank, local_world_size: the same on this machine.
        device: cuda:LOCAL_RANK when CUDA is available, else cpu.
        backend: "nccl" with GPUs, "gloo" on CPU.
    """

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    device: torch.device
    backend: str

    @classmethod
    def from_env(cls, timeout_s: float = 1800.0) -> Cluster:
        """Join the process group that torchrun's environment variables describe."""
        missing = [v for v in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
        if missing:
            raise CmrecError(f"not started by torchrun: {', '.join(missing)} unset (use --nproc N)")
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local_rank = int(os.environ.get("LOCAL_RANK", rank))
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
        if torch.cuda.is_available():
            device, backend = torch.device("cuda", local_rank), "nccl"
            torch.cuda.set_device(device)
        else:
            device, backend = torch.device("cpu"), "gloo"
        if not dist.is_initialized():
            dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
        _quiet_known_warnings()
        return cls(rank, world, local_rank, local_world, device, backend)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        dist.barrier()

    def sum(self, values: Sequence[float]) -> list[float]:
        """Element-wise sum over ranks (float64)."""
        tensor = torch.tensor(list(values), dtype=torch.float64, device=self.device)  # nccl: on the GPU
        dist.all_reduce(tensor)
        return tensor.cpu().tolist()

    def mean_losses(
        self, losses: Mapping[str, float], samples: int, targets: int
    ) -> tuple[dict[str, float], int, int]:
        """Sample-weighted means of per-rank loss means over all ranks (same keys on every rank),
        and the samples and labelled targets of all ranks; one collective."""
        names = sorted(losses)
        sums = self.sum([losses[n] * samples for n in names] + [float(samples), float(targets)])
        means = {n: s / max(sums[-2], 1.0) for n, s in zip(names, sums[:-2], strict=True)}
        return means, int(sums[-2]), int(sums[-1])

    def gather_predictions(self, predictions: Predictions, rows: np.ndarray, num_rows: int) -> Predictions:
        """All ranks' predictions in sample-row order, each row once (wrapped-around repeats dropped).

        Every rank gets the same result, so metrics are computed once, from all predictions.
        """
        if len(rows) != len(predictions.scores):
            raise CmrecError(f"{len(rows)} rows for {len(predictions.scores)} predictions")
        local = (rows, predictions.labels, predictions.scores, predictions.users)
        parts: list[Any] = [None] * self.world_size
        dist.all_gather_object(parts, local)
        all_rows = np.concatenate([p[0] for p in parts])
        rows_once, first = np.unique(all_rows, return_index=True)
        if len(rows_once) != num_rows or (num_rows and rows_once[-1] != num_rows - 1):
            raise CmrecError(f"gathered predictions cover {len(rows_once)} of {num_rows} samples")

        def pick(i: int) -> np.ndarray:
            return np.concatenate([p[i] for p in parts])[first]

        return Predictions(labels=pick(1), scores=pick(2), users=pick(3))

    def close(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()


def shard_model(
    model: nn.Module, cluster: Cluster, options: ShardingOptions
) -> tuple[DistributedModelParallel, CombinedOptimizer, ShardingPlan]:
    """Shard `model`'s tables, wrap its dense part in DDP, and build the optimiser.

    `model` is a freshly built registered model, the same on every rank (build it after seeding);
    the sharded model starts from exactly its weights.
    """
    embeddings = _item_embeddings(model)
    options.check_device(cluster.device.type)
    initial = model.state_dict()  # detached references: the unsharded tables outlive sharding here
    optimizer_type = EMBEDDING_OPTIMIZERS[options.embedding_optimizer]
    apply_optimizer_in_backward(
        optimizer_type, embeddings.collection.parameters(), {"lr": options.embedding_lr}
    )
    sharders: list[Any] = [EmbeddingCollectionSharder()]
    plan = plan_sharding(model, cluster, options.sharding, sharders)
    sharded = DistributedModelParallel(model, device=cluster.device, plan=plan, sharders=sharders)
    copy_into_shards(sharded, initial)
    dense = KeyedOptimizerWrapper(
        dict(in_backward_optimizer_filter(sharded.named_parameters())),
        lambda params: torch.optim.Adam(params, lr=options.dense_lr),
    )
    init_optimizer_state(dense)
    return sharded, CombinedOptimizer([sharded.fused_optimizer, dense]), plan


def plan_sharding(model: nn.Module, cluster: Cluster, sharding: str, sharders: list[Any]) -> ShardingPlan:
    """The planner's plan for `model`'s tables under one sharding choice, agreed by all ranks."""
    embeddings = _item_embeddings(model)
    # Column-wise shards of dim / world_size columns (the planner's default minimum is 128).
    min_partition = max(4, embeddings.dim // cluster.world_size)
    constraints = {
        key: ParameterConstraints(sharding_types=SHARDING_TYPES[sharding], min_partition=min_partition)
        for key in embeddings.keys
    }
    topology = Topology(
        world_size=cluster.world_size,
        compute_device=cluster.device.type,
        local_world_size=cluster.local_world_size,
    )
    planner = EmbeddingShardingPlanner(
        topology=topology,
        constraints=constraints,
        storage_reservation=FixedPercentageStorageReservation(0.15),  # of each device's memory
    )
    return planner.collective_plan(model, sharders, dist.GroupMember.WORLD)


def describe_plan(plan: ShardingPlan) -> dict[str, str]:
    """Table name -> "sharding type on ranks [...]" (for logs and MLflow)."""
    described = {}
    for module_plan in plan.plan.values():
        for table, spec in module_plan.items():
            described[table] = f"{spec.sharding_type} on ranks {spec.ranks}"
    return described


def init_optimizer_state(optimizer: KeyedOptimizer) -> None:
    """Create lazy optimiser state now (one zero-gradient step), then undo the step count.

    Checkpoint loading copies into existing state; state created later would silently keep its
    fresh values. Adam's first real step then is step 1, as without this call.
    """
    optimizer.init_state()
    for state in optimizer.state.values():
        step = state.get("step")
        if isinstance(step, torch.Tensor):
            step.zero_()
        elif step is not None:
            state["step"] = 0
    optimizer.zero_grad(set_to_none=True)


def copy_into_shards(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Copy a plain (unsharded) state dict into a sharded model: each rank its own shards."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    if missing:
        raise CmrecError(f"the plain state lacks {', '.join(missing[:5])}")
    with torch.no_grad():
        for key, target in own.items():
            full = state[key]
            if isinstance(target, ShardedTensor):
                if tuple(target.size()) != tuple(full.shape):
                    raise CmrecError(f"{key}: sharded size {tuple(target.size())} != {tuple(full.shape)}")
                for shard in target.local_shards():
                    rows, cols = shard.metadata.shard_offsets
                    height, width = shard.metadata.shard_sizes
                    shard.tensor.copy_(full[rows : rows + height, cols : cols + width])
            else:
                target.copy_(full)


def save_distributed(
    path: Path,
    cluster: Cluster,
    model: nn.Module,
    optimizer: KeyedOptimizer | None,
    trainer_state: Mapping[str, Any],
) -> None:
    """Write a distributed checkpoint folder: model (and optimiser) shards, the trainer's state,
    and every rank's RNG state. Written beside `path` and renamed when complete."""
    scratch = partial_folder(path)
    if cluster.is_main:
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir(parents=True)
    cluster.barrier()
    state: dict[str, Any] = {"model": model.state_dict()}
    if optimizer is not None:
        state["optimizer"] = optimizer.state_dict()
    dcp.save(state, checkpoint_id=scratch)
    torch.save({"torch": torch.get_rng_state()}, scratch / f"rng-rank{cluster.rank}.pt")
    cluster.barrier()
    if cluster.is_main:
        (scratch / TRAINER_STATE).write_text(
            json.dumps({**trainer_state, "world_size": cluster.world_size}, indent=2) + "\n"
        )
        swap_in(scratch, path)
    cluster.barrier()


def load_distributed(
    path: Path, cluster: Cluster, model: nn.Module, optimizer: KeyedOptimizer | None
) -> dict[str, Any]:
    """Load a `save_distributed` folder into a sharded model (and optimiser); returns the trainer state.

    The world size may differ from the saving run's (the planner's shards are resharded); the RNG
    state is restored only when it is the same.
    """
    found = complete_checkpoint(path)
    if found is None:
        raise CmrecError(f"{path}: not a distributed checkpoint folder written by `cmrec train --nproc`")
    path = found
    trainer_state: dict[str, Any] = json.loads((path / TRAINER_STATE).read_text())
    state: dict[str, Any] = {"model": model.state_dict()}
    if optimizer is not None:
        state["optimizer"] = optimizer.state_dict()
    dcp.load(state, checkpoint_id=path)
    model.load_state_dict(state["model"])
    if optimizer is not None:
        optimizer.load_state_dict(state["optimizer"])
    rng = path / f"rng-rank{cluster.rank}.pt"
    if trainer_state.get("world_size") == cluster.world_size and rng.is_file():
        torch.set_rng_state(torch.load(rng, weights_only=True)["torch"])
    return trainer_state


def complete_checkpoint(path: Path) -> Path | None:
    """`path` when it holds a whole checkpoint; else the previous one that `save_distributed` set
    aside (`aside_folder`) when interrupted between two renames (systems without an atomic
    exchange); else None."""
    for candidate in (path, aside_folder(path)):
        if (candidate / ".metadata").is_file() and (candidate / TRAINER_STATE).is_file():
            return candidate
    return None


def plain_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The full (unsharded) model weights of a distributed checkpoint; needs no process group."""
    if not (path / ".metadata").is_file():
        raise CmrecError(f"{path}: not a distributed checkpoint folder (no .metadata)")
    with tempfile.TemporaryDirectory(prefix=".cmrec-convert-", dir=path.parent) as scratch:
        target = Path(scratch) / "full.pt"
        dcp_to_torch_save(path, target)
        loaded = torch.load(target, weights_only=True)
    return dict(loaded["model"])


def launch(nproc: int, argv: Sequence[str]) -> int:
    """Run ``cmrec ARGV`` in `nproc` processes on this machine (``torchrun --standalone``).

    ``--nproc`` is left out of the children's command line (torchrun sets their world, and its own
    parser would take ``--nproc`` for an abbreviation of ``--nproc-per-node``).
    """
    forwarded: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            forwarded.append(arg)
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        "cmrec.cli",
        *forwarded,
    ]
    return subprocess.run(command, check=False).returncode


def _quiet_known_warnings() -> None:
    """Silence TorchRec's and torch's deprecation notices about their own internals (once per rank,
    they drown the training log; none is about cmrec's use)."""
    for message in ("Please use DTensor instead", "`broadcast_buffers` is deprecated"):
        warnings.filterwarnings("ignore", message=message, category=FutureWarning)
    logging.getLogger("torchrec.distributed.planner.types").setLevel(logging.ERROR)


def _item_embeddings(model: nn.Module) -> ItemEmbeddings:
    embeddings = getattr(model, "embeddings", None)
    if not isinstance(embeddings, ItemEmbeddings):
        raise ConfigError(f"{type(model).__name__} has no ItemEmbeddings to shard")
    return embeddings
