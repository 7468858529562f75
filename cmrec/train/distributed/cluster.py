"""This process's place among the training processes: the process group torchrun describes."""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from cmrec.errors import CmrecError
from cmrec.train.loop import Predictions


def torchrun_world() -> tuple[int, int] | None:
    """(rank, world size) when torchrun started this process (RANK and WORLD_SIZE set), else None."""
    if "WORLD_SIZE" in os.environ and "RANK" in os.environ:
        return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    return None


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


def _quiet_known_warnings() -> None:
    """Silence TorchRec's and torch's deprecation notices about their own internals (once per rank,
    they drown the training log; none is about cmrec's use)."""
    for message in ("Please use DTensor instead", "`broadcast_buffers` is deprecated"):
        warnings.filterwarnings("ignore", message=message, category=FutureWarning)
    logging.getLogger("torchrec.distributed.planner.types").setLevel(logging.ERROR)
