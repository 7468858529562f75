"""The XLong text format (Alibaba's XLong data set, as the HPMN and MIMN code read it).

One sample pair per line, fields separated by tabs, the history's ids by commas::

    idx <TAB> uid <TAB> h1,h2,...,hL <TAB> pos_item <TAB> neg_item [<TAB> ignored extra fields]

Each line yields two samples that share one stored history: (history, pos_item, label 1) and
(history, neg_item, label 0). Histories may be shorter than 1,000 or empty. XLong has no categories.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cmrec.data.dataset import ClickLogData, Vocabularies
from cmrec.data.events import require_file
from cmrec.data.samples import Histories, Samples, paired_samples
from cmrec.data.vocab import Vocab
from cmrec.errors import ConfigError, DataValidationError

MIN_FIELDS = 5


@dataclass(frozen=True)
class XLongLine:
    """One parsed line: raw ids as strings."""

    line_number: int
    uid: str
    history: list[str]
    pos_item: str
    neg_item: str


@dataclass(frozen=True)
class XLongFile:
    """All good lines of a file and how many malformed lines were skipped."""

    lines: list[XLongLine]
    skipped: int


def parse_xlong(path: str | Path, skip_malformed: bool = False) -> XLongFile:
    """Parse an XLong file.

    Args:
        path: the text file.
        skip_malformed: skip and count malformed lines instead of raising.

    Raises:
        DataValidationError: missing or empty file, or (unless skipped) a malformed line; the
            message gives the file and the 1-based line number.
    """
    path = Path(path)
    require_file(path)
    lines: list[XLongLine] = []
    skipped = 0
    with path.open(encoding="utf-8", errors="replace") as handle:
        for number, raw in enumerate(handle, start=1):
            text = raw.rstrip("\r\n")
            if "\ufffd" in text:
                raise DataValidationError(f"{path}, line {number}: not UTF-8 text (is this an XLong file?)")
            if not text.strip():
                continue
            try:
                lines.append(_parse_line(text, number))
            except DataValidationError as exc:
                if not skip_malformed:
                    raise DataValidationError(f"{path}, {exc}") from None
                skipped += 1
    if not lines:
        what = f"no well-formed lines ({skipped} malformed skipped)" if skipped else "the file is empty"
        raise DataValidationError(f"{path}: {what}")
    return XLongFile(lines=lines, skipped=skipped)


def _parse_line(text: str, number: int) -> XLongLine:
    fields = text.split("\t")
    if len(fields) < MIN_FIELDS:
        raise DataValidationError(
            f"line {number}: expected at least {MIN_FIELDS} tab-separated fields "
            f"(idx, uid, history, pos_item, neg_item), found {len(fields)}"
        )
    uid, history_field, pos, neg = (f.strip() for f in fields[1:5])
    for name, value in (("uid", uid), ("pos_item", pos), ("neg_item", neg)):
        if not value:
            raise DataValidationError(f"line {number}: field {name!r} is empty")
    history = history_field.split(",") if history_field else []
    if any(not h for h in history):
        raise DataValidationError(f"line {number}: field 'history' has an empty id")
    return XLongLine(number, uid, history, pos, neg)


def write_xlong(
    path: str | Path, rows: Iterable[tuple[object, object, Iterable[object], object, object]]
) -> int:
    """Write (idx, uid, history, pos_item, neg_item) rows; returns the number of lines."""
    count = 0
    with Path(path).open("w", encoding="utf-8") as handle:
        for idx, uid, history, pos, neg in rows:
            handle.write(f"{idx}\t{uid}\t{','.join(map(str, history))}\t{pos}\t{neg}\n")
            count += 1
    return count


def build_from_xlong(
    train_path: str | Path,
    test_path: str | Path,
    max_len: int = 1000,
    valid_fraction: float = 0.1,
    seed: int = 0,
    skip_malformed: bool = False,
    vocabs: Vocabularies | None = None,
) -> ClickLogData:
    """Samples from an XLong train/test pair.

    Args:
        train_path, test_path: XLong files.
        max_len: longest history a sample sees (the last `max_len` ids of a line's history).
        valid_fraction: share of training lines (chosen by `seed`) held out for validation.
        seed: chooses the validation lines.
        skip_malformed: skip and count malformed lines instead of raising.
        vocabs: a trained model's vocabularies; fitted on the training file when None.
    """
    if not 0.0 <= valid_fraction < 1.0:
        raise ConfigError(f"valid_fraction must be in [0, 1), got {valid_fraction}")
    if max_len < 1:
        raise ConfigError(f"max_len must be >= 1, got {max_len}")
    train = parse_xlong(train_path, skip_malformed)
    test = parse_xlong(test_path, skip_malformed)
    if vocabs is None:
        users = Vocab.fit(_ordered(line.uid for line in train.lines), name="user")
        items = Vocab.fit(_ordered(_train_items(train.lines)), name="item")
        vocabs = Vocabularies(users=users, items=items)
    all_lines = train.lines + test.lines
    histories = _histories(all_lines, vocabs)
    train_all = _samples(all_lines, 0, len(train.lines), histories, vocabs)
    test_samples = _samples(all_lines, len(train.lines), len(all_lines), histories, vocabs)
    rng = np.random.default_rng(seed)
    is_valid_line = rng.random(len(train.lines)) < valid_fraction
    is_valid_row = np.repeat(is_valid_line, 2)
    return ClickLogData(
        histories=histories,
        train=train_all.take(~is_valid_row),
        valid=train_all.take(is_valid_row),
        test=test_samples,
        vocabs=vocabs,
        max_len=max_len,
        stats={
            "train_lines": len(train.lines),
            "test_lines": len(test.lines),
            "malformed_lines_skipped": train.skipped + test.skipped,
        },
    )


def _histories(lines: list[XLongLine], vocabs: Vocabularies) -> Histories:
    """One history per line, encoded with `vocabs` (ids they do not know become OOV)."""
    lengths = np.fromiter((len(line.history) for line in lines), dtype=np.int64, count=len(lines))
    return Histories(
        items=vocabs.items.encode([h for line in lines for h in line.history]).astype(np.int32),
        categories=None,
        offsets=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
        users=vocabs.users.encode([line.uid for line in lines]),
    )


def _samples(
    lines: list[XLongLine], first: int, stop: int, histories: Histories, vocabs: Vocabularies
) -> Samples:
    """The (positive, negative) pairs of lines [first, stop), each after its line's whole history."""
    chosen = lines[first:stop]
    return paired_samples(
        sequence=np.arange(first, stop, dtype=np.int64),
        prefix_len=histories.lengths[first:stop],
        positives=vocabs.items.encode([x.pos_item for x in chosen]),
        negatives=vocabs.items.encode([x.neg_item for x in chosen]),
        positive_categories=None,
        item_category=None,
    )


def _ordered(values: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(values))


def _train_items(lines: list[XLongLine]) -> Iterator[str]:
    for line in lines:
        yield from line.history
        yield line.pos_item
        yield line.neg_item
