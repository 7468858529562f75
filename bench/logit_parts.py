"""What each addend of a trained `cm` run's logit is worth: test AUC with one part held constant.

    .venv/bin/python bench/logit_parts.py --run RUN (--events FILE | --dataset NAME) \
        [--max-len L] [--seed S] [--out J]

`cm`'s logit is a sum: the slots' read-out, the recurrent row's (``recurrent_state``), the recent
reader's (``recent_clicks``) and the history mean's (mean, profile, count sketch). Each row of the
output is the test AUC of the same trained weights with one addend replaced by zero (a constant:
the ranking then comes from the other parts alone), and "only" rows keep one part. A part whose
removal leaves the AUC where it was is dead: the others carry the ranking. Nothing is retrained.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from cmrec.heads.reason import ReasonHead
from cmrec.models.cm import ContinualMemoryModel
from cmrec.pipelines._data import add_data_arguments, load_data
from cmrec.train import evaluate_split
from cmrec.train.checkpoint import CHECKPOINT, load_checkpoint

PARTS = ("slots", "recurrent", "reader", "mean")


@contextmanager
def held(model: ContinualMemoryModel, zeroed: set[str]) -> Iterator[None]:
    """Within the block, the logit parts named in `zeroed` are 0 for every candidate."""
    head: ReasonHead = model.reason
    saved: dict[str, Any] = {}

    def zeros_like_first(*args: Any, **_: Any) -> torch.Tensor:
        candidates = args[1]
        return candidates.new_zeros(candidates.shape[0])

    if "slots" in zeroed:
        saved["_slot_logits"] = head._slot_logits
        head._slot_logits = zeros_like_first  # type: ignore[method-assign]
    if "recurrent" in zeroed and head.recurrent_output is not None:
        saved["recurrent_output"] = head.recurrent_output
        head.recurrent_output = _Zero()
    if "mean" in zeroed and head.mean_output is not None:
        saved["mean_output"] = head.mean_output
        head.mean_output = _Zero()
    reader = model.recent
    if "reader" in zeroed and reader is not None:
        model.recent = _ZeroReader()  # type: ignore[assignment]
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(head, name, value)
        model.recent = reader


class _Zero(torch.nn.Module):
    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features.new_zeros(features.shape[0], 1)


class _ZeroReader(torch.nn.Module):
    def forward(self, recent: torch.Tensor, mask: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        return candidates.new_zeros(candidates.shape[0])


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--out", type=Path)
    parser.add_argument(
        "--seed", type=int, default=0, help="the run's --seed (it draws the split's negatives)"
    )
    add_data_arguments(parser, training=True)
    args = parser.parse_args(argv)
    model, vocabs, payload = load_checkpoint(args.run / CHECKPOINT)
    if not isinstance(model, ContinualMemoryModel):
        raise SystemExit(f"{args.run}: a {payload['model']} run; logit parts are cm's")
    data, source = load_data(args, training=True, vocabs=vocabs)
    present = [p for p in PARTS if _present(model, p)]
    rows: dict[str, float] = {}
    settings: list[tuple[str, set[str]]] = [("all parts", set())]
    settings += [(f"without {p}", {p}) for p in present]
    settings += [(f"only {p}", set(present) - {p}) for p in present]
    for name, zeroed in settings:
        with held(model, zeroed), torch.no_grad():
            rows[name] = evaluate_split(model, data, "test", 256).metrics["auc"]
        print(f"{name:>20}: test AUC {rows[name]:.4f}")
    if args.out:
        args.out.write_text(
            json.dumps({"run": str(args.run), "data": source, "test_auc": rows}, indent=2) + "\n"
        )
    return rows


def _present(model: ContinualMemoryModel, part: str) -> bool:
    head = model.reason
    return {
        "slots": True,
        "recurrent": head.recurrent_output is not None,
        "reader": model.recent is not None,
        "mean": head.mean_output is not None,
    }[part]


if __name__ == "__main__":
    main()
