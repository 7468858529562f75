"""Run checkpoints: weights, config and vocabularies in one file that `torch.load(weights_only=True)`
reads (plain dicts, lists, strings, numbers and tensors only)."""

from __future__ import annotations

from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cmrec.atomic import write_file
from cmrec.data.dataset import Vocabularies
from cmrec.errors import CmrecError
from cmrec.models.registry import DataSpec, build_model, model_config
from cmrec.output import RecModel
from cmrec.safe_load import load_weights_only

FORMAT = 1
CHECKPOINT = "checkpoint.pt"


def save_checkpoint(
    path: Path, name: str, config: Any, model: nn.Module, vocabs: Vocabularies, extra: dict[str, Any]
) -> None:
    write_payload(path, checkpoint_payload(name, config, model.state_dict(), vocabs, extra))


def checkpoint_payload(
    name: str, config: Any, state_dict: dict[str, Any], vocabs: Vocabularies, extra: dict[str, Any]
) -> dict[str, Any]:
    """What a checkpoint file holds (plain dicts, lists, strings, numbers and tensors)."""
    return {
        "format": FORMAT,
        "model": name,
        "config": {key: list(v) if isinstance(v, tuple) else v for key, v in asdict(config).items()},
        "state_dict": state_dict,
        "vocabs": vocabs.to_dict(),
        "extra": extra,
    }


def write_payload(path: Path, payload: dict[str, Any]) -> None:
    write_file(path, lambda scratch: torch.save(payload, scratch))  # never a half-written checkpoint


def load_checkpoint(path: Path) -> tuple[RecModel, Vocabularies, dict[str, Any]]:
    """Rebuild the model of a run; returns (model in eval mode, vocabularies, the payload)."""
    if not path.is_file():
        raise CmrecError(f"{path}: no checkpoint (is this a run folder written by `cmrec train`?)")
    return model_from_payload(read_payload(path), path)


def read_payload(path: Path) -> dict[str, Any]:
    payload: dict[str, Any] = load_weights_only(path, path)  # runs no code from the file
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else None
        raise CmrecError(f"{path}: checkpoint format {found!r}, expected {FORMAT}")
    return payload


def model_from_payload(
    payload: dict[str, Any], source: Path
) -> tuple[RecModel, Vocabularies, dict[str, Any]]:
    """The model (eval mode) and vocabularies of a checkpoint payload; `source` names it in errors."""
    vocabs = Vocabularies.from_dict(payload["vocabs"])
    defaults = model_config(payload["model"])
    tuple_fields = {f.name for f in fields(defaults) if isinstance(getattr(defaults, f.name), tuple)}
    # A saved config is the whole config. A field it lacks was added after it was saved: take the
    # config class's default (what the code that saved it did), never the preset's newer value.
    saved = {**asdict(type(defaults)()), **payload["config"]}
    config = {k: tuple(v) if k in tuple_fields else v for k, v in saved.items()}
    model = build_model(payload["model"], DataSpec.from_vocabs(vocabs), config)
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as exc:
        raise CmrecError(f"{source}: the weights do not fit model {payload['model']!r}: {exc}") from exc
    return model.eval(), vocabs, payload
