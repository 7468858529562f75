"""Distributed checkpoints: `torch.distributed.checkpoint` folders (each rank writes its own
shards), written to a scratch folder and renamed when complete, and their conversion into the
single-process checkpoint that evaluate, refresh and score load (no process group needed).

A multi-process run keeps RUN/distributed/{best,last}/ and RUN/distributed/spec.pt (the
checkpoint payload without weights: model name, config, vocabularies).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save
from torchrec.optim.keyed import KeyedOptimizer

from cmrec.atomic import aside_folder, partial_folder, swap_in
from cmrec.errors import CmrecError
from cmrec.train.checkpoint import model_from_payload, read_payload, write_payload
from cmrec.train.distributed.cluster import Cluster

TRAINER_STATE = "trainer.json"
DISTRIBUTED_DIR = "distributed"  # RUN/distributed/{best,last}/: torch.distributed.checkpoint folders
SPEC = "spec.pt"  # RUN/distributed/spec.pt: the checkpoint payload without weights (for `convert`)


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


def convert_distributed(source: Path, target: Path) -> dict[str, Any]:
    """Write the single-process checkpoint of a distributed checkpoint folder (best or last).

    Reads RUN/distributed/spec.pt beside `source` for the model name, config and vocabularies;
    checks that the weights fit the model before writing; returns the written payload.
    """
    found = complete_checkpoint(source)
    if found is None:
        raise CmrecError(
            f"{source}: not a whole distributed checkpoint folder (no .metadata or trainer state)"
        )
    source = found
    spec_path = source.parent / SPEC
    if not spec_path.is_file():
        raise CmrecError(f"{spec_path}: missing; {source} is not inside a run's {DISTRIBUTED_DIR}/ folder")
    payload = read_payload(spec_path)
    payload["state_dict"] = plain_state_dict(source)
    state = _read_json(source / TRAINER_STATE)
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
