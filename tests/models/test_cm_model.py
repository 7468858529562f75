"""CM's modules: shapes, loss terms, presets, gradients, errors, and a learning run."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from cmrec.data import SplitConfig, build_from_events, make_loader, validate_events
from cmrec.data.jagged import segment_jagged
from cmrec.data.schema import CATEGORY_KEY, ITEM_KEY
from cmrec.data.synthetic import SyntheticConfig, generate
from cmrec.embeddings.tables import ItemEmbeddings
from cmrec.errors import ConfigError
from cmrec.heads.reason import ReasonHead
from cmrec.memory.sketch import KEY_BITS, key_buckets
from cmrec.models import CMConfig, ContinualMemoryModel, DataSpec, build_model, model_config, model_names
from cmrec.recall.fragments import sample_fragments
from cmrec.train import predict, train_epoch
from tests.models.conftest import TINY


@pytest.fixture(scope="module")
def small_data():  # type: ignore[no-untyped-def]
    log = generate(SyntheticConfig(users=300, length=60, items=300, categories=12, seed=1))
    return build_from_events(validate_events(log.events()), SplitConfig(max_len=60, train_targets_per_user=8))


def _batch(data, size: int = 16):  # type: ignore[no-untyped-def]
    return next(iter(make_loader(data.histories, data.train, size, data.max_len)))


def test_presets_are_registered_with_the_papers_ablations() -> None:
    names = {"cm", "cm-paper", "cm-recall", "cm-only-reason", "cm-only-item", "cm-only-seq", "cm-single-head"}
    assert names <= set(model_names())
    assert model_config("cm-paper") == CMConfig()  # the paper's recipe: the config's defaults
    product = model_config("cm")
    assert product.readout == "match" and product.dense_targets is not None
    assert product.history_mean and product.profile_rows == 2
    assert not product.uses_recall  # the recall losses lost on validation AUC (docs/results.md)
    assert CMConfig().readout == "linear" and CMConfig().dense_targets is None
    # Issue 29's levers: pending clicks read, the recurrent row beside the mean, the count sketch.
    assert product.recent_clicks and not product.recent_reader
    assert product.recurrent_state and product.recurrent_readout == "beside_mean"
    assert product.count_buckets == 256 and product.item_buckets == 1024
    assert product.memory_rows == 20 + 1 + 2 + 2 + (256 + 2 * 1024) // 64
    # cm-recall adds the recall losses to the wave-4 product (kept as it was measured); the
    # paper's Table 1 ablations are taken from it (only the reason loss: wave-4 cm).
    recall = model_config("cm-recall")
    assert (recall.lambda_item, recall.lambda_seq, recall.recall_trains_embeddings) == (0.1, 0.05, False)
    assert recall.readout == product.readout and recall.dense_targets == product.dense_targets
    assert recall.profile_rows == product.profile_rows
    assert not (recall.recent_clicks or recall.recurrent_state or recall.count_buckets)
    wave4 = model_config("cm-only-reason")
    assert wave4 == model_config(
        "cm",
        {
            "recent_clicks": False,
            "recurrent_state": False,
            "count_buckets": 0,
            "item_buckets": 0,
            "recent_reader": True,
            "recurrent_readout": "own",
        },
    )
    assert (model_config("cm-only-item").lambda_item, model_config("cm-only-item").lambda_seq) == (0.1, 0)
    assert (model_config("cm-only-seq").lambda_item, model_config("cm-only-seq").lambda_seq) == (0, 0.05)
    assert model_config("cm-single-head").subspaces == 1
    paper = CMConfig()
    assert (paper.item_dim, paper.memory_dim, paper.model_dim, paper.slots, paper.segment_len) == (
        64,
    ) * 3 + (
        20,
        20,
    )
    assert (paper.subspaces, paper.encoder_layers, paper.decoder_layers, paper.heads) == (4, 3, 3, 4)
    assert (paper.lambda_item, paper.lambda_seq, paper.lambda_reason) == (1.0, 0.5, 1.0)
    assert (paper.fragments, paper.sampled_items, paper.hops) == (5, 200, 1)


def test_output_shapes_losses_and_gradients(small_data) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    model = build_model("cm-paper", DataSpec.from_vocabs(small_data.vocabs), TINY).train()
    batch = _batch(small_data)
    out = model(batch)
    assert out.logits.shape == (16,)
    assert set(out.losses) == {"reason", "item", "seq"}
    assert out.weights == {"reason": 1.0, "item": 1.0, "seq": 0.5}
    for name, value in out.losses.items():
        assert value.dim() == 0 and torch.isfinite(value) and value > 0, name
    expected = out.losses["reason"] + out.losses["item"] + 0.5 * out.losses["seq"]
    torch.testing.assert_close(out.total(), expected)
    out.total().backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []
    memory, x, ids, mask = model.build_memory(batch.history)
    assert memory.shape == (batch.num_histories, 3, 8)
    assert x.shape == (batch.num_histories, 15, 4, 8) and ids.shape == mask.shape == x.shape[:3]


def test_evaluation_mode_reads_memory_only(small_data) -> None:  # type: ignore[no-untyped-def]
    model = build_model("cm", DataSpec.from_vocabs(small_data.vocabs), TINY).eval()
    assert isinstance(model, ContinualMemoryModel)
    batch = _batch(small_data)
    out = model(batch)
    assert set(out.losses) == {"reason"}
    states, _, ids, mask = model.build_trajectory(batch.history)
    # Scoring reads the memory of whole segments and the clicks since (the store's pending ones).
    segment_len = model.config.segment_len
    grid, _ = segment_jagged(
        batch.history[CATEGORY_KEY].values(), batch.history[ITEM_KEY].lengths(), segment_len
    )
    memories = torch.cat([model.initial_memory(len(states))[:, None], states], dim=1)
    lengths = mask.sum(dim=(1, 2))[batch.history_index]
    whole, rest = lengths // segment_len, lengths % segment_len
    rows = batch.history_index
    assert (rest > 0).any() and (whole > 0).all()
    pad = torch.zeros(len(ids), 1, segment_len, dtype=ids.dtype)
    pending = torch.cat([ids, pad], 1)[rows, whole], torch.cat([grid, pad], 1)[rows, whole]
    held = torch.arange(segment_len)[None] < rest[:, None]
    scores = model.score(
        memories[rows, whole],
        batch.target_items,
        batch.target_categories,
        recent=(pending[0], held, pending[1]),
    )
    torch.testing.assert_close(scores, out.logits)
    # Without them the memory scores differently: the clicks since count.
    without = model.score(memories[rows, whole], batch.target_items, batch.target_categories)
    assert (without - scores)[rest > 0].abs().min() > 1e-6


def test_ablation_presets_build_only_what_they_use(small_data) -> None:  # type: ignore[no-untyped-def]
    spec = DataSpec.from_vocabs(small_data.vocabs)
    batch = _batch(small_data)
    only_reason = build_model("cm-only-reason", spec, TINY).train()
    assert not [n for n, _ in only_reason.named_parameters() if n.startswith("recall")]
    assert set(only_reason(batch).losses) == {"reason", "mean"}  # the history mean's own loss stays
    assert set(build_model("cm-only-item", spec, TINY).train()(batch).losses) == {"reason", "mean", "item"}
    assert set(build_model("cm-only-seq", spec, TINY).train()(batch).losses) == {"reason", "mean", "seq"}
    single = build_model("cm-single-head", spec, {**TINY, "subspaces": 1})
    assert single.machine.update.gru.groups == 1  # type: ignore[union-attr]


def test_reason_head_hops_and_shapes() -> None:
    head = ReasonHead(item_dim=6, memory_dim=5, model_dim=8, hops=3)
    assert len(head.hops) == 3
    assert head(torch.randn(4, 7, 5), torch.randn(4, 6)).shape == (4,)


def test_fragments_mask_half_and_borrow_from_other_users() -> None:
    mask = torch.zeros(3, 4, 10, dtype=torch.bool)
    mask[0, :2] = True  # two full segments
    mask[1, 0, :6] = True  # one partial segment
    generator = torch.Generator().manual_seed(0)
    frag = sample_fragments(mask, fragments=5, mask_ratio=0.5, replace_ratio=0.5, generator=generator)
    assert frag.usable.tolist() == [True, True, False]
    assert frag.segment.shape == (3, 5)
    assert set(frag.segment[0].tolist()) <= {0, 1} and set(frag.segment[1].tolist()) == {0}
    assert frag.masked[0].sum(-1).tolist() == [5] * 5 and frag.masked[1].sum(-1).tolist() == [3] * 5
    assert not (frag.masked & ~frag.valid).any()
    borrowed = frag.replacement >= 0
    assert borrowed[0].sum(-1).tolist() == [2] * 5  # round(0.5 * 5 unmasked) = 2 (banker's rounding)
    assert not (borrowed & frag.masked).any()
    owners = frag.replacement[borrowed] // 40
    rows = torch.arange(3)[:, None, None].expand_as(borrowed)[borrowed]
    assert (owners != rows).all()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"model_dim": 10, "subspaces": 4}, "divisible by subspaces"),
        ({"item_dim": 10, "heads": 4}, "divisible by heads"),
        ({"slots": 0}, "slots must be a positive integer"),
        ({"mask_ratio": 1.0}, "mask_ratio must be in"),
        ({"lambda_seq": -1.0}, "lambda_seq must be >= 0"),
        ({"lambda_reason": 0.0}, "lambda_reason must be > 0"),
        ({"dropout": 1.0}, "dropout must be in"),
        ({"readout": "mlp"}, "readout must be one of"),
        ({"dense_per_segment": -1}, "dense_per_segment must be an integer >= 0"),
        ({"dense_last_segments": 1.5}, "'dense_last_segments' of 'cm' must be an integer, got 1.5"),
        ({"retention_init": -1.0}, "retention_init must be >= 0"),
        ({"slowest_write_rate": 0.0}, "slowest_write_rate must be in"),
        ({"slowest_write_rate": 1.5}, "slowest_write_rate must be in"),
        (
            {"count_buckets": 64, "history_mean": False, "profile_rows": 0},
            "count_buckets \\(64\\) needs history_mean: true",
        ),
        ({"count_buckets": -64}, "count_buckets must be an integer >= 0"),
        ({"count_buckets": 1 << 24}, "count_buckets must be below 16777216"),
        ({"item_buckets": -1}, "item_buckets must be an integer >= 0"),
        (
            {"item_buckets": 64, "count_buckets": 0, "history_mean": False, "profile_rows": 0},
            "item_buckets \\(64\\) needs history_mean: true",
        ),
        ({"recurrent_readout": "mixed"}, "recurrent_readout must be one of"),
        (
            {
                "recurrent_state": True,
                "recurrent_readout": "with_mean",
                "history_mean": False,
                "profile_rows": 0,
                "count_buckets": 0,
                "item_buckets": 0,
            },
            "'with_mean' needs history_mean",
        ),
        (
            {
                "recurrent_state": True,
                "item_dim": 32,
                "history_mean": False,
                "profile_rows": 0,
                "count_buckets": 0,
                "item_buckets": 0,
                "recurrent_readout": "own",
            },
            "recurrent_state needs item_dim == memory_dim, got 32 and 64",
        ),
    ],
)
def test_bad_config_values(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        model_config("cm", overrides)


def test_registry_and_input_errors(spec: DataSpec) -> None:
    with pytest.raises(
        ConfigError, match="unknown model 'cn'; choose one of: avg-pool, caser, cm, cm-only-item"
    ):
        build_model("cn", spec)
    with pytest.raises(ConfigError, match="unknown config key\\(s\\) for 'cm': slot"):
        build_model("cm", spec, {"slot": 3})
    model = build_model("cm", spec, TINY)
    assert isinstance(model, ContinualMemoryModel)
    with pytest.raises(ConfigError, match="write expects \\(B, T, 4\\) items"):
        model.write(
            model.initial_memory(1), torch.ones(1, 2, 5, dtype=torch.long), torch.ones(1, 2, 5).bool()
        )
    with pytest.raises(ConfigError, match="embeddings are 16 wide"):
        ContinualMemoryModel(CMConfig(**TINY), ItemEmbeddings(num_items=30, dim=16))
    with pytest.raises(ConfigError, match="needs item_category"):
        ItemEmbeddings(num_items=30, dim=8, num_categories=4)


def test_batch_without_categories_is_refused_by_a_model_with_them(small_data, spec: DataSpec) -> None:  # type: ignore[no-untyped-def]
    model = build_model("cm", spec, TINY)
    batch = _batch(small_data)
    items = batch.history["item"]
    batch.history = KeyedJaggedTensor.from_lengths_sync(
        keys=["item"], values=items.values(), lengths=items.lengths()
    )
    with pytest.raises(ConfigError, match="a model trained with categories needs them"):
        model(batch)


def test_cm_learns_on_generated_data(small_data) -> None:  # type: ignore[no-untyped-def]
    """3 epochs of tiny CM with the recall losses (`cm-recall`): test AUC above 0.62 (chance is
    0.5; the whole-history category heuristic scores 0.75 on this data), and both recall losses
    fall."""
    torch.manual_seed(0)
    config = {**TINY, "item_dim": 16, "memory_dim": 16, "model_dim": 16, "slots": 4, "segment_len": 10}
    config.update({"ffn_dim": 32, "sampled_items": 30})
    model = build_model("cm-recall", DataSpec.from_vocabs(small_data.vocabs), config)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    history = []
    for epoch in range(3):
        loader = make_loader(small_data.histories, small_data.train, 64, 60, shuffle=True, seed=epoch)
        history.append(train_epoch(model, loader, optimizer).losses)
    predictions = predict(model, make_loader(small_data.histories, small_data.test, 256, 60))
    auc = roc_auc_score(predictions.labels, predictions.scores)
    print(f"learning test: AUC {auc:.4f}; losses by epoch {history}")
    assert auc > 0.62, auc
    assert history[-1]["item"] < history[0]["item"] - 0.3
    assert history[-1]["seq"] < history[0]["seq"] - 0.05
    assert history[-1]["reason"] < history[0]["reason"]
    assert np.isfinite(predictions.scores).all()


def test_a_checkpoint_saved_before_a_config_field_existed_loads_as_it_was_trained(small_data) -> None:  # type: ignore[no-untyped-def]
    """Saved `cm` configs from before the product preset lack readout and the dense settings; they
    load with the config class's defaults (the paper's head they were trained with)."""
    from dataclasses import asdict
    from pathlib import Path

    from cmrec.train.checkpoint import model_from_payload

    torch.manual_seed(0)
    spec = DataSpec.from_vocabs(small_data.vocabs)
    trained = build_model("cm-paper", spec, TINY)
    config = asdict(trained.config)
    for added in (
        "readout",
        "dense_per_segment",
        "dense_last_segments",
        "dense_horizon",
        "retention_init",
        "slowest_write_rate",
    ):
        del config[added]
    payload = {"model": "cm", "config": config, "state_dict": trained.state_dict()}
    payload["vocabs"] = small_data.vocabs.to_dict()
    model, _, _ = model_from_payload(payload, Path("old/checkpoint.pt"))
    assert model.config.readout == "linear" and model.config.dense_targets is None
    batch = _batch(small_data)
    torch.testing.assert_close(model(batch).logits, trained.eval()(batch).logits)


def test_recent_reader_ignores_padding_and_reads_order_and_content() -> None:
    from cmrec.heads.recent import RecentReader

    torch.manual_seed(0)
    reader = RecentReader(item_dim=6, segment_len=4)
    torch.nn.init.normal_(reader.recency)  # trained values; zeros at the start would hide the order
    clicks, candidates = torch.randn(5, 3, 6), torch.randn(5, 6)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 0, 0], [0, 0, 0], [1, 1, 0]], dtype=torch.bool)
    base = reader(clicks, mask, candidates)
    # Padding never counts: other values there, or more padded columns, give the same logits.
    noisy = torch.where(mask[:, :, None], clicks, torch.randn_like(clicks))
    torch.testing.assert_close(reader(noisy, mask, candidates), base)
    wider = torch.cat([clicks, torch.randn(5, 2, 6)], dim=1)
    torch.testing.assert_close(
        reader(wider, torch.cat([mask, torch.zeros(5, 2, dtype=torch.bool)], 1), candidates), base
    )
    # No recent click: what is read does not depend on the clicks' values at all.
    empty = reader(torch.zeros(5, 0, 6), torch.zeros(5, 0, dtype=torch.bool), candidates)
    torch.testing.assert_close(empty[3], base[3])
    # The clicks and their order count.
    swapped = clicks.clone()
    swapped[0, [0, 2]] = clicks[0, [2, 0]]
    assert (reader(swapped, mask, candidates)[0] - base[0]).abs() > 1e-6
    assert (reader(clicks + 1, mask, candidates)[:3] - base[:3]).abs().min() > 1e-6
    assert (base >= 0).all()  # evidence for a candidate only: softplus of the MLP's logit


def test_counting_a_partial_segment_is_what_writing_it_does_to_the_mean_and_profile(small_data) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    mean_and_profile = {
        **TINY,
        "count_buckets": 0,
        "item_buckets": 0,
        "recurrent_state": False,
        "recurrent_readout": "own",
    }
    model = build_model("cm", DataSpec.from_vocabs(small_data.vocabs), mean_and_profile).eval()
    assert isinstance(model, ContinualMemoryModel)
    machine, slots = model.machine, model.config.slots
    memory = machine(
        machine.initial_memory(3), torch.randn(3, 2, 4, 8), torch.ones(3, 2, 4, dtype=torch.bool)
    )
    clicks = torch.randn(3, 4, 8)
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]], dtype=torch.bool)
    written = machine(memory, clicks[:, None], mask[:, None])
    counted = machine.count_partial(memory, clicks, mask)
    torch.testing.assert_close(counted[:, slots:], written[:, slots:])  # the mean, profile and count
    torch.testing.assert_close(counted[:, :slots], memory[:, :slots])  # the slots: whole segments only
    torch.testing.assert_close(counted[2], memory[2])  # no click: nothing changes
    assert (counted[0, slots:] - memory[0, slots:]).abs().max() > 1e-4


def _recurrent_model(spec: DataSpec, **config: object) -> ContinualMemoryModel:
    torch.manual_seed(0)
    overrides = {**TINY, "recurrent_state": True, "count_buckets": 8, "item_buckets": 0, **config}
    model = build_model("cm", spec, overrides).eval()
    assert isinstance(model, ContinualMemoryModel)
    return model


def test_the_recurrent_row_is_a_gru_over_every_click_written_in_any_chunks(spec: DataSpec) -> None:
    model = _recurrent_model(spec)
    machine, slots = model.machine, model.config.slots
    assert machine.recurrent is not None
    assert model.config.memory_rows == slots + 1 + 2 + 2 + 1  # slots, GRU, mean, 2 profile, 1 count, n
    items = torch.randint(2, 30, (3, 3, 4))
    mask = torch.ones(3, 3, 4, dtype=torch.bool)
    mask[1, 2, 2:] = False  # user 1: two whole segments and a partial one
    mask[2, 1:] = False  # user 2: one segment only
    whole = model.write(model.initial_memory(3), items, mask)
    for user, clicks in enumerate([12, 10, 4]):
        x = model.embeddings.lookup(items[user].reshape(-1)[:clicks])[None]  # (1, clicks, d)
        _, expected = machine.recurrent(x)
        torch.testing.assert_close(whole[user, slots], expected[0, 0])
    chunked = model.initial_memory(3)
    for t in range(3):  # segment by segment, as a refresh writes them
        chunked = model.write(chunked, items[:, t], mask[:, t])
    torch.testing.assert_close(chunked, whole)
    # Padding before a real click would hide clicks from the GRU: refused.
    holes = mask.clone()
    holes[0, 0, 1] = False
    with pytest.raises(ConfigError, match="real clicks first"):
        model.write(model.initial_memory(3), items, holes)


def test_the_count_sketch_is_the_exact_share_of_each_category(spec: DataSpec) -> None:
    model = _recurrent_model(spec)
    items = torch.randint(2, 30, (2, 3, 4))
    memory = model.write(model.initial_memory(2), items, torch.ones(2, 3, 4, dtype=torch.bool))
    counts = model.reason._split(memory).counts
    assert counts is not None and counts.shape == (2, 8)  # 8 buckets >= 7 categories: exact
    for user in range(2):
        categories = spec.item_category[items[user].reshape(-1)]  # type: ignore[index]
        share = torch.bincount(categories, minlength=8).double() / 12
        torch.testing.assert_close(counts[user].double(), share, rtol=0, atol=1e-6)
    # C not a multiple of d_m: ceil(C / d_m) rows, the entries past C stay 0.
    odd = build_model("cm", spec, {**TINY, "item_buckets": 0, "count_buckets": 12}).eval()
    assert isinstance(odd, ContinualMemoryModel) and odd.config.memory_rows == 3 + 1 + 2 + 2 + 2 + 0
    odd_memory = odd.write(odd.initial_memory(2), items, torch.ones(2, 3, 4, dtype=torch.bool))
    odd_counts = odd.reason._split(odd_memory).counts
    assert odd_counts is not None and odd_counts.shape == (2, 16)
    torch.testing.assert_close(odd_counts[:, :8], counts)  # the same shares: 12 buckets >= 7 keys
    assert torch.count_nonzero(odd_counts[:, 8:]) == 0
    # Keys count categories on data with categories, item ids without them; each key also
    # carries its item id (for the item sketch).
    wide = build_model("cm", spec, {**TINY, "item_buckets": 0, "count_buckets": 16}).eval()
    assert isinstance(wide, ContinualMemoryModel)
    keys = wide.count_keys(torch.tensor([5, 7]))
    assert keys is not None
    assert key_buckets(keys, 16, 0)[:, 0].tolist() == spec.item_category[[5, 7]].tolist()  # type: ignore[index]
    assert (keys >> KEY_BITS).tolist() == [5, 7]
    plain = DataSpec(num_items=30)
    no_categories = build_model("cm", plain, {**TINY, "item_buckets": 0, "count_buckets": 8}).eval()
    assert isinstance(no_categories, ContinualMemoryModel)
    plain_keys = no_categories.count_keys(torch.tensor([5, 29]))
    assert plain_keys is not None and key_buckets(plain_keys, 8, 0)[:, 0].tolist() == [5, 29 % 8]
    sketch = no_categories.write(
        no_categories.initial_memory(1), torch.tensor([[5, 13, 29, 6]]), torch.ones(1, 4, dtype=torch.bool)
    )
    hashed = no_categories.reason._split(sketch).counts
    assert hashed is not None
    assert hashed[0].tolist() == pytest.approx([0, 0, 0, 0, 0, 0.75, 0.25, 0])  # 5, 13, 29 -> 5; 6 -> 6


def test_the_item_sketch_counts_each_item_written_in_any_chunks(spec: DataSpec) -> None:
    """Two count-min tables of C_i entries beside the category sketch: each sums to 1, the
    smaller of an item's two entries bounds its clicks from above, and with C_i far above the
    number of items it is exact; writing in chunks gives the same sketch."""
    model = _recurrent_model(spec, item_buckets=256)
    # 3 slots, the GRU row, the mean and its count, 2 profile rows, (8 + 2 x 256) / d_m = 8 count rows
    assert model.config.memory_rows == 3 + 1 + 2 + 2 + 65
    items = torch.randint(2, 30, (2, 3, 4))
    mask = torch.ones(2, 3, 4, dtype=torch.bool)
    memory = model.write(model.initial_memory(2), items, mask)
    chunked = model.write(
        model.write(model.initial_memory(2), items[:, :1], mask[:, :1]), items[:, 1:], mask[:, 1:]
    )
    counts, chunked_counts = model.reason._split(memory).counts, model.reason._split(chunked).counts
    assert counts is not None and chunked_counts is not None
    torch.testing.assert_close(chunked_counts, counts)
    tables = counts[:, 8 : 8 + 2 * 256].unflatten(1, (2, 256))
    torch.testing.assert_close(tables.sum(dim=-1), torch.ones(2, 2))
    candidates = torch.arange(2, 30)
    keys = model.count_keys(candidates)
    assert keys is not None
    for user in range(2):
        entries = counts[user, key_buckets(keys, 8, 256)[:, 1:]]  # (28, 2)
        estimate = entries.amin(dim=1) * 3 * 4  # 3 whole segments of 4
        clicks = torch.bincount(items[user].reshape(-1), minlength=30)[2:].to(estimate.dtype)
        assert bool((estimate >= clicks - 1e-5).all())
        torch.testing.assert_close(estimate, clicks, rtol=0, atol=1e-5)  # 28 items in 256 entries: exact here


def test_the_item_sketch_tells_a_clicked_candidate_from_an_unclicked_one_of_its_category(
    spec: DataSpec,
) -> None:
    """Items 7 and 12 share a category (2 + i % 5): only the item sketch tells them apart, and
    the item-sketch model scores them differently while the category-only model cannot."""
    clicked = torch.tensor([[[7, 7, 3, 4]]])
    mask = torch.ones(1, 1, 4, dtype=torch.bool)
    for item_buckets, differ in ((0, False), (256, True)):
        model = _recurrent_model(spec, item_buckets=item_buckets)
        memory = model.write(model.initial_memory(1), clicked, mask)
        parts = model.reason._split(memory)
        # Hold every other feature of the two candidates equal: the same embedding.
        with torch.no_grad():
            features = model.embeddings.lookup(torch.tensor([7]))
            logits = [
                model.reason(memory, features, keys=model.count_keys(torch.tensor([item])))
                for item in (7, 12)
            ]
        assert parts.counts is not None
        assert (abs(float(logits[0] - logits[1])) > 1e-6) is differ


def test_a_candidate_is_scored_by_its_share_of_the_history(spec: DataSpec) -> None:
    """Two users with the same items in different categories' proportions score a candidate
    differently through the count sketch alone (the other rows held equal)."""
    model = _recurrent_model(spec)
    memory = model.write(
        model.initial_memory(1), torch.randint(2, 30, (1, 2, 4)), torch.ones(1, 2, 4, dtype=torch.bool)
    )
    start = memory.shape[1] - 2  # the count row sits before the segment count
    other = memory.clone()
    other[0, start] = torch.roll(memory[0, start], 1)
    candidates = torch.tensor([7])
    assert (model.score(memory, candidates) - model.score(other, candidates)).abs().item() > 1e-6


def test_counting_pending_clicks_is_what_writing_them_does_to_the_gru_and_the_means(spec: DataSpec) -> None:
    model = _recurrent_model(spec, recent_clicks=True)
    slots = model.config.slots
    memory = model.write(
        model.initial_memory(3), torch.randint(2, 30, (3, 2, 4)), torch.ones(3, 2, 4, dtype=torch.bool)
    )
    pending = torch.randint(2, 30, (3, 4))
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]], dtype=torch.bool)
    written = model.write(memory, pending, mask)
    clicks = model.embeddings.lookup(pending)
    counted = model.machine.count_partial(memory, clicks, mask, model.count_keys(pending))
    torch.testing.assert_close(counted[:, slots:], written[:, slots:])  # GRU row, means, sketch, count
    torch.testing.assert_close(counted[:, :slots], memory[:, :slots])  # the slots: whole segments only
    torch.testing.assert_close(counted[2], memory[2])
    assert (counted[0, slots] - memory[0, slots]).abs().max() > 1e-4  # the GRU ran over the clicks


def test_scoring_many_candidates_per_user_counts_the_pending_clicks_once_with_the_same_logits(
    spec: DataSpec,
) -> None:
    for reader in (False, True):
        model = _recurrent_model(spec, recent_clicks=True, recent_reader=reader)
        memory = model.write(
            model.initial_memory(2), torch.randint(2, 30, (2, 2, 4)), torch.ones(2, 2, 4, dtype=torch.bool)
        )
        pending = torch.randint(2, 30, (2, 3))
        mask = torch.tensor([[1, 1, 1], [1, 0, 0]], dtype=torch.bool)
        rows = torch.tensor([0, 0, 1, 0, 1])
        items = torch.randint(2, 30, (5,))
        per_user = model.score(memory, items, recent=(pending, mask, None), rows=rows)
        per_candidate = model.score(memory[rows], items, recent=(pending[rows], mask[rows], None))
        torch.testing.assert_close(per_user, per_candidate)


def test_stored_pending_rows_held_in_any_chunks_score_as_the_clicks_do(spec: DataSpec) -> None:
    """A stored state keeps its pending clicks' running form (constant size): held in any chunks it
    equals holding them at once, and scores what the memory and the clicks score; a write resets it."""
    model = _recurrent_model(spec, recent_clicks=True, profile_rows=2)
    rows, extra = model.config.memory_rows, model.pending_rows
    assert extra == 1 + 2 + 1 and model.needs.memory_shape == (rows + extra, model.config.memory_dim)
    segments = torch.randint(2, 30, (3, 2, 4))
    state = model.write(model.initial_state(3), segments, torch.ones(3, 2, 4, dtype=torch.bool))
    memory = model.write(model.initial_memory(3), segments, torch.ones(3, 2, 4, dtype=torch.bool))
    torch.testing.assert_close(state, model._reset_pending(memory))
    pending = torch.randint(2, 30, (3, 3))
    mask = torch.tensor([[1, 1, 1], [1, 0, 0], [0, 0, 0]], dtype=torch.bool)
    at_once = model.hold(state, pending, mask)
    first, rest = mask.clone(), mask.clone()
    first[:, 1:], rest[:, :1] = False, False  # the first click, then the others (shifted to the front)
    in_two = model.hold(model.hold(state, pending, first), pending[:, 1:], rest[:, 1:])
    torch.testing.assert_close(in_two, at_once, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(at_once[:, :rows], memory)  # the memory rows are untouched
    torch.testing.assert_close(at_once[2], state[2])  # nothing held: the rows are as they were
    items = torch.randint(2, 30, (5,))
    users = torch.tensor([0, 0, 1, 2, 1])
    recent = (pending, mask, None)
    from_state = model.score(at_once, items, recent=recent, rows=users)
    torch.testing.assert_close(
        from_state, model.score(memory, items, recent=recent, rows=users), rtol=1e-5, atol=1e-6
    )
    # Without pending clicks (scoring from the memory alone) the held rows are not read.
    torch.testing.assert_close(
        model.score(at_once, items, rows=users), model.score(memory, items, rows=users)
    )
    # Writing a segment resets the held rows of the users it wrote to, and only theirs.
    segment = torch.randint(2, 30, (3, 1, 4))
    written_mask = torch.tensor([[True], [False], [True]]).expand(3, 4)[:, None]
    after = model.write(at_once, segment, written_mask)
    torch.testing.assert_close(after[1], at_once[1])
    torch.testing.assert_close(after[0], model._reset_pending(model.write(memory, segment, written_mask))[0])
    with pytest.raises(ConfigError, match="stored states"):
        model.score(at_once[:, :-1], items, recent=recent, rows=users)
