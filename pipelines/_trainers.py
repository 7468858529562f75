"""The two ways `cmrec train` runs its epochs: one process, or several under torchrun.

Both offer the same steps to the epoch loop in `pipelines/train.py` (train an epoch, predict a
split, keep the best weights, save the loop's state, restore the best weights, finish the run
folder), so the loop is written once.
"""

from __future__ import annotations

import argparse
import copy
import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cmrec.data.batch import Batch, DenseSupervision, HistoryNegatives, UserShardBatchSampler, make_loader
from cmrec.data.dataset import ClickLogData
from cmrec.errors import CmrecError
from cmrec.train import distributed
from cmrec.train.checkpoint import (
    CHECKPOINT,
    checkpoint_payload,
    load_checkpoint,
    model_from_payload,
    read_payload,
    write_payload,
)
from cmrec.train.loop import EpochResult, Predictions, predict, train_epoch

DISTRIBUTED_DIR = "distributed"  # RUN/distributed/{best,last}/: torch.distributed.checkpoint folders
SPEC = "spec.pt"  # RUN/distributed/spec.pt: the checkpoint payload without weights (for `convert`)


class _Trainer:
    """What both trainers share: the run's settings and its loaders (sharded by user when `shard`).

    Only the training loader carries dense targets (`dense`), drawn anew each epoch; validation and
    test keep their held-out targets.
    """

    shard: tuple[int, int] | None = None  # (rank, world size)

    def __init__(
        self,
        args: argparse.Namespace,
        data: ClickLogData,
        negatives: HistoryNegatives | None,
        dense: DenseSupervision | None,
        name: str,
        config: Any,
    ) -> None:
        self.args, self.data, self.negatives, self.name, self.config = args, data, negatives, name, config
        self.dense = dense

    def loader(self, split: str, shuffle: bool = False, epoch: int = 0) -> Any:
        dense = None
        if split == "train" and self.dense is not None:
            rank = 0 if self.shard is None else self.shard[0]
            dense = replace(self.dense, seed=(self.args.seed * 1000 + epoch) * 1009 + rank)
        return make_loader(
            self.data.histories,
            self.data.split(split),
            self.args.batch_size,
            self.data.max_len,
            shuffle=shuffle,
            seed=self.args.seed * 1000 + epoch,
            negatives=self.negatives,
            shard=self.shard,
            dense=dense,
        )


class LocalTrainer(_Trainer):
    """One process: Adam over every parameter, the paper's optimiser."""

    is_main = True

    def __init__(
        self,
        args: argparse.Namespace,
        data: ClickLogData,
        model: nn.Module,
        negatives: HistoryNegatives | None,
        dense: DenseSupervision | None,
        name: str,
        config: Any,
    ) -> None:
        super().__init__(args, data, negatives, dense, name, config)
        self.model = model
        self.optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
        self._best: dict[str, torch.Tensor] | None = None

    def train_epoch(self, epoch: int) -> EpochResult:
        """Mean loss terms of one epoch, the samples and the labelled targets it trained on."""
        return train_epoch(self.model, self.loader("train", True, epoch), self.optimizer, f"epoch {epoch}")

    def predict(self, split: str) -> Predictions:
        return predict(self.model, self.loader(split), desc=split)

    def keep_best(self, extra: dict[str, Any]) -> None:
        self._best = copy.deepcopy(self.model.state_dict())
        payload = checkpoint_payload(self.name, self.config, self.model.state_dict(), self.data.vocabs, extra)
        write_payload(self.args.out / CHECKPOINT, payload)

    def end_epoch(self, loop_state: dict[str, Any]) -> None:
        """Nothing to save: single-process runs are not resumable."""

    def restore_best(self) -> None:
        assert self._best is not None
        self.model.load_state_dict(self._best)

    def plain_model(self) -> nn.Module:
        return self.model

    def finish(self) -> None:
        pass

    def close(self) -> None:
        pass


class DistributedTrainer(_Trainer):
    """One of several torchrun processes: sharded tables, DDP dense part, each rank its users.

    Writes RUN/distributed/last (model + optimiser + loop state, every epoch; `--resume` reads it),
    RUN/distributed/best (model, at the best validation epoch), RUN/distributed/spec.pt, and at the
    end RUN/checkpoint.pt converted from `best`, which evaluate, refresh and score load.
    """

    def __init__(
        self,
        args: argparse.Namespace,
        data: ClickLogData,
        model: nn.Module,
        negatives: HistoryNegatives | None,
        dense: DenseSupervision | None,
        name: str,
        config: Any,
    ) -> None:
        super().__init__(args, data, negatives, dense, name, config)
        self.cluster = distributed.Cluster.from_env()
        self.is_main = self.cluster.is_main
        self.shard = (self.cluster.rank, self.cluster.world_size)
        options = distributed.ShardingOptions(
            sharding=args.sharding,
            embedding_optimizer=args.embedding_optimizer,
            embedding_lr=args.embedding_lr,
            dense_lr=args.lr,
        )
        self.model, self.optimizer, plan = distributed.shard_model(model, self.cluster, options)
        self.plan = distributed.describe_plan(plan)
        self.folder = args.out / DISTRIBUTED_DIR
        if self.is_main:
            self.folder.mkdir(parents=True, exist_ok=True)
            write_payload(self.folder / SPEC, checkpoint_payload(name, config, {}, data.vocabs, {}))
        torch.manual_seed(args.seed * 1000 + self.cluster.rank)  # sampled items differ per rank

    def _on_device(self, loader: Any) -> Iterator[Batch]:
        for batch in loader:
            yield batch.to(self.cluster.device)

    def train_epoch(self, epoch: int) -> EpochResult:
        loader = self.loader("train", True, epoch)
        local = train_epoch(
            self.model, self._on_device(loader), self.optimizer, f"epoch {epoch}", total=len(loader)
        )
        return EpochResult(*self.cluster.mean_losses(local.losses, local.samples, local.targets))

    def predict(self, split: str) -> Predictions:
        loader = self.loader(split)
        sampler: UserShardBatchSampler = loader.batch_sampler
        local = predict(self.model, self._on_device(loader), desc=split, total=len(loader))
        return self.cluster.gather_predictions(local, sampler.rows(), len(self.data.split(split)))

    def keep_best(self, extra: dict[str, Any]) -> None:
        distributed.save_distributed(self.folder / "best", self.cluster, self.model, None, {"extra": extra})

    def end_epoch(self, loop_state: dict[str, Any]) -> None:
        distributed.save_distributed(
            self.folder / "last", self.cluster, self.model, self.optimizer, loop_state
        )

    def resume(self) -> dict[str, Any]:
        """The loop state of RUN/distributed/last, with model and optimiser restored from it."""
        return distributed.load_distributed(self.folder / "last", self.cluster, self.model, self.optimizer)

    def restore_best(self) -> None:
        distributed.load_distributed(self.folder / "best", self.cluster, self.model, None)
        if self.is_main:
            convert_distributed(self.folder / "best", self.args.out / CHECKPOINT)
        self.cluster.barrier()

    def plain_model(self) -> nn.Module:
        model, _, _ = load_checkpoint(self.args.out / CHECKPOINT)
        return model

    def finish(self) -> None:
        """Every rank waits here until rank 0 has written and logged the run: a rank that tore its
        process group down while rank 0 still logged to MLflow was seen to abort (SIGABRT,
        "terminate called without an active exception") in a CI run."""
        self.cluster.barrier()

    def close(self) -> None:
        self.cluster.close()


def convert_distributed(source: Path, target: Path) -> dict[str, Any]:
    """Write the single-process checkpoint of a distributed checkpoint folder (best or last).

    Reads RUN/distributed/spec.pt beside `source` for the model name, config and vocabularies;
    checks that the weights fit the model before writing; returns the written payload.
    """
    found = distributed.complete_checkpoint(source)
    if found is None:
        raise CmrecError(
            f"{source}: not a whole distributed checkpoint folder (no .metadata or trainer state)"
        )
    source = found
    spec_path = source.parent / SPEC
    if not spec_path.is_file():
        raise CmrecError(f"{spec_path}: missing; {source} is not inside a run's {DISTRIBUTED_DIR}/ folder")
    payload = read_payload(spec_path)
    payload["state_dict"] = distributed.plain_state_dict(source)
    state = _read_json(source / distributed.TRAINER_STATE)
    if "extra" in state:  # best: what the single-process run records
        payload["extra"] = state["extra"]
    else:  # last: the newest epoch
        params = state.get("params", {})
        payload["extra"] = {"max_len": int(params.get("max_len", 0)), "epoch": state["next_epoch"] - 1}
        payload["extra"]["params"] = params
    model_from_payload(payload, source)  # raises when the weights do not fit
    target.parent.mkdir(parents=True, exist_ok=True)
    write_payload(target, payload)
    return payload


def _read_json(path: Path) -> dict[str, Any]:
    try:
        loaded: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CmrecError(f"{path}: cannot read the trainer state: {exc}") from exc
    return loaded
