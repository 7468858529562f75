"""The claim CM is for: it remembers early behaviour better than pooling does.

On generated data whose early, dormant interest returns at the held-out targets, tiny CM (the
product preset: dense targets, match head, recall losses) beats avg-pool (given the same dense
targets) on the test pairs whose evidence lies only in the oldest quarter of the history (Q4 of the
forgetting diagnostic). Fixed seeds; deterministic on CPU.
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
AVG_TINY: dict[str, Any] = {"item_dim": 16, "mlp": (32, 16), "dense_per_segment": 10}


@pytest.fixture(scope="module")
def dormant_data() -> ClickLogData:
    config = SyntheticConfig(
        users=400, length=LENGTH, items=400, categories=16, early_fraction=0.2, p_return=1.0, seed=3
    )
    return build_from_events(validate_events(generate(config).events()), SplitConfig(max_len=LENGTH))


def _train(name: str, overrides: dict[str, Any], data: ClickLogData, epochs: int) -> dict[str, float]:
    torch.manual_seed(0)
    model = build_model(name, DataSpec.from_vocabs(data.vocabs), overrides)
    request = model.dense_targets
    sampler = NegativeSampler(len(data.vocabs.items))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for epoch in range(epochs):
        dense = DenseSupervision(request, sampler, data.vocabs.item_category, seed=epoch)
        loader = make_loader(data.histories, data.train, 32, LENGTH, shuffle=True, seed=epoch, dense=dense)
        train_epoch(model, loader, optimizer)
    predictions = predict(model, make_loader(data.histories, data.test, 256, LENGTH))
    buckets = evidence_buckets(data.histories, data.test, LENGTH)
    return {
        name: value["auc"]
        for name, value in bucket_aucs(buckets, predictions.labels, predictions.scores).items()
    }


def test_cm_beats_avg_pool_on_the_oldest_evidence(dormant_data: ClickLogData) -> None:
    buckets = evidence_buckets(dormant_data.histories, dormant_data.test, LENGTH)
    assert np.sum(buckets == "Q4") // 2 >= 100  # enough old-evidence pairs to tell the models apart
    cm = _train("cm", CM_TINY, dormant_data, epochs=3)
    pooled = _train("avg-pool", AVG_TINY, dormant_data, epochs=3)
    print(f"AUC by evidence age: cm {cm}; avg-pool {pooled}")
    assert cm["Q4"] > pooled["Q4"] + 0.03, (cm, pooled)
