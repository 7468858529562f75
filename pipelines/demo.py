"""`cmrec demo`: the product's whole story in one command, one line per step with its wall time.

1. **generate** an XLong-style log (`--users` x `--length` clicks) and a later "day 2" file
   (`--day2-clicks` more clicks per user, `later_clicks`);
2. **train** `--models` (default cm, dien, avg-pool; ``--models all`` for every registered model)
   on the log, each tracked in MLflow (experiment `--experiment`);
3. **compare** them in `cmrec compare`'s table, the heuristic floors as rows (this demo's runs only);
4. **refresh** a memory store with the cm run: the log, then the day-2 file in `--chunks` time-ordered
   chunks, then one chunk re-delivered (it must change nothing);
5. **score** candidates of `--score-users` users from the store alone, beside the batch path (cm
   reading each user's whole history); the two must agree to 1e-5, else the demo fails;
6. where to look next.

Everything lands in `--out` (default runs/demo): data/, MODEL/ (one run folder per model), store/,
day2-chunks/, requests.csv, scores.csv and demo.json (the steps and their wall times). A previous
demo folder there is replaced once the new one is complete; any other folder is refused.
"""

from __future__ import annotations

import argparse
import functools
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pandas as pd

from cmrec.atomic import check_output_folder, new_scratch_folder, swap_in, write_json
from cmrec.data.dataset import ClickLogData, SplitConfig, build_from_events
from cmrec.data.events import read_events, validate_events
from cmrec.data.schema import CATEGORY, ITEM, TIMESTAMP, USER
from cmrec.data.synthetic import SyntheticConfig
from cmrec.errors import CmrecError
from cmrec.jobs import refresh_store, score_histories, score_requests
from cmrec.models.registry import model_names
from cmrec.pipelines._common import run_command
from cmrec.pipelines.compare import comparison, markdown
from cmrec.pipelines.generate import write_synthetic
from cmrec.tracking import runs_table, tracking_uri
from cmrec.train import TrainSettings, fit

DESCRIPTION = "The whole story in minutes: generate, train and compare, refresh a store, score from it."
DEFAULT_MODELS = ("cm", "dien", "avg-pool")
# The paper's recipe trains with Adam at 1e-3 in batches of 128 (docs/model.md, "Choices"); every
# other model takes `TrainSettings`' defaults.
SETTINGS: dict[str, dict[str, Any]] = {"cm-paper": {"lr": 1e-3, "batch_size": 128}}
TOLERANCE = 1e-5  # largest |store - batch path| probability the demo accepts
MARKER = "demo.json"
SHOWN = ["model", "auc", "gauc", "logloss", "s/epoch", "bytes/user"]
T = TypeVar("T")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("runs/demo"), help="output folder (runs/demo)")
    parser.add_argument("--users", type=int, default=1000, help="synthetic users (default 1000)")
    parser.add_argument("--length", type=int, default=400, help="history length per user (default 400)")
    parser.add_argument("--day2-clicks", type=int, default=40, help="later clicks per user (default 40)")
    parser.add_argument("--epochs", type=int, default=2, help="most training epochs per model (default 2)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the data, the weights and the sampling")
    parser.add_argument(
        "--models",
        nargs="+",
        default=list(DEFAULT_MODELS),
        metavar="MODEL",
        help=f"models to train, cm first (default: {' '.join(DEFAULT_MODELS)}; 'all': every registered "
        f"model: {', '.join(model_names())})",
    )
    parser.add_argument("--chunks", type=int, default=4, help="day-2 file delivered in this many parts (4)")
    parser.add_argument("--score-users", type=int, default=3, help="users scored from the store (3)")
    parser.add_argument("--experiment", default="demo", help="MLflow experiment (default demo)")


def run(args: argparse.Namespace) -> int:
    models = _models(args.models)
    for name in ("users", "length", "day2_clicks", "epochs", "chunks", "score_users"):
        if getattr(args, name) < 1:
            raise CmrecError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    check_output_folder(args.out, True, (MARKER,), "cmrec demo folder")
    work = new_scratch_folder(args.out)
    demo = _Demo(args, work, total_steps=5 + len(models))
    try:
        demo.run(models)
        write_json(work / MARKER, {"settings": _settings_of(args, models), "steps": demo.steps})
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    swap_in(work, args.out)
    demo.finish()
    return 0


def _models(names: list[str]) -> list[str]:
    if names == ["all"]:
        return ["cm"] + [n for n in model_names() if n != "cm"]
    unknown = sorted(set(names) - set(model_names()))
    if unknown:
        raise CmrecError(f"--models: unknown {', '.join(unknown)}; known: {', '.join(model_names())}, all")
    if "cm" not in names:
        raise CmrecError("--models must include cm: the store is refreshed and scored with the cm run")
    return ["cm"] + [n for n in dict.fromkeys(names) if n != "cm"]


def _settings_of(args: argparse.Namespace, models: list[str]) -> dict[str, Any]:
    names = ("users", "length", "day2_clicks", "epochs", "seed", "chunks", "score_users", "experiment")
    return {**{name: getattr(args, name) for name in names}, "models": models}


class _Demo:
    """The steps, each timed and reported in one line; paths are inside the scratch folder until
    `run` swaps it in, and are printed as they will be (under --out)."""

    def __init__(self, args: argparse.Namespace, work: Path, total_steps: int) -> None:
        self.args = args
        self.work = work
        self.total = total_steps
        self.steps: list[dict[str, Any]] = []
        self.started = time.perf_counter()
        self.source = f"demo-{args.users}x{args.length}-seed{args.seed}"
        self.log = pd.DataFrame()  # the generated log as `read_events` returns it (`_generate`)

    def step(self, name: str, action: Callable[[], tuple[T, str]]) -> T:
        """Run one step; print ``[i/n] name: what it did (seconds)``."""
        started = time.perf_counter()
        value, line = action()
        seconds = time.perf_counter() - started
        self.steps.append({"step": name, "seconds": round(seconds, 2), "result": line})
        print(f"[{len(self.steps)}/{self.total}] {name}: {line} ({seconds:.1f} s)", flush=True)
        return value

    def shown(self, path: Path) -> Path:
        """`path` (inside the scratch folder) as it will be once swapped in."""
        return self.args.out / path.relative_to(self.work)

    def run(self, models: list[str]) -> None:
        data = self.step("generate", self._generate)
        run_ids = [self.step(f"train {name}", functools.partial(self._train, name, data)) for name in models]
        table = self.step("compare", lambda: self._compare(run_ids, models))
        print(table, flush=True)
        self.step("refresh", self._refresh)
        scores = self.step("score", self._score)
        print(scores.to_string(index=False, float_format=lambda v: f"{v:.6f}"), flush=True)

    def _generate(self) -> tuple[ClickLogData, str]:
        args = self.args
        config = SyntheticConfig(users=args.users, length=args.length, seed=args.seed)
        summary = write_synthetic(config, self.work / "data", False, args.day2_clicks)
        self.log = events = read_events(self.work / "data" / "events.parquet")
        data = build_from_events(events, SplitConfig(max_len=args.length, seed=args.seed))
        floors = ", ".join(f"{k.replace('_', ' ')} {v:.4f}" for k, v in summary["heuristic_test_auc"].items())
        line = (
            f"{args.users:,} users x {args.length + 2} clicks in "
            f"{self.shown(self.work / 'data')}/events.parquet, "
            f"{args.day2_clicks} later clicks each in day2.parquet; category-frequency AUC {floors}"
        )
        return data, line

    def _train(self, name: str, data: ClickLogData) -> tuple[str, str]:
        args = self.args
        settings = TrainSettings(epochs=args.epochs, seed=args.seed, **SETTINGS.get(name, {}))
        out = self.work / name
        result = fit(name, data, out, settings, source=self.source, experiment=args.experiment)
        summary = result.summary
        line = (
            f"test AUC {summary['test']['auc']:.4f} (best epoch {summary['best_epoch'] + 1} of "
            f"{len(summary['epochs'])}), {summary['train_seconds_per_epoch']:.0f} s/epoch; {self.shown(out)}/"
        )
        return summary["mlflow"]["run_id"], line

    def _compare(self, run_ids: list[str], models: list[str]) -> tuple[str, str]:
        runs = runs_table(self.args.experiment)
        runs = runs[runs["run_id"].isin(run_ids)]
        if len(runs) != len(run_ids):
            raise CmrecError(
                f"MLflow store {tracking_uri()}: found {len(runs)} of this demo's {len(run_ids)} runs"
            )
        table = comparison(runs)
        columns = SHOWN + [c for c in table.columns if c.startswith("auc ")]
        aucs = {m: float(runs.loc[runs["params.model"] == m, "metrics.test_auc"].iloc[0]) for m in models}
        others = [m for m in models if m != "cm"]
        lead = ", ".join(f"{aucs['cm'] - aucs[m]:+.4f} AUC over {m}" for m in others)
        where = f"{tracking_uri()} (experiment {self.args.experiment!r})"
        line = f"{len(runs)} runs read back from {where}" + (f": cm {lead}" if lead else "")
        return markdown(table[columns]), line

    def _refresh(self) -> tuple[None, str]:
        cm, store = self.work / "cm", self.work / "store"
        first = refresh_store(cm, self.work / "data" / "events.parquet", store, progress=False).stats
        chunks = _write_chunks(
            self.work / "data" / "day2.parquet", self.work / "day2-chunks", self.args.chunks
        )
        applied = [refresh_store(cm, chunk, store, progress=False).stats for chunk in chunks]
        again = refresh_store(cm, chunks[0], store, progress=False).stats
        if again.applied or again.segments:
            raise CmrecError(
                f"{chunks[0]}: re-delivered, it applied {again.applied} events; it must apply none"
            )
        line = (
            f"{self.shown(store)}/ built from the log ({first.events:,} clicks, {first.segments:,} segments, "
            f"{first.seconds:.1f} s), then day 2 in {len(chunks)} chunks ("
            + ", ".join(f"{s.applied:,} clicks/{s.segments:,} segments" for s in applied)
            + f"); chunk 1 re-delivered: {again.applied} applied, {again.dropped:,} dropped as seen"
        )
        return None, line

    def _score(self) -> tuple[pd.DataFrame, str]:
        work = self.work
        cm = work / "cm"
        day1 = self.log
        day2 = read_events(work / "data" / "day2.parquet")
        requests = _candidates(day1, day2, self.args.score_users, self.args.seed)
        requests.to_csv(work / "requests.csv", index=False)
        started = time.perf_counter()
        stored = score_requests(cm, work / "store", requests[[USER, ITEM]])
        store_seconds = time.perf_counter() - started
        history = validate_events(pd.concat([day1, day2], ignore_index=True), "log + day 2")
        batch = score_histories(cm, history, requests[[USER, ITEM]], source="log + day 2")
        table = requests.assign(store=stored.frame["score"].to_numpy(), batch_path=batch)
        table["difference"] = (table["store"] - table["batch_path"]).abs()
        table.to_csv(work / "scores.csv", index=False)
        largest = float(table["difference"].max())
        if not largest <= TOLERANCE:
            raise CmrecError(
                f"the store's scores differ from the batch path's by up to {largest:.2e} (> {TOLERANCE:g}); "
                f"see {self.shown(work / 'scores.csv')}"
            )
        line = (
            f"{len(requests)} candidates of {self.args.score_users} users from "
            f"{self.shown(work / 'store')}/ alone in {store_seconds * 1e3:.0f} ms; largest difference "
            f"to the batch path {largest:.1e} (<= {TOLERANCE:g}); {self.shown(work / 'scores.csv')}"
        )
        return table, line

    def finish(self) -> None:
        out, seconds = self.args.out, time.perf_counter() - self.started
        print(
            f"demo done in {duration(seconds)}. Next:\n"
            f"  run folders    {out}/MODEL/ (metrics.json; losses.png, roc.png, forgetting.png)\n"
            f"  MLflow         cmrec ui   (then http://127.0.0.1:5000, experiment {self.args.experiment!r})\n"
            f"  compare again  cmrec compare --experiment {self.args.experiment}\n"
            f"  score          cmrec score --run {out}/cm --store {out}/store "
            f"--requests {out}/requests.csv --out scores.parquet\n"
            f"  notebooks      notebooks/02_train_and_evaluate.ipynb, notebooks/03_refresh_and_score.ipynb",
            flush=True,
        )


def duration(seconds: float) -> str:
    """``M min S s``, both truncated: 284.7 s is "4 min 44 s"."""
    return f"{int(seconds // 60)} min {int(seconds % 60)} s"


def _write_chunks(day2: Path, folder: Path, chunks: int) -> list[Path]:
    """The day-2 file cut into `chunks` parts by arrival time (each part in time order)."""
    events = read_events(day2)
    order = np.argsort(events[TIMESTAMP].to_numpy(), kind="stable")
    folder.mkdir()
    paths = []
    for k, rows in enumerate(np.array_split(order, chunks)):
        path = folder / f"part-{k + 1}-of-{chunks}.parquet"
        events.iloc[np.sort(rows)].to_parquet(path, index=False)
        paths.append(path)
    return paths


def _candidates(day1: pd.DataFrame, day2: pd.DataFrame, users: int, seed: int) -> pd.DataFrame:
    """Three candidates for each of `users` users: the most popular item of the category of their
    latest click ("recent"), of a category they clicked only in the first tenth of their history
    ("early", where the log has one) and of a category they never clicked ("never")."""
    popular = day1.groupby(CATEGORY)[ITEM].agg(lambda items: items.value_counts().index[0])
    clicks = pd.concat([day1, day2], ignore_index=True).sort_values([USER, TIMESTAMP], kind="stable")
    by_user = {user: group[CATEGORY].to_numpy() for user, group in clicks.groupby(USER, sort=False)}
    rng = np.random.default_rng(seed)
    rows: list[dict[str, Any]] = []
    for user in rng.permutation(np.array(list(by_user), dtype=object)):
        cats = by_user[user]
        cut = len(cats) // 10
        early = sorted(set(cats[:cut]) - set(cats[cut:]))
        never = sorted(set(popular.index) - set(cats))
        if not early or not never:
            continue
        picks = {"recent": cats[-1], "early": early[0], "never": never[rng.integers(len(never))]}
        rows += [{USER: user, ITEM: popular[c], CATEGORY: c, "kind": kind} for kind, c in picks.items()]
        if len(rows) == 3 * users:
            break
    if not rows:
        raise CmrecError("no user has a category clicked only early in the history; cannot pick candidates")
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> int:
    return run_command(sys.modules[__name__], argv)


if __name__ == "__main__":
    sys.exit(main())
