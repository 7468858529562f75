"""`cmrec bench --serving`: serving cost of CM from the memory store against end-to-end baselines.

For each history length L: the latency of one request of ``--candidates`` items (p50 / p99 over
``--requests`` requests) for CM scoring from the store (SQLite read + the < N pending clicks written
into a scratch memory + reason head), and for DIEN and GRU4REC recomputing from the raw history
(model forward only: reading the history is not counted, which favours them), and for the other
models incremental by construction (GRU4REC, MIMN, HPMN) scoring from a store of their own states
(``<name>_from_store``, with their bytes per user); refresh throughput
for a backfill of whole histories and for a steady-state refresh of one new segment per user;
store read / write latency; bytes per user (float32 and float16 memories) against the raw history.
With ``--store redis://HOST:PORT/DB/NAME`` also the Redis backend beside SQLite in the same run
(``backends``): store reads and writes, the steady-state refresh and CM's scoring latency from each,
and their ratios (scratch store names NAME.bench-*, refused if they exist, dropped afterwards).
Models have the paper's sizes and random weights: latency does not depend on the weights.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from cmrec.data import SplitConfig, build_from_events, validate_events
from cmrec.data.batch import CATEGORY_KEY, ITEM_KEY, Batch
from cmrec.data.dataset import Vocabularies
from cmrec.data.synthetic import SyntheticConfig, generate
from cmrec.errors import ConfigError
from cmrec.models import ContinualMemoryModel, DataSpec, build_model
from cmrec.output import IncrementalModel
from cmrec.precision import autocast, native_bfloat16
from cmrec.serving import Refresher, Scorer, ServedModel, UserEvents, model_fingerprint
from cmrec.store import (
    AnyStore,
    MemoryDtype,
    MemoryStore,
    RedisLocation,
    RedisStore,
    UserState,
    read_store_info,
)
from cmrec.store.location import store_argument

USERS_PER_GROUP = 8
STORE_USERS = 2000
PENDING = 19  # the worst case: N - 1 clicks waiting
STEADY_USERS = 2048
INCREMENTAL = ("gru4rec", "mimn", "hpmn")  # served from a store of their own, beside CM


def add_serving_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("serving benchmark (with --serving)")
    group.add_argument("--serving", action="store_true", help="measure serving instead of training")
    group.add_argument(
        "--lengths",
        type=int,
        nargs="+",
        default=[100, 1000, 10_000],
        help="history lengths L (100 1000 10000)",
    )
    group.add_argument("--candidates", type=int, default=100, help="candidates per request (100)")
    group.add_argument("--requests", type=int, default=50, help="timed requests per model and L (50)")
    group.add_argument(
        "--store",
        type=store_argument,
        help="also measure this Redis server beside SQLite: redis://HOST:PORT/DB/NAME (scratch stores "
        "NAME.bench-*, refused if they exist, dropped afterwards; password from $CMREC_REDIS_PASSWORD)",
    )


def run_serving(args: argparse.Namespace) -> dict[str, Any]:
    redis_location = getattr(args, "store", None)
    if redis_location is not None and not isinstance(redis_location, RedisLocation):
        raise ConfigError("bench --serving --store takes a redis:// address (SQLite is always measured)")
    precision = "float32" if getattr(args, "precision", "auto") == "auto" else args.precision
    torch.manual_seed(args.seed)
    longest = max(args.lengths) + PENDING
    events = generate(SyntheticConfig(users=2 * USERS_PER_GROUP, length=longest, seed=args.seed)).events()
    vocabs = build_from_events(validate_events(events), SplitConfig(max_len=longest)).vocabs
    spec = DataSpec.from_vocabs(vocabs)
    cm = build_model("cm", spec, getattr(args, "cm_overrides", None)).eval()
    assert isinstance(cm, ContinualMemoryModel)
    baselines = {name: build_model(name, spec).eval() for name in ("dien", "gru4rec")}
    incremental: dict[str, IncrementalModel] = {}
    for name in INCREMENTAL:
        model = build_model(name, spec).eval()
        assert isinstance(model, IncrementalModel)
        incremental[name] = model
    rng = np.random.default_rng(args.seed)
    candidates = rng.integers(2, len(vocabs.items), size=args.candidates)
    rows = []
    with tempfile.TemporaryDirectory(prefix="cmrec-bench-") as scratch:
        served = _served(cm, vocabs, Path(scratch))
        others = {name: _served(m, vocabs, Path(scratch), name) for name, m in incremental.items()}
        for length in args.lengths:
            # Scoring in the precision asked (auto: float32, the product's path; bfloat16: autocast).
            with autocast("cpu", precision):
                row = _bench_length(length, events, served, baselines, candidates, args, Path(scratch))
                row |= _bench_incremental(length, events, others, candidates, args, Path(scratch))
            rows.append(row)
        store = _bench_store(served, Path(scratch), rng)
        steady = _bench_steady(served, events, Path(scratch))
        backends = None
        if redis_location is not None:
            backends = _bench_backends(served, events, candidates, args, Path(scratch), redis_location)
    cm_p50 = {row["length"]: row["latency_ms"]["cm"]["p50"] for row in rows}
    targets = {}
    if 100 in cm_p50 and 10_000 in cm_p50:
        targets["cm_10000_over_100"] = round(cm_p50[10_000] / cm_p50[100], 3)
        targets["cm_flat_in_L (<= 1.3)"] = targets["cm_10000_over_100"] <= 1.3
    for row in rows:
        if row["length"] == 1000:
            targets["dien_over_cm_at_1000"] = round(row["latency_ms"]["dien"]["p50"] / cm_p50[1000], 1)
            targets["cm_50x_faster_than_dien (>= 50)"] = targets["dien_over_cm_at_1000"] >= 50
            pending = row["latency_ms"]["cm_19_pending"]
            targets["dien_over_cm_19_pending_at_1000"] = round(
                row["latency_ms"]["dien"]["p50"] / pending["p50"], 1
            )
            targets["cm_19_pending_p50_ms (<= 1)"] = pending["p50"]
            targets["cm_19_pending_p99_ms (<= 2)"] = pending["p99"]
    return {
        "benchmark": "serving",
        "cm_config": getattr(args, "cm_overrides", {}),  # `cmrec bench --config`
        "precision": precision,
        "native_bfloat16": native_bfloat16("cpu"),
        "candidates": args.candidates,
        "requests": args.requests,
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads",
        "torch": torch.__version__,
        "lengths": rows,
        "store": store,
        "refresh_steady_state": steady,
        "targets": targets,
        **({"backends": backends} if backends is not None else {}),
    }


def _served(model: IncrementalModel, vocabs: Vocabularies, scratch: Path, name: str = "cm") -> ServedModel:
    assert isinstance(model, torch.nn.Module)
    fingerprint = model_fingerprint(name, {"bench": True}, model.state_dict(), vocabs.to_dict())
    return ServedModel(model=model, vocabs=vocabs, name=name, fingerprint=fingerprint, run_dir=scratch)


def _score_from(scorer: Scorer, candidates: np.ndarray) -> Callable[[Any], object]:
    return lambda user: scorer.score([str(user)] * len(candidates), candidates)


def _bench_incremental(
    length: int,
    events: pd.DataFrame,
    served: Mapping[str, ServedModel],
    candidates: np.ndarray,
    args: argparse.Namespace,
    scratch: Path,
) -> dict[str, Any]:
    """Each other incremental model: its store refreshed with L clicks per user, then requests of
    `candidates` scored from it; latency and the bytes of one user's state."""
    users = events["user_id"].unique()[:USERS_PER_GROUP]
    rank = events.groupby("user_id").cumcount().to_numpy()
    history = validate_events(events[events["user_id"].isin(users).to_numpy() & (rank < length)])
    reps = args.requests if length <= 1000 else max(3, args.requests // 10)
    latency, state_bytes = {}, {}
    for name, model in served.items():
        with MemoryStore(scratch / f"{name}-L{length}", model.store_info(), create=True) as store:
            Refresher(model, store, batch_users=USERS_PER_GROUP).refresh(
                UserEvents.from_events(history, model.vocabs, "bench"), show_progress=False
            )
            latency[f"{name}_from_store"] = _latency(
                _score_from(Scorer(model, store), candidates), users, reps
            )
        rows, dim = model.state_shape
        state_bytes[name] = rows * dim * 4
    return {"incremental_latency_ms": latency, "state_bytes_per_user": state_bytes}


def _bench_length(
    length: int,
    events: pd.DataFrame,
    served: ServedModel,
    baselines: Mapping[str, torch.nn.Module],
    candidates: np.ndarray,
    args: argparse.Namespace,
    scratch: Path,
) -> dict[str, Any]:
    """Half the users hold exactly L clicks (nothing pending), half L + 19 (19 pending)."""
    users = events["user_id"].unique()
    rank = events.groupby("user_id").cumcount().to_numpy()
    exact, pending = users[:USERS_PER_GROUP], users[USERS_PER_GROUP:]
    keep = (events["user_id"].isin(exact).to_numpy() & (rank < length)) | (
        events["user_id"].isin(pending).to_numpy() & (rank < length + PENDING)
    )
    history = validate_events(events[keep])
    with MemoryStore(scratch / f"L{length}", served.store_info(), create=True) as store:
        backfill = Refresher(served, store, batch_users=USERS_PER_GROUP).refresh(
            UserEvents.from_events(history, served.vocabs, "bench"), show_progress=False
        )
        scorer = Scorer(served, store)
        memory, _ = scorer.memories([str(exact[0])])
        items_tensor = torch.from_numpy(served.vocabs.items.encode(candidates))
        with torch.no_grad():
            latency = {
                "cm_reason_head_only": _latency(
                    lambda u: served.model.score(memory.expand(len(candidates), -1, -1), items_tensor),
                    exact,
                    args.requests,
                )
            }
        latency |= {
            "cm": _latency(
                lambda u: scorer.score([str(u)] * len(candidates), candidates), exact, args.requests
            ),
            "cm_19_pending": _latency(
                lambda u: scorer.score([str(u)] * len(candidates), candidates), pending, args.requests
            ),
        }
    items = served.vocabs.items.encode(history["item_id"])
    categories = served.vocabs.categories.encode(history["category_id"]) if served.vocabs.categories else None
    user_of = history["user_id"].to_numpy()
    reps = args.requests if length <= 1000 else max(3, args.requests // 10)
    batches = {u: _history_batch(items[user_of == u], categories, user_of == u, candidates) for u in exact}
    for name, model in baselines.items():
        latency[name] = _latency(_forward(model, batches), exact, reps)
    segments_per_user = length / served.model.write_len
    return {
        "length": length,
        "latency_ms": latency,
        "refresh_backfill": _rates(backfill),
        "raw_history_bytes_per_user": length * 8,  # int32 item + int32 category per click
        "segments_per_user": segments_per_user,
    }


def _bench_steady(
    served: ServedModel, events: pd.DataFrame, scratch: Path, store: AnyStore | None = None
) -> dict[str, Any]:
    """STEADY_USERS users each receive one new segment (20 clicks) on top of a stored memory (in a
    new folder store under `scratch`, or in `store`)."""
    n = served.model.write_len
    per_user = events[events.groupby("user_id").cumcount() < 2 * n]
    frames = []
    for copy in range(STEADY_USERS // per_user["user_id"].nunique()):
        frame = per_user.copy()
        frame["user_id"] = frame["user_id"].astype(str) + f"-{copy}"
        frames.append(frame)
    both = validate_events(pd.concat(frames, ignore_index=True))
    rank = both.groupby("user_id").cumcount()
    if store is None:
        store = MemoryStore(scratch / "steady", served.store_info(), create=True)
    with store:
        refresher = Refresher(served, store)  # default batch of 256 users
        refresher.refresh(UserEvents.from_events(both[rank < n], served.vocabs, "bench"), show_progress=False)
        second = refresher.refresh(
            UserEvents.from_events(both[rank >= n], served.vocabs, "bench"), show_progress=False
        )
    return {"users": second.users, **_rates(second)}


def _history_batch(
    items: np.ndarray, categories: np.ndarray | None, rows: np.ndarray, candidates: np.ndarray
) -> Batch:
    values = [torch.from_numpy(items.astype(np.int64))]
    keys = [ITEM_KEY]
    if categories is not None:
        values.append(torch.from_numpy(categories[rows].astype(np.int64)))
        keys.append(CATEGORY_KEY)
    history = KeyedJaggedTensor.from_lengths_sync(
        keys=keys, values=torch.cat(values), lengths=torch.tensor([len(items)] * len(keys))
    )
    count = len(candidates)
    return Batch(
        history=history,
        history_index=torch.zeros(count, dtype=torch.long),
        target_items=torch.from_numpy(candidates.astype(np.int64)),
        target_categories=None,
        labels=torch.zeros(count),
        user_ids=torch.zeros(count, dtype=torch.long),
    )


def _forward(model: torch.nn.Module, batches: dict[Any, Batch]) -> Callable[[Any], object]:
    def call(user: Any) -> object:
        with torch.no_grad():
            return model(batches[user]).logits

    return call


def _latency(call: Callable[[Any], object], users: np.ndarray, repeats: int) -> dict[str, float]:
    call(users[0])  # warm-up
    return _timed_many(lambda i: call(users[i % len(users)]), repeats)


def _rates(stats: Any) -> dict[str, float]:
    seconds = max(stats.seconds, 1e-9)
    return {
        "events": stats.events,
        "segments": stats.segments,
        "seconds": round(stats.seconds, 4),
        "events_per_second": round(stats.events / seconds, 1),
        "segments_per_second": round(stats.segments / seconds, 1),
        "users_per_second": round(stats.updated_users / seconds, 1),
    }


def _bench_store(served: ServedModel, scratch: Path, rng: np.random.Generator) -> dict[str, Any]:
    """Read / write latency and bytes on disk of STORE_USERS users, for float32 and float16 memories."""
    result: dict[str, Any] = {"users": STORE_USERS}
    for dtype in ("float32", "float16"):
        states = _random_states(served, rng)
        result[dtype] = _bench_store_dtype(served, scratch / f"store-{dtype}", dtype, states)
    return result


def _bench_store_dtype(
    served: ServedModel, path: Path, dtype: MemoryDtype, states: list[UserState]
) -> dict[str, Any]:
    rows, dim = served.state_shape
    with MemoryStore(path, served.store_info(dtype), create=True) as store:
        timings = _store_timings(store, states)
        store.checkpoint()  # fold the write-ahead log into the database before measuring its size
        on_disk = store.file_bytes()
    return {
        "memory_bytes_per_user": rows * dim * (4 if dtype == "float32" else 2),
        "file_bytes_per_user": round(on_disk / len(states), 1),
        **timings,
    }


def _store_timings(store: AnyStore, states: list[UserState]) -> dict[str, Any]:
    ids = [s.user_id for s in states]
    write = _timed_many(lambda i: store.put_many(states[i * 100 : (i + 1) * 100]), len(states) // 100)
    return {
        "write_100_users_ms": write,
        "write_1_user_ms": _timed_many(lambda i: store.put_many([states[i]]), 50),
        "read_1_user_ms": _timed_many(lambda i: store.get_many([ids[(i * 37) % len(ids)]]), 200),
        "read_100_users_ms": _timed_many(
            lambda i: store.get_many(ids[i * 100 : (i + 1) * 100]), len(ids) // 100
        ),
    }


def _random_states(served: ServedModel, rng: np.random.Generator) -> list[UserState]:
    rows, dim = served.state_shape
    return [
        UserState(
            user_id=f"user-{i}",
            memory=torch.from_numpy(rng.standard_normal((rows, dim)).astype(np.float32)),
            pending_items=rng.integers(2, 100, size=10).astype(np.int32),
            pending_categories=rng.integers(2, 10, size=10).astype(np.int32),
            watermark_time=int(1e9) + i,
            watermark_items=(str(i),),
            events=1000,
            fingerprint=served.fingerprint,
        )
        for i in range(STORE_USERS)
    ]


def _bench_backends(
    served: ServedModel,
    events: pd.DataFrame,
    candidates: np.ndarray,
    args: argparse.Namespace,
    scratch: Path,
    location: RedisLocation,
) -> dict[str, Any]:
    """The same measurements on a folder store and on the Redis server, in this one run: store
    reads and writes (float32), the steady-state refresh, CM scoring 100 candidates from the store
    for users with 1,000 stored clicks; and Redis / SQLite ratios of the p50s and rates."""
    names = {part: location.with_name(f"{location.name}.bench-{part}") for part in ("rw", "steady", "score")}
    taken = [str(n) for n in names.values() if read_store_info(n) is not None]
    if taken:
        raise ConfigError(f"bench --store: {', '.join(taken)} already exist(s); give another store name")
    info = served.store_info()

    def folder(part: str) -> AnyStore:
        return MemoryStore(scratch / f"backend-{part}", info, create=True)

    def redis(part: str) -> AnyStore:
        return RedisStore(names[part], info, create=True)

    users = events["user_id"].unique()[:USERS_PER_GROUP]
    rank = events.groupby("user_id").cumcount().to_numpy()
    history = validate_events(events[events["user_id"].isin(users).to_numpy() & (rank < 1000)])
    result: dict[str, Any] = {"users": STORE_USERS, "score_history_length": 1000}
    try:
        for backend, open_one in (("sqlite", folder), ("redis", redis)):
            with open_one("rw") as store:
                before = store.server_memory() if isinstance(store, RedisStore) else 0
                row = _store_timings(store, _random_states(served, np.random.default_rng(args.seed)))
                if isinstance(store, RedisStore):  # what the server holds per user: sizing
                    row["server_bytes_per_user"] = round((store.server_memory() - before) / len(store), 1)
                    row["value_bytes_per_user"] = round(store.value_bytes() / len(store), 1)
                else:
                    store.checkpoint()
                    row["file_bytes_per_user"] = round(store.file_bytes() / len(store), 1)
            row["refresh_steady_state"] = _bench_steady(served, events, scratch, open_one("steady"))
            with open_one("score") as store:
                Refresher(served, store, batch_users=USERS_PER_GROUP).refresh(
                    UserEvents.from_events(history, served.vocabs, "bench"), show_progress=False
                )
                row["score_100_candidates_ms"] = _latency(
                    _score_from(Scorer(served, store), candidates), users, args.requests
                )
            result[backend] = row
    finally:
        for name in names.values():
            if read_store_info(name) is not None:
                with RedisStore(name) as store:
                    store.drop()
    sqlite, redis_row = result["sqlite"], result["redis"]
    ratios = {
        key: round(redis_row[key]["p50"] / max(sqlite[key]["p50"], 1e-9), 2)
        for key in ("read_1_user_ms", "read_100_users_ms", "write_100_users_ms", "score_100_candidates_ms")
    }
    ratios["refresh_users_per_second"] = round(
        redis_row["refresh_steady_state"]["users_per_second"]
        / max(sqlite["refresh_steady_state"]["users_per_second"], 1e-9),
        2,
    )
    result["redis_over_sqlite"] = ratios
    result["redis_server"] = str(location)
    return result


def _timed_many(call: Callable[[int], object], repeats: int) -> dict[str, float]:
    times = []
    for i in range(repeats):
        started = time.perf_counter()
        call(i)
        times.append(time.perf_counter() - started)
    ms = np.array(times) * 1000
    return {
        "p50": round(float(np.percentile(ms, 50)), 3),
        "p99": round(float(np.percentile(ms, 99)), 3),
        "n": repeats,
    }


def print_serving(result: dict[str, Any]) -> None:
    print(
        f"serving, {result['candidates']} candidates per request ({result['machine']}), "
        f"scoring in {result['precision']} (native bfloat16: {result['native_bfloat16'] or 'none'}):"
    )
    print("     L  cm p50/p99 ms  cm+19 pending  dien p50/p99 ms  gru4rec p50/p99 ms  backfill events/s")
    for row in result["lengths"]:
        lat = row["latency_ms"]

        def cell(name: str, lat: dict[str, Any] = lat) -> str:
            return f"{lat[name]['p50']:.2f}/{lat[name]['p99']:.2f}"

        print(
            f"{row['length']:>6}  {cell('cm'):>13}  {cell('cm_19_pending'):>13}  {cell('dien'):>15}  "
            f"{cell('gru4rec'):>18}  {row['refresh_backfill']['events_per_second']:>17,.0f}"
        )
        others = row["incremental_latency_ms"]
        print(
            "        from their own stores: "
            + ", ".join(
                f"{key.removesuffix('_from_store')} {v['p50']:.2f}/{v['p99']:.2f} ms "
                f"({row['state_bytes_per_user'][key.removesuffix('_from_store')]:,} B/user)"
                for key, v in others.items()
            )
        )
    steady = result["refresh_steady_state"]
    print(
        f"steady-state refresh (one new segment for each of {steady['users']:,} users): "
        f"{steady['events_per_second']:,.0f} events/s, {steady['segments_per_second']:,.0f} segments/s, "
        f"{steady['users_per_second']:,.0f} users/s"
    )
    store = result["store"]
    for dtype in ("float32", "float16"):
        s = store[dtype]
        print(
            f"store {dtype}: {s['memory_bytes_per_user']} B memory, {s['file_bytes_per_user']:.0f} B on disk "
            f"per user; read 1 user {s['read_1_user_ms']['p50']:.3f} ms, 100 users "
            f"{s['read_100_users_ms']['p50']:.2f} ms; write 100 users {s['write_100_users_ms']['p50']:.2f} ms"
        )
    backends = result.get("backends")
    if backends is not None:
        print(
            f"store backends ({backends['users']:,} users; p50/p99 ms), Redis at {backends['redis_server']}:"
        )
        for name in ("sqlite", "redis"):
            b = backends[name]

            def pair(key: str, b: dict[str, Any] = b) -> str:
                return f"{b[key]['p50']:.3f}/{b[key]['p99']:.3f}"

            size = b.get("server_bytes_per_user", b.get("file_bytes_per_user"))
            print(
                f"  {name:>6}: {size:,.0f} B/user; read 1 user {pair('read_1_user_ms')}, 100 users "
                f"{pair('read_100_users_ms')}; "
                f"write 100 users {pair('write_100_users_ms')}; refresh "
                f"{b['refresh_steady_state']['users_per_second']:,.0f} users/s; score 100 candidates "
                f"{pair('score_100_candidates_ms')}"
            )
        print(f"  redis / sqlite: {json.dumps(backends['redis_over_sqlite'])}")
    print(f"targets: {json.dumps(result['targets'])}")
