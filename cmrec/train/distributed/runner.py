"""`ShardedRunner`: one of several torchrun processes, driven by `cmrec.train.fit`."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch

from cmrec.data.batch import Batch, UserShardBatchSampler
from cmrec.train.checkpoint import CHECKPOINT, checkpoint_payload, write_payload
from cmrec.train.distributed.checkpoints import (
    DISTRIBUTED_DIR,
    SPEC,
    convert_distributed,
    load_distributed,
    save_distributed,
)
from cmrec.train.distributed.cluster import Cluster
from cmrec.train.distributed.sharding import ShardingOptions, describe_plan, shard_model
from cmrec.train.loop import EpochResult, Predictions, predict, train_epoch
from cmrec.train.runner import Batches, RunSpec


class ShardedRunner:
    """Sharded tables, a DDP dense part, each rank its own users.

    Writes RUN/distributed/last (model + optimiser + loop state, every epoch; `resume` reads it),
    RUN/distributed/best (model, at the best validation epoch), RUN/distributed/spec.pt, and at the
    end RUN/checkpoint.pt converted from `best`, which evaluate, refresh and score load.
    """

    def __init__(self, spec: RunSpec, options: ShardingOptions) -> None:
        self.spec, self.options = spec, options
        self.cluster = Cluster.from_env()
        self.is_main = self.cluster.is_main
        settings = spec.settings
        self.batches = Batches(
            spec.data,
            spec.model.needs,
            settings.batch_size,
            settings.seed,
            shard=(self.cluster.rank, self.cluster.world_size),
        )
        self.model, self.optimizer, plan = shard_model(spec.model, self.cluster, options)
        self.plan = describe_plan(plan)
        self.folder = spec.out / DISTRIBUTED_DIR
        if self.is_main:
            self.folder.mkdir(parents=True, exist_ok=True)
            payload = checkpoint_payload(spec.name, spec.config, {}, spec.data.vocabs, {})
            write_payload(self.folder / SPEC, payload)
        torch.manual_seed(settings.seed * 1000 + self.cluster.rank)  # sampled items differ per rank

    def describe(self) -> dict[str, Any]:
        return {
            "processes": self.cluster.world_size,
            "backend": self.cluster.backend,
            "sharding": self.options.sharding,
            "embedding_optimizer": self.options.embedding_optimizer,
            "embedding_lr": self.options.embedding_lr,
            **{f"plan.{table}": placed for table, placed in self.plan.items()},
        }

    def report(self) -> dict[str, Any]:
        return {
            "distributed": {
                "processes": self.cluster.world_size,
                "backend": self.cluster.backend,
                "plan": self.plan,
                "embedding_optimizer": self.options.embedding_optimizer,
            }
        }

    def _on_device(self, loader: Iterable[Batch]) -> Iterator[Batch]:
        for batch in loader:
            yield batch.to(self.cluster.device)

    def train_epoch(self, epoch: int) -> EpochResult:
        loader = self.batches.loader("train", shuffle=True, epoch=epoch)
        local = train_epoch(
            self.model, self._on_device(loader), self.optimizer, f"epoch {epoch}", total=len(loader)
        )
        return EpochResult(*self.cluster.mean_losses(local.losses, local.samples, local.targets))

    def predict(self, split: str) -> Predictions:
        loader = self.batches.loader(split)
        sampler: UserShardBatchSampler = loader.batch_sampler
        local = predict(self.model, self._on_device(loader), desc=split, total=len(loader))
        return self.cluster.gather_predictions(local, sampler.rows(), len(self.spec.data.split(split)))

    def keep_best(self, extra: dict[str, Any]) -> None:
        save_distributed(self.folder / "best", self.cluster, self.model, None, {"extra": extra})

    def end_epoch(self, state: dict[str, Any]) -> None:
        save_distributed(self.folder / "last", self.cluster, self.model, self.optimizer, state)

    def resume(self) -> dict[str, Any]:
        """The loop state of RUN/distributed/last, with model and optimiser restored from it."""
        return load_distributed(self.folder / "last", self.cluster, self.model, self.optimizer)

    def restore_best(self) -> None:
        load_distributed(self.folder / "best", self.cluster, self.model, None)
        if self.is_main:
            convert_distributed(self.folder / "best", self.spec.out / CHECKPOINT)
        self.cluster.barrier()

    def finish(self) -> None:
        """Every rank waits here until rank 0 has written and logged the run: a rank that tore its
        process group down while rank 0 still logged to MLflow was seen to abort (SIGABRT,
        "terminate called without an active exception") in a CI run."""
        self.cluster.barrier()

    def close(self) -> None:
        self.cluster.close()
