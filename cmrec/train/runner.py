"""Runners: how the epochs of a run execute. `fit` drives any `Runner`; `LocalRunner` is one
process, `cmrec.train.distributed.runner.ShardedRunner` one of several torchrun processes.

Both build their batches with `Batches` (sharded by user when asked), so a split is read the same
way everywhere.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from cmrec.data.batch import DenseSupervision, HistoryNegatives, make_loader
from cmrec.data.dataset import ClickLogData, Vocabularies
from cmrec.data.samples import NegativeSampler
from cmrec.output import ModelNeeds, RecModel
from cmrec.train.checkpoint import CHECKPOINT, checkpoint_payload, write_payload
from cmrec.train.loop import EpochResult, Predictions, predict, train_epoch
from cmrec.train.settings import TrainSettings


def history_negatives(needs: ModelNeeds, vocabs: Vocabularies, seed: int = 0) -> HistoryNegatives | None:
    """The per-event negatives a model's batches carry, when its `needs` say so."""
    if not needs.history_negatives:
        return None
    return HistoryNegatives(len(vocabs.items), vocabs.item_category, seed)


@dataclass(frozen=True)
class Batches:
    """The loaders of one run's splits. Only the training loader carries the model's dense
    targets, drawn anew each epoch; validation and test keep their held-out targets.

    Args:
        data: the run's data.
        needs: what the model declares (history negatives, dense targets).
        batch_size, seed: the run's settings.
        shard: (rank, world size): this process's users only; None: every user.
    """

    data: ClickLogData
    needs: ModelNeeds
    batch_size: int
    seed: int = 0
    shard: tuple[int, int] | None = None

    def loader(self, split: str, shuffle: bool = False, epoch: int = 0) -> Any:
        dense = None
        if split == "train" and self.needs.dense_targets is not None:
            rank = 0 if self.shard is None else self.shard[0]
            sampler = NegativeSampler(len(self.data.vocabs.items))  # uniform, as the held-out targets'
            dense = DenseSupervision(
                self.needs.dense_targets,
                sampler,
                self.data.vocabs.item_category,
                seed=(self.seed * 1000 + epoch) * 1009 + rank,
            )
        return make_loader(
            self.data.histories,
            self.data.split(split),
            self.batch_size,
            self.data.max_len,
            shuffle=shuffle,
            seed=self.seed * 1000 + epoch,
            negatives=history_negatives(self.needs, self.data.vocabs, self.seed),
            shard=self.shard,
            dense=dense,
        )


@dataclass(frozen=True)
class RunSpec:
    """What a runner trains: the registered name, its config, the freshly built model, the data,
    the settings, and the (scratch) run folder its files go to."""

    name: str
    config: Any
    model: RecModel
    data: ClickLogData
    settings: TrainSettings
    out: Path


class Runner(Protocol):
    """The steps `fit` takes; each runner decides how (one process, or sharded over several)."""

    is_main: bool  # the process that reports, writes the run's files and logs to MLflow

    def describe(self) -> dict[str, Any]:
        """Tracking parameters of this way of running (processes, sharding plan...)."""
        ...

    def report(self) -> dict[str, Any]:
        """What metrics.json records about this way of running ({} for one process)."""
        ...

    def train_epoch(self, epoch: int) -> EpochResult: ...

    def predict(self, split: str) -> Predictions:
        """Every sample of the split, in sample-row order, on every process."""
        ...

    def keep_best(self, extra: dict[str, Any]) -> None:
        """Remember the current weights as the best (and write them where the runner keeps them)."""
        ...

    def end_epoch(self, state: dict[str, Any]) -> None:
        """Save what a resumed run needs (runners that cannot resume save nothing)."""
        ...

    def resume(self) -> dict[str, Any]:
        """Restore the saved model and optimiser; return the saved loop state."""
        ...

    def restore_best(self) -> None: ...

    def finish(self) -> None: ...

    def close(self) -> None: ...


class LocalRunner:
    """One process: Adam over every parameter, the paper's optimiser. Not resumable."""

    is_main = True

    def __init__(self, spec: RunSpec) -> None:
        self.spec = spec
        self.batches = Batches(spec.data, spec.model.needs, spec.settings.batch_size, spec.settings.seed)
        self.model = spec.model
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=spec.settings.lr)
        self._best: dict[str, torch.Tensor] | None = None

    def describe(self) -> dict[str, Any]:
        return {}

    def report(self) -> dict[str, Any]:
        return {}

    def train_epoch(self, epoch: int) -> EpochResult:
        loader = self.batches.loader("train", shuffle=True, epoch=epoch)
        return train_epoch(self.model, loader, self.optimizer, f"epoch {epoch}")

    def predict(self, split: str) -> Predictions:
        return predict(self.model, self.batches.loader(split), desc=split)

    def keep_best(self, extra: dict[str, Any]) -> None:
        self._best = copy.deepcopy(self.model.state_dict())
        spec = self.spec
        payload = checkpoint_payload(spec.name, spec.config, self.model.state_dict(), spec.data.vocabs, extra)
        write_payload(spec.out / CHECKPOINT, payload)

    def end_epoch(self, state: dict[str, Any]) -> None:
        """Nothing to save: single-process runs are not resumable."""

    def resume(self) -> dict[str, Any]:
        raise NotImplementedError("a one-process run is not resumable")  # fit refuses resume without sharding

    def restore_best(self) -> None:
        assert self._best is not None, "restore_best before keep_best"
        self.model.load_state_dict(self._best)

    def finish(self) -> None:
        pass

    def close(self) -> None:
        pass
