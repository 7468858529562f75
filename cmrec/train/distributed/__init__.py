"""Multi-process training with TorchRec: the only package that knows about process groups.

`cmrec train --nproc N` starts N processes with ``torchrun --standalone`` (the launch lives with
the CLI, in `cmrec.pipelines._launch`); several machines run plain ``torchrun`` (see docs/training.md).
In each process:

- `cluster`: `Cluster.from_env` joins the process group torchrun describes (RANK, WORLD_SIZE,
  LOCAL_RANK, MASTER_ADDR...): gloo on CPU, nccl with one GPU per process; loss means and
  predictions are gathered over it.
- `sharding`: `shard_model` plans and shards the embedding tables, wraps the dense part in DDP
  and builds the fused table optimiser and the dense Adam.
- `checkpoints`: distributed checkpoint folders, and their conversion into a plain checkpoint.
- `runner`: `ShardedRunner`, the `cmrec.train.runner.Runner` that `cmrec.train.fit` drives.
"""

from cmrec.train.distributed.checkpoints import (
    DISTRIBUTED_DIR,
    SPEC,
    TRAINER_STATE,
    complete_checkpoint,
    convert_distributed,
    load_distributed,
    plain_state_dict,
    save_distributed,
)
from cmrec.train.distributed.cluster import Cluster, torchrun_world
from cmrec.train.distributed.sharding import (
    EMBEDDING_OPTIMIZERS,
    GPU_ONLY_OPTIMIZERS,
    SHARDING_TYPES,
    ShardingOptions,
    copy_into_shards,
    describe_plan,
    init_optimizer_state,
    plan_sharding,
    shard_model,
)

__all__ = [
    "DISTRIBUTED_DIR",
    "EMBEDDING_OPTIMIZERS",
    "GPU_ONLY_OPTIMIZERS",
    "SHARDING_TYPES",
    "SPEC",
    "TRAINER_STATE",
    "Cluster",
    "ShardingOptions",
    "complete_checkpoint",
    "convert_distributed",
    "copy_into_shards",
    "describe_plan",
    "init_optimizer_state",
    "load_distributed",
    "plain_state_dict",
    "plan_sharding",
    "save_distributed",
    "shard_model",
    "torchrun_world",
]
