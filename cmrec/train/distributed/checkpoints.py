"""Distributed checkpoints: `torch.distributed.checkpoint` folders (each rank writes its own
shards), written to a scratch folder and renamed when complete, and their conversion into the
single-process checkpoint that evaluate, refresh and score load (no process group needed).

A multi-process run keeps RUN/distributed/{best,last}/ and RUN/distributed/spec.pt (the
checkpoint payload without weights: model name, config, vocabularies).

Reading a folder runs no code from it: torch's reader unpickles `.metadata` and the non-tensor
values with the full unpickler, so `_SafeReader` reads the metadata with an allow-list of the
classes a DCP metadata file holds, and `_SafePlanner` / `_SafeFullPlanner` read every value with
`torch.load(weights_only=True)` (cmrec.safe_load).
"""

from __future__ import annotations

import io
import json
import shutil
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint._traverse import set_element
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner, _EmptyStateDictLoadPlanner
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta
from torch.distributed.checkpoint.planner import ReadItem
from torch.distributed.checkpoint.state_dict_loader import _load_state_dict
from torchrec.optim.keyed import KeyedOptimizer

from cmrec.atomic import aside_folder, partial_folder, swap_in
from cmrec.errors import CmrecError
from cmrec.safe_load import load_weights_only, restricted_unpickle
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
    trainer_state = _read_json(path / TRAINER_STATE)
    state: dict[str, Any] = {"model": model.state_dict()}
    if optimizer is not None:
        state["optimizer"] = optimizer.state_dict()
    with _cmrec_errors_first():
        dcp.load(state, storage_reader=_SafeReader(path), planner=_SafePlanner(path))
    model.load_state_dict(state["model"])
    if optimizer is not None:
        optimizer.load_state_dict(state["optimizer"])
    rng = path / f"rng-rank{cluster.rank}.pt"
    if trainer_state.get("world_size") == cluster.world_size and rng.is_file():
        torch.set_rng_state(load_weights_only(rng, rng, "an RNG state file")["torch"])
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
    loaded: dict[str, Any] = {}
    reader, planner = _SafeReader(path), _SafeFullPlanner(path, keys={"model"})
    with _cmrec_errors_first():
        _load_state_dict(loaded, storage_reader=reader, planner=planner, no_dist=True)
    if not isinstance(loaded.get("model"), dict):
        raise CmrecError(f"{path}: a distributed checkpoint without model weights")
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
        loaded = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CmrecError(f"{path}: cannot read the trainer state: {exc}") from exc
    if not isinstance(loaded, dict):
        raise CmrecError(f"{path}: the trainer state is a JSON {type(loaded).__name__}, not an object")
    return loaded


def _dcp_metadata_allowed() -> dict[str, Callable[[str], bool]]:
    """The globals a `.metadata` pickle of `dcp.save` names (checked on torch 2.13's files)."""
    metadata = {
        "Metadata", "MetadataIndex", "StorageMeta", "TensorStorageMetadata", "BytesStorageMetadata",
        "ChunkStorageMetadata", "TensorProperties", "_MEM_FORMAT_ENCODING",
    }  # fmt: skip
    paths = {"PosixPath", "PurePosixPath", "WindowsPath", "PureWindowsPath"}
    return {
        "torch.distributed.checkpoint.metadata": metadata.__contains__,
        "torch.distributed.checkpoint.filesystem": {"_StorageInfo"}.__contains__,
        "torch": lambda name: name == "Size" or isinstance(getattr(torch, name, None), torch.dtype),
        "torch.serialization": {"_get_layout"}.__contains__,
        "pathlib": paths.__contains__,
        "collections": {"OrderedDict"}.__contains__,
    }


class _SafeReader(FileSystemReader):
    """torch's folder reader, with `.metadata` read once, up front, with an allow-list instead of
    `pickle.load` (a refused file is a clear error before torch's collectives start)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        name, what = path / ".metadata", "a distributed checkpoint's metadata"
        with open(name, "rb") as stream:
            metadata = restricted_unpickle(stream, name, _dcp_metadata_allowed(), what)
        if not isinstance(metadata, Metadata) or not isinstance(metadata.state_dict_metadata, dict):
            raise CmrecError(f"{name}: not {what} (it holds a {type(metadata).__name__}); not loaded")
        self._metadata = metadata

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        storage_meta = getattr(self._metadata, "storage_meta", None) or StorageMeta()
        storage_meta.load_id = self.load_id
        self._metadata.storage_meta = storage_meta
        return self._metadata


@contextmanager
def _cmrec_errors_first() -> Iterator[None]:
    """A `CmrecError` raised inside torch's checkpoint collectives (a refused value), unwrapped
    from the CheckpointException that carries it, so that the user sees its one line."""
    try:
        yield
    except CheckpointException as exc:
        for failure, _ in exc.failures.values():
            if isinstance(failure, CmrecError):
                raise failure from None
        raise


def _load_value(planner: DefaultLoadPlanner, folder: Path, read_item: ReadItem, value: io.BytesIO) -> None:
    """DefaultLoadPlanner.load_bytes with `torch.load(weights_only=True)` (torch's uses False)."""
    name = f"{folder} (value {read_item.dest_index.fqn!r})"
    loaded = load_weights_only(value, name, "a value cmrec checkpoints hold")
    if planner.flatten_state_dict:
        set_element(planner.original_state_dict, planner.mappings[read_item.dest_index.fqn], loaded)
    else:
        planner.state_dict[read_item.dest_index.fqn] = loaded


class _SafePlanner(DefaultLoadPlanner):
    """Loads `folder` into an existing state dict (`dcp.load`); non-tensor values read weights-only."""

    def __init__(self, folder: Path) -> None:
        super().__init__()
        self.folder = folder

    def load_bytes(self, read_item: ReadItem, value: io.BytesIO) -> None:
        _load_value(self, self.folder, read_item, value)


class _SafeFullPlanner(_EmptyStateDictLoadPlanner):
    """Rebuilds the state dict of `folder` under `keys` from its metadata (no model needed);
    values read weights-only."""

    def __init__(self, folder: Path, keys: set[str]) -> None:
        super().__init__(keys=keys)
        self.folder = folder

    def load_bytes(self, read_item: ReadItem, value: io.BytesIO) -> None:
        _load_value(self, self.folder, read_item, value)
