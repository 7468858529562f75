"""A user's stored memory state and its byte encoding.

Shape letters: K slots, d_m slot width, P pending clicks (< N, the segment length).
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch

from cmrec.errors import CmrecError

MemoryDtype = Literal["float32", "float16", "bfloat16"]
MEMORY_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}


class StoreError(CmrecError):
    """The memory store is missing, damaged, or was written by another model."""


@dataclass(frozen=True)
class UserState:
    """Everything the store keeps for one user.

    Args:
        user_id: the raw user id, as a string (7 and "7" are one user, as in the vocabularies).
        memory: (K, d_m) float32, the memory after every complete segment consumed so far.
        pending_items: (P,) int32 item indices of the newest clicks not yet written (P < N).
        pending_categories: (P,) int32 category indices, or None for a model without categories.
        watermark_time: timestamp of the newest consumed event (None before the first).
        watermark_items: raw item ids consumed at exactly `watermark_time`: the tie-breaker that
            recognises a re-delivered event among several clicks with the same timestamp.
        events: number of events consumed.
        fingerprint: the model fingerprint that produced `memory`.
        updated_at: seconds since the epoch of the last write.
    """

    user_id: str
    memory: torch.Tensor
    pending_items: np.ndarray
    pending_categories: np.ndarray | None
    watermark_time: float | int | None
    watermark_items: tuple[str, ...]
    events: int
    fingerprint: str
    updated_at: float = field(default=0.0, compare=False)


def encode_memory(memory: torch.Tensor, dtype: MemoryDtype) -> bytes:
    """(K, d_m) memory -> bytes in the store's precision."""
    stored = memory.detach().to("cpu", MEMORY_DTYPES[dtype]).contiguous()
    return bytes(stored.view(torch.uint8).numpy().tobytes())


def decode_memory(blob: bytes, shape: tuple[int, int], dtype: MemoryDtype) -> torch.Tensor:
    """Bytes -> (K, d_m) float32; raises `ValueError` when the size does not match."""
    torch_dtype = MEMORY_DTYPES[dtype]
    expected = shape[0] * shape[1] * torch.empty(0, dtype=torch_dtype).element_size()
    if len(blob) != expected:
        raise ValueError(
            f"memory blob holds {len(blob)} bytes, a ({shape[0]}, {shape[1]}) {dtype} needs {expected}"
        )
    raw = torch.frombuffer(bytearray(blob), dtype=torch.uint8)
    return raw.view(torch_dtype).reshape(shape).float()


def encode_pending(items: np.ndarray, categories: np.ndarray | None) -> bytes:
    parts = [np.asarray(items, dtype="<i4").tobytes()]
    if categories is not None:
        parts.append(np.asarray(categories, dtype="<i4").tobytes())
    return b"".join(parts)


def decode_pending(blob: bytes, count: int, has_categories: bool) -> tuple[np.ndarray, np.ndarray | None]:
    expected = 4 * count * (2 if has_categories else 1)
    if len(blob) != expected:
        raise ValueError(f"pending blob holds {len(blob)} bytes, {count} pending clicks need {expected}")
    values = np.frombuffer(blob, dtype="<i4").astype(np.int32)
    if has_categories:
        return values[:count].copy(), values[count:].copy()
    return values.copy(), None


def checksum(
    memory_blob: bytes,
    pending_blob: bytes,
    watermark_time: float | int | None,
    watermark_items: str,
    events: int,
    store_format: int = 2,
) -> int:
    """CRC-32 over what a reader trusts (memory, pending clicks, watermark time and items, event
    count); a mismatch means a damaged row. Format-1 stores (cmrec before the watermark time was
    covered) keep their own rule, so that they stay readable."""
    crc = zlib.crc32(memory_blob)
    crc = zlib.crc32(pending_blob, crc)
    if store_format == 1:
        return zlib.crc32(f"{watermark_items}|{events}".encode(), crc)
    return zlib.crc32(f"{_time_text(watermark_time)}|{watermark_items}|{events}".encode(), crc)


def _time_text(value: float | int | None) -> str:
    """One text per watermark value, whichever way SQLite's NUMERIC column hands it back (3.0 is
    stored as the integer 3)."""
    if value is None:
        return ""
    if isinstance(value, float) and not value.is_integer():
        return repr(value)
    return str(int(value))


def encode_watermark_items(items: tuple[str, ...]) -> str:
    return json.dumps(list(items), separators=(",", ":"))


def decode_watermark_items(text: str) -> tuple[str, ...]:
    values = json.loads(text)
    if not isinstance(values, list):
        raise ValueError("watermark items are not a list")
    return tuple(str(v) for v in values)


@dataclass(frozen=True)
class StoreInfo:
    """What every partition records about the memories it holds.

    Args:
        fingerprint: hash of the model weights, config and vocabularies (`model_fingerprint`).
        model: registered model name, for messages.
        slots, memory_dim: rows and width of one memory: the K slots (and 2 more rows with
            CMConfig.history_mean) and d_m.
        segment_len: N.
        has_categories: whether pending clicks carry category indices.
        dtype: precision of the stored memories.
        partitions: how many partitions the store has.
    """

    fingerprint: str
    model: str
    slots: int
    memory_dim: int
    segment_len: int
    has_categories: bool
    dtype: MemoryDtype = "float32"
    partitions: int = 1

    def __post_init__(self) -> None:
        if self.dtype not in MEMORY_DTYPES:
            raise StoreError(f"memory dtype must be one of {', '.join(MEMORY_DTYPES)}, got {self.dtype!r}")
        if self.partitions < 1:
            raise StoreError(f"partitions must be >= 1, got {self.partitions}")


REBUILD_HINT = "rebuild the store with `cmrec refresh ... --rebuild`"


def check_info(where: str, stored: StoreInfo, expected: StoreInfo, rebuild: str = REBUILD_HINT) -> None:
    """Refuse a store whose recorded model or layout is not what the caller's model expects (the
    same messages for every backend; `where` names the store, `rebuild` says how to start over)."""
    if stored.fingerprint != expected.fingerprint:
        raise StoreError(
            f"{where}: holds memories written by model {stored.model!r} (fingerprint "
            f"{stored.fingerprint[:12]}), not by this run ({expected.model!r}, fingerprint "
            f"{expected.fingerprint[:12]}). Memories of another model cannot be reused: {rebuild}"
        )
    for name in ("slots", "memory_dim", "segment_len", "has_categories", "partitions"):
        if getattr(stored, name) != getattr(expected, name):
            raise StoreError(
                f"{where}: {name} is {getattr(stored, name)!r} in the store, {getattr(expected, name)!r} "
                f"expected; {rebuild}"
            )
