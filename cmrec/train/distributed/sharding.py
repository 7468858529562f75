"""Sharding a model over the processes and building its optimisers (TorchRec).

`shard_model` wraps a registered model (CM or a baseline: every model embeds through
`ItemEmbeddings`, a TorchRec `EmbeddingCollection`) in `DistributedModelParallel`. The
`EmbeddingShardingPlanner` plans the tables over a `Topology` of the world; the sharding type is
table-wise, row-wise, column-wise, or the planner's choice among those three (data-parallel
sharding of an `EmbeddingCollection` fails in TorchRec, so it is never offered). Dense parts are
data-parallel (DDP, gradients averaged over ranks).

Optimisers: the tables get a fused optimiser applied in the backward pass (RowWiseAdagrad by
default; Adagrad or SGD; fused Adam only on GPU, FBGEMM refuses it on CPU), the dense parameters
Adam; one `CombinedOptimizer` steps both. Lazy optimiser state is created when the optimiser is
built, so a checkpoint always holds (and restores) every state.

TorchRec's sharded tables sum the gradients that all ranks send to a row, while DDP averages the
dense gradients; with RowWiseAdagrad (scale-adaptive) this matters little.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed._shard.sharded_tensor import ShardedTensor
from torchrec.distributed.embedding import EmbeddingCollectionSharder
from torchrec.distributed.model_parallel import DistributedModelParallel
from torchrec.distributed.planner import EmbeddingShardingPlanner, ParameterConstraints, Topology
from torchrec.distributed.planner.storage_reservations import FixedPercentageStorageReservation
from torchrec.distributed.types import ShardingPlan, ShardingType
from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward
from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizer, KeyedOptimizerWrapper
from torchrec.optim.optimizers import in_backward_optimizer_filter
from torchrec.optim.rowwise_adagrad import RowWiseAdagrad

from cmrec.embeddings.tables import ItemEmbeddings
from cmrec.errors import CmrecError, ConfigError
from cmrec.output import RecModel
from cmrec.train.distributed.cluster import Cluster

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


def _item_embeddings(model: nn.Module) -> ItemEmbeddings:
    embeddings = model.embeddings if isinstance(model, RecModel) else None
    if not isinstance(embeddings, ItemEmbeddings):
        raise ConfigError(f"{type(model).__name__} has no ItemEmbeddings to shard")
    return embeddings
