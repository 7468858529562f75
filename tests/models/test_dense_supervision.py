"""Dense supervision in the models: each dense target is scored exactly as a sample whose history
ends where the target's state does (CM: at the segment boundary before it; the baselines: at the
event before it), and the reason/ctr loss averages over samples and targets."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from torch.nn import functional
from torch.testing import assert_close

from cmrec.data import SplitConfig, build_from_events, make_loader, validate_events
from cmrec.data.batch import Batch, Collator, DenseSupervision
from cmrec.data.dataset import ClickLogData
from cmrec.data.samples import NegativeSampler, Samples
from cmrec.data.synthetic import SyntheticConfig, generate
from cmrec.heads.reason import ReasonHead
from cmrec.models import DataSpec, build_model
from tests.models.conftest import TINY

SMALL: dict[str, dict[str, Any]] = {
    "cm": {**TINY, "dense_per_segment": 2},
    "cm-paper": {**TINY, "dense_per_segment": 4},  # the paper's linear read-out, every click
    "cm-only-reason": {**TINY, "dense_per_segment": 3, "dense_horizon": 0},  # any earlier memory
    # cm reading its recent clicks: a target is scored like a sample ending right before it.
    "cm-recent": {**TINY, "dense_per_segment": 3, "recent_clicks": True},
    # ... and with the recurrent row and the count sketch, which the clicks since also advance.
    "cm-recurrent": {
        **TINY,
        "dense_per_segment": 3,
        "recent_clicks": True,
        "recurrent_state": True,
        "count_buckets": 8,
    },
    # ... and without the reader: the clicks since are counted and run through the GRU only.
    "cm-no-reader": {
        **TINY,
        "dense_per_segment": 3,
        "recent_clicks": True,
        "recent_reader": False,
        "recurrent_state": True,
        "count_buckets": 8,
    },
    # The recurrent row's read-out beside the mean's, and inside the mean's MLP.
    "cm-beside-mean": {
        **TINY,
        "dense_per_segment": 3,
        "recent_clicks": True,
        "recurrent_state": True,
        "recurrent_readout": "beside_mean",
    },
    "cm-with-mean": {
        **TINY,
        "dense_per_segment": 3,
        "recent_clicks": True,
        "recurrent_state": True,
        "recurrent_readout": "with_mean",
    },
    # The recurrent row and the sketch without recent_clicks: targets see whole segments only.
    "cm-recurrent-written": {**TINY, "dense_per_segment": 3, "recurrent_state": True, "count_buckets": 8},
    "gru4rec": {"item_dim": 8, "hidden": 8, "mlp": (16,), "dense_per_segment": 3},
    "avg-pool": {"item_dim": 8, "mlp": (16,), "dense_per_segment": 20, "dense_last_segments": 1},
    # The paper's other baselines: MIMN's loop keeps the state at each target's step, HPMN reads
    # every layer's output at the prefix, Caser and RUM their windows (and RUM its mean) before it.
    "mimn": {"item_dim": 8, "mlp": (16,), "attention_mlp": (8,), "dense_per_segment": 3},
    "hpmn": {"item_dim": 8, "hidden": 8, "mlp": (16,), "attention_mlp": (8,), "dense_per_segment": 4},
    "caser": {"item_dim": 8, "mlp": (16,), "dense_per_segment": 3},
    "rum": {"item_dim": 8, "mlp": (16,), "slots": 6, "dense_per_segment": 3},
}


REGISTERED = {
    "cm-recent": "cm",
    "cm-recurrent": "cm",
    "cm-recurrent-written": "cm",
    "cm-no-reader": "cm",
    "cm-beside-mean": "cm",
    "cm-with-mean": "cm",
}  # the registry name of a SMALL entry named otherwise


@pytest.fixture(scope="module")
def data() -> ClickLogData:
    log = generate(SyntheticConfig(users=12, length=40, items=60, categories=6, seed=4))
    return build_from_events(validate_events(log.events()), SplitConfig(max_len=100))


def _dense_batch(data: ClickLogData, model: torch.nn.Module) -> Batch:
    sampler = NegativeSampler(len(data.vocabs.items))
    dense = DenseSupervision(model.needs.dense_targets, sampler, data.vocabs.item_category, seed=3)
    return next(iter(make_loader(data.histories, data.train, 16, data.max_len, dense=dense)))


@pytest.mark.parametrize("name", sorted(SMALL))
def test_dense_targets_are_scored_like_samples_that_end_at_their_state(data: ClickLogData, name: str) -> None:
    torch.manual_seed(0)
    model = build_model(REGISTERED.get(name, name), DataSpec.from_vocabs(data.vocabs), SMALL[name]).eval()
    batch = _dense_batch(data, model)
    targets = batch.history_targets
    assert targets is not None and len(targets) > 0
    # max_len exceeds every history, so each history row is its sequence's first `prefix` events.
    rows = np.flatnonzero(np.r_[True, np.diff(batch.history_index.numpy()) != 0])[: batch.num_histories]
    sequence = data.train.sequence[np.arange(16)][rows]
    position = targets.position.numpy()
    if name.startswith("cm"):  # the memory after the first `seen` whole segments
        n = model.config.segment_len
        seen = targets.seen.numpy()
        assert ((seen >= 1) & (seen <= position // n)).all()
        if model.config.dense_horizon == 1:
            assert (seen == position // n).all()
        else:
            assert (seen < position // n).any()  # some targets are scored by an older memory
        if not model.config.recent_clicks:
            position = seen * n
        else:  # the memory of whole segments and the clicks since: every click before the target
            assert (position % n != 0).any()
    assert targets.categories is not None
    alone = Samples(
        sequence=sequence[targets.history_row.numpy()],
        prefix_len=position,
        target_item=targets.items.numpy(),
        target_category=targets.categories.numpy(),
        label=targets.labels.numpy(),
    )
    expected = model(Collator(data.histories, alone, data.max_len)(np.arange(len(alone)))).logits
    output = model(batch)
    name_of_loss = "reason" if name.startswith("cm") else "ctr"
    want = functional.binary_cross_entropy_with_logits(
        torch.cat([output.logits, expected]), torch.cat([batch.labels, targets.labels])
    )
    assert_close(output.losses[name_of_loss], want, rtol=1e-5, atol=1e-6)
    # And the samples' own logits do not depend on the dense targets.
    batch.history_targets = None
    assert_close(model(batch).logits, output.logits)


@pytest.mark.parametrize("readout", ["linear", "match"])
def test_head_rows_equal_gathered_memories(readout: str) -> None:
    torch.manual_seed(0)
    head = ReasonHead(item_dim=6, memory_dim=5, model_dim=8, hops=2, readout=readout)  # type: ignore[arg-type]
    memory, candidates = torch.randn(4, 3, 5), torch.randn(9, 6)
    rows = torch.tensor([0, 3, 3, 1, 2, 0, 0, 3, 1])
    memory.requires_grad_()
    gathered = head(memory, candidates, rows)  # the hidden layer computed in place in its gathered copy
    reference = head(memory[rows], candidates)
    assert_close(gathered, reference)
    weights = torch.randn(len(rows))
    got = torch.autograd.grad((gathered * weights).sum(), [memory, *head.parameters()], allow_unused=True)
    want = torch.autograd.grad((reference * weights).sum(), [memory, *head.parameters()], allow_unused=True)
    for g, w in zip(got, want, strict=True):
        assert (g is None) == (w is None)
        if g is not None:
            assert_close(g, w)


def test_dense_targets_add_gradient_to_the_encoder(data: ClickLogData) -> None:
    """Without recall losses, the reason loss alone trains the encoder through every boundary."""
    torch.manual_seed(0)
    model = build_model("cm-only-reason", DataSpec.from_vocabs(data.vocabs), {**TINY, "dense_per_segment": 4})
    batch = _dense_batch(data, model)
    model(batch).total().backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and torch.count_nonzero(parameter.grad) > 0, name
