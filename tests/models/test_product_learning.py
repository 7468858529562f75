"""What the product preset changes: CM learns from its memory where the paper's recipe does not.

On generated data whose early, dormant interest returns at the held-out targets, tiny CM with the
product preset (dense targets, match read-out, history mean) beats the paper's recipe (one target
per user, linear read-out) on the same budget: overall and on the targets with recent evidence (Q1
of the forgetting diagnostic). The history-mean and interest-profile rows are what keep the old
evidence: without them the same model is far worse on the targets whose evidence is in the oldest
quarter (Q4), and with them CM beats avg-pool there (measured on data seeds 3, 4, 5 before the item
sketch: Q4 0.835, 0.828, 0.812 against 0.763, 0.683, 0.671; with it, seed 3: 0.809 against 0.763;
the test runs seed 3 and asks for the issue's Q4 margin, 0.03). Fixed seeds; deterministic on CPU.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from cmrec.data import SplitConfig, build_from_events, make_loader, validate_events
from cmrec.data.batch import DenseSupervision
from cmrec.data.dataset import ClickLogData
from cmrec.data.samples import NegativeSampler
from cmrec.data.synthetic import SyntheticConfig, generate
from cmrec.eval.forgetting import bucket_aucs, evidence_buckets
from cmrec.eval.metrics import auc
from cmrec.models import DataSpec, build_model
from cmrec.train import predict, train_epoch

LENGTH = 80
CM_TINY: dict[str, Any] = {
    "item_dim": 16,
    "memory_dim": 16,
    "model_dim": 16,
    "slots": 6,
    "segment_len": 10,
    "subspaces": 2,
    "encoder_layers": 1,
    "decoder_layers": 1,
    "heads": 2,
    "ffn_dim": 32,
    "sampled_items": 30,
    "dense_per_segment": 10,
}
PAPER_TINY: dict[str, Any] = {**CM_TINY, "dense_per_segment": 0}
AVG_POOL_TINY: dict[str, Any] = {"item_dim": 16, "dense_per_segment": 10}  # the same width and targets


@pytest.fixture(scope="module")
def dormant_data() -> ClickLogData:
    config = SyntheticConfig(
        users=400, length=LENGTH, items=400, categories=16, early_fraction=0.2, p_return=1.0, seed=3
    )
    return build_from_events(validate_events(generate(config).events()), SplitConfig(max_len=LENGTH))


@pytest.fixture(scope="module")
def product(dormant_data: ClickLogData) -> dict[str, float]:
    """The product preset, trained once for the tests below."""
    return _train("cm", CM_TINY, dormant_data, epochs=3)


def _train(name: str, overrides: dict[str, Any], data: ClickLogData, epochs: int) -> dict[str, float]:
    """Test AUC overall ("all") and per evidence-age bucket after `epochs` epochs."""
    torch.manual_seed(0)
    model = build_model(name, DataSpec.from_vocabs(data.vocabs), overrides)
    request = model.needs.dense_targets
    sampler = NegativeSampler(len(data.vocabs.items))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for epoch in range(epochs):
        dense = (
            None if request is None else DenseSupervision(request, sampler, data.vocabs.item_category, epoch)
        )
        loader = make_loader(data.histories, data.train, 32, LENGTH, shuffle=True, seed=epoch, dense=dense)
        train_epoch(model, loader, optimizer)
    predictions = predict(model, make_loader(data.histories, data.test, 256, LENGTH))
    buckets = evidence_buckets(data.histories, data.test, LENGTH)
    aucs = bucket_aucs(buckets, predictions.labels, predictions.scores)
    return {"all": auc(predictions.labels, predictions.scores), **{b: v["auc"] for b, v in aucs.items()}}


def test_product_cm_learns_where_the_papers_recipe_does_not(
    dormant_data: ClickLogData, product: dict[str, float]
) -> None:
    buckets = evidence_buckets(dormant_data.histories, dormant_data.test, LENGTH)
    assert np.sum(buckets == "Q1") // 2 >= 100  # enough recent-evidence pairs to tell them apart
    paper = _train("cm-paper", PAPER_TINY, dormant_data, epochs=3)
    print(f"test AUC (all, by evidence age): cm {product}; cm-paper {paper}")
    assert product["all"] > paper["all"] + 0.05, (product, paper)
    assert product["Q1"] > paper["Q1"] + 0.1, (product, paper)


def test_the_history_mean_keeps_the_oldest_evidence(
    dormant_data: ClickLogData, product: dict[str, float]
) -> None:
    buckets = evidence_buckets(dormant_data.histories, dormant_data.test, LENGTH)
    assert np.sum(buckets == "Q4") // 2 >= 50  # enough oldest-evidence pairs to tell them apart
    with_mean = product
    plain = {
        **CM_TINY,
        "history_mean": False,
        "profile_rows": 0,
        "lambda_mean": 0.0,
        "count_buckets": 0,  # the count sketch is kept like the mean: without it, none
        "item_buckets": 0,
        "recurrent_readout": "own",
    }
    without = _train("cm", plain, dormant_data, epochs=3)
    print(f"test AUC (all, by evidence age): with the mean {with_mean}; without {without}")
    assert with_mean["Q4"] > without["Q4"] + 0.05, (with_mean, without)
    assert with_mean["all"] > without["all"], (with_mean, without)


def test_cm_beats_avg_pool_on_the_oldest_evidence(
    dormant_data: ClickLogData, product: dict[str, float]
) -> None:
    """The issue's claim: on the targets whose last evidence lies in the oldest quarter of the
    history (the dormant interest returning), CM scores better than the mean-pooled history."""
    buckets = evidence_buckets(dormant_data.histories, dormant_data.test, LENGTH)
    assert np.sum(buckets == "Q4") // 2 >= 50
    cm = product
    pooled = _train("avg-pool", AVG_POOL_TINY, dormant_data, epochs=3)
    print(f"test AUC (all, by evidence age): cm {cm}; avg-pool {pooled}")
    assert cm["Q4"] > pooled["Q4"] + 0.03, (cm, pooled)
    assert cm["all"] > pooled["all"], (cm, pooled)
