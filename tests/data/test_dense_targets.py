"""Dense supervision in the collator: targets inside each history, never outside it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cmrec.data.batch import Collator, DenseSupervision, DenseTargets, make_loader
from cmrec.data.dataset import SplitConfig, build_from_events
from cmrec.data.events import validate_events
from cmrec.data.samples import Histories, NegativeSampler, Samples
from cmrec.data.synthetic import SyntheticConfig, generate
from cmrec.errors import ConfigError
from cmrec.models import DataSpec, build_model


def _store() -> tuple[Histories, Samples]:
    """Sequence 0: 11 events (items 2..12), sequence 1: 5 events (items 13..17); categories = item + 100."""
    items = np.arange(2, 18, dtype=np.int32)
    histories = Histories(
        items=items, categories=items + 100, offsets=np.array([0, 11, 16]), users=np.array([0, 1])
    )
    samples = Samples(
        sequence=np.array([0, 0, 1, 1]),
        prefix_len=np.array([10, 10, 5, 5]),
        target_item=np.array([12, 3, 17, 4]),
        target_category=np.array([112, 103, 117, 104]),
        label=np.array([1, 0, 1, 0], dtype=np.float32),
    )
    return histories, samples


def _supervision(targets: DenseTargets, seed: int = 0) -> DenseSupervision:
    item_category = np.arange(20) + 100
    return DenseSupervision(targets, NegativeSampler(num_items=20), item_category, seed)


def test_every_click_after_the_first_segment_is_a_target_with_a_negative() -> None:
    histories, samples = _store()
    batch = Collator(histories, samples, max_len=8, dense=_supervision(DenseTargets(segment_len=3)))(
        [0, 1, 2, 3]
    )
    targets = batch.history_targets
    assert targets is not None
    # History 0 is the last 8 of sequence 0's first 10 events: items 4..11; history 1: items 13..17.
    # Positions 3.. of each (the first segment of 3 gives no target).
    assert targets.history_row[0::2].tolist() == [0] * 5 + [1] * 2
    assert targets.position[0::2].tolist() == [3, 4, 5, 6, 7, 3, 4]
    assert targets.items[0::2].tolist() == [7, 8, 9, 10, 11, 16, 17]
    assert targets.labels.tolist() == [1.0, 0.0] * 7
    assert (targets.items[1::2] != targets.items[0::2]).all()  # a negative is never the click
    assert targets.categories is not None
    assert (targets.categories == targets.items + 100).all()  # own and negative categories
    assert (targets.history_row[0::2] == targets.history_row[1::2]).all()
    assert (targets.position[0::2] == targets.position[1::2]).all()
    # The sample targets (prefix ends) are not among the dense targets: positions stay inside.
    lengths = batch.history["item"].lengths()
    assert (targets.position < lengths[targets.history_row]).all()


def test_per_segment_and_last_segments_choose_fewer_targets() -> None:
    histories, samples = _store()
    full = DenseTargets(segment_len=2, per_segment=1)
    batch = Collator(histories, samples, max_len=10, dense=_supervision(full))([0, 1, 2, 3])
    targets = batch.history_targets
    assert targets is not None
    positions = targets.position[0::2]
    rows = targets.history_row[0::2]
    # History 0 has 10 events = 5 segments of 2 -> one target from each of segments 1..4; history
    # 1 has 5 events -> segments 1 and 2 (the last one partial).
    assert rows.tolist() == [0, 0, 0, 0, 1, 1]
    assert (positions // 2).tolist() == [1, 2, 3, 4, 1, 2]
    last = DenseTargets(segment_len=2, last_segments=2)
    batch = Collator(histories, samples, max_len=10, dense=_supervision(last))([0, 1, 2, 3])
    assert batch.history_targets is not None
    assert batch.history_targets.position[0::2].tolist() == [6, 7, 8, 9, 2, 3, 4]


@pytest.mark.parametrize("horizon", [0, 1, 2])
def test_a_horizon_lets_an_older_memory_score_the_click(horizon: int) -> None:
    histories, samples = _store()
    spec = DenseTargets(segment_len=2, horizon=horizon)
    seen, before = [], []
    for seed in range(20):  # the draws differ by seed; pool them
        targets = Collator(histories, samples, 10, dense=_supervision(spec, seed))(
            [0, 1, 2, 3]
        ).history_targets
        assert targets is not None
        assert (targets.seen[0::2] == targets.seen[1::2]).all()  # a positive and its negative alike
        seen.append(targets.seen[0::2].numpy())
        before.append((targets.position[0::2] // 2).numpy())
    got, limit = np.concatenate(seen), np.concatenate(before)
    assert (got >= 1).all() and (got <= limit).all()
    if horizon == 1:
        assert (got == limit).all()
    else:
        reach = limit if horizon == 0 else np.minimum(limit, horizon)
        assert (got > limit - reach).all()
        for lag in range(int(reach.max())):  # every allowed lag occurs
            assert (limit - got == lag).any()


def test_draws_are_seeded() -> None:
    histories, samples = _store()
    spec = DenseTargets(segment_len=2, per_segment=1)
    first, again, other = (
        Collator(histories, samples, 10, dense=_supervision(spec, seed))([0, 1, 2, 3]).history_targets
        for seed in (0, 0, 5)
    )
    assert first is not None and again is not None and other is not None
    assert first.items.tolist() == again.items.tolist()
    assert first.items.tolist() != other.items.tolist()


def test_no_training_target_comes_from_the_held_out_region() -> None:
    log = generate(SyntheticConfig(users=40, length=30, items=200, categories=10, seed=2))
    events = validate_events(log.events())
    data = build_from_events(events, SplitConfig(max_len=30))
    dense = DenseSupervision(
        DenseTargets(segment_len=5), NegativeSampler(len(data.vocabs.items)), data.vocabs.item_category
    )
    loader = make_loader(data.histories, data.train, 16, data.max_len, dense=dense)
    held_out = {(int(s), int(t)) for s, t in zip(data.valid.sequence, data.valid.prefix_len, strict=True)}
    held_out |= {(int(s), int(t)) for s, t in zip(data.test.sequence, data.test.prefix_len, strict=True)}
    seen = 0
    for rows in loader.batch_sampler:
        batch = loader.collate_fn(rows)
        targets = batch.history_targets
        assert targets is not None
        sequences = data.train.sequence[np.asarray(rows)]
        # Each history row's sequence, and where that history starts inside the sequence.
        keys = list(dict.fromkeys(zip(sequences, data.train.prefix_len[np.asarray(rows)], strict=True)))
        lengths = batch.history["item"].lengths().numpy()
        pairs = zip(
            targets.history_row[0::2].numpy(),
            targets.position[0::2].numpy(),
            targets.items[0::2].numpy(),
            strict=True,
        )
        for row, position, item in pairs:
            sequence, prefix = keys[row]
            absolute = prefix - lengths[row] + position  # the click's index in its sequence
            assert absolute < prefix and (int(sequence), int(absolute)) not in held_out
            assert data.histories.items[data.histories.offsets[sequence] + absolute] == item
            seen += 1
    # Per user: 32 events, the training target at 29 (validation 30, test 31), so a training history
    # of 29 events whose first segment of 5 gives no target.
    assert seen == 40 * (29 - 5)


def test_bad_requests_are_refused() -> None:
    with pytest.raises(ConfigError, match="per_segment, last_segments, horizon >= 0"):
        DenseTargets(segment_len=20, per_segment=-1)
    with pytest.raises(ConfigError, match="got 20, 0, 0, -1"):
        DenseTargets(segment_len=20, horizon=-1)
    assert DenseTargets.request(20, 0, 0) is None
    assert DenseTargets.request(20, 25, 3) == DenseTargets(20, 0, 3)  # more than N: every click


def test_sample_share_weighs_the_samples_and_the_dense_targets_as_asked() -> None:
    histories, samples = _store()
    batch = Collator(histories, samples, max_len=8, dense=_supervision(DenseTargets(segment_len=3)))(
        [0, 1, 2, 3]
    )
    assert batch.history_targets is not None
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(batch.num_samples, generator=generator)
    dense = torch.randn(len(batch.history_targets), generator=generator)
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    on_samples, on_dense = bce(logits, batch.labels), bce(dense, batch.history_targets.labels)
    pooled = bce(torch.cat([logits, dense]), torch.cat([batch.labels, batch.history_targets.labels]))
    assert torch.isclose(batch.target_loss(logits, dense), pooled)  # 0: every target counts once
    share = batch.target_loss(logits, dense, sample_share=0.25)
    assert torch.isclose(share, 0.25 * on_samples + 0.75 * on_dense)
    assert not torch.isclose(share, pooled)
    # Without dense targets in the batch the samples carry the whole loss.
    assert torch.isclose(batch.target_loss(logits, dense[:0], sample_share=0.25), on_samples)


@pytest.mark.parametrize("share", [-0.1, 1.0])
def test_a_sample_share_outside_0_1_is_refused(share: float) -> None:
    for name in ("cm", "avg-pool", "gru4rec"):
        with pytest.raises(ConfigError, match="sample_share must be in"):
            build_model(name, DataSpec(num_items=20), {"sample_share": share})
