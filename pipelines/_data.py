"""Data-source options shared by `cmrec train` and `cmrec evaluate`."""

from __future__ import annotations

import argparse
from pathlib import Path

from cmrec.data.dataset import ClickLogData, SplitConfig, Vocabularies, build_from_events
from cmrec.data.events import read_events, validate_events
from cmrec.data.movielens import load_movielens_1m
from cmrec.data.synthetic import SyntheticConfig, generate
from cmrec.data.xlong import build_from_xlong
from cmrec.errors import CmrecError

DATASETS = ("xlong-synthetic", "movielens-1m")


def add_data_arguments(parser: argparse.ArgumentParser, training: bool) -> None:
    group = parser.add_argument_group("data (exactly one source)")
    group.add_argument("--events", type=Path, help="event log (.parquet or .csv)")
    group.add_argument("--xlong-test", type=Path, help="XLong test file")
    if training:
        group.add_argument("--xlong-train", type=Path, help="XLong training file (with --xlong-test)")
        group.add_argument("--dataset", choices=DATASETS, help="a built-in data set")
        group.add_argument("--synthetic-users", type=int, default=2000, help="users of xlong-synthetic")
        group.add_argument(
            "--synthetic-length", type=int, default=1000, help="history length of xlong-synthetic"
        )
        group.add_argument(
            "--train-targets-per-user", type=int, default=1, help="training targets per user (event logs)"
        )
    group.add_argument("--max-len", type=int, default=1000, help="longest history a sample sees (1000)")


def load_data(
    args: argparse.Namespace, training: bool, vocabs: Vocabularies | None = None
) -> tuple[ClickLogData, str]:
    """The data a run reads (the options `add_data_arguments(parser, training)` added), and a short
    name of its source for tables and MLflow."""
    sources = [args.events is not None, args.xlong_test is not None]
    if training:
        sources.append(args.dataset is not None)
    if sum(sources) != 1:
        raise CmrecError(
            "give exactly one data source: --events, --xlong-test (with --xlong-train) or --dataset"
        )
    counts = [
        "max_len",
        *(("synthetic_users", "synthetic_length", "train_targets_per_user") if training else ()),
    ]
    for name in counts:
        if getattr(args, name) < 1:
            raise CmrecError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    split = SplitConfig(
        max_len=args.max_len,
        train_targets_per_user=args.train_targets_per_user if training else 1,
        seed=args.seed if training else 0,
    )
    if args.events is not None:
        return build_from_events(read_events(args.events), split, vocabs), args.events.name
    if args.xlong_test is not None:
        train_file = args.xlong_train if training else None
        if training and train_file is None:
            raise CmrecError("--xlong-test needs --xlong-train for training")
        data = build_from_xlong(train_file or args.xlong_test, args.xlong_test, args.max_len, vocabs=vocabs)
        return data, args.xlong_test.name
    if args.dataset == "movielens-1m":
        return build_from_events(load_movielens_1m(), split, vocabs), "movielens-1m"
    config = SyntheticConfig(users=args.synthetic_users, length=args.synthetic_length, seed=0)
    events = validate_events(generate(config).events())
    return build_from_events(events, split, vocabs), f"xlong-synthetic-{config.users}x{config.length}"
