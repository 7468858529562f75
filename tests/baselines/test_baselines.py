"""DIEN, GRU4REC and avg-pool under the shared Model contract."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from sklearn.metrics import roc_auc_score
from torch.testing import assert_close

from cmrec.baselines.augru import AUGRU
from cmrec.baselines.rum import RUMModel
from cmrec.data import HistoryNegatives, SplitConfig, build_from_events, make_loader, validate_events
from cmrec.data.dataset import ClickLogData
from cmrec.data.samples import Samples
from cmrec.data.synthetic import SyntheticConfig, generate
from cmrec.errors import ConfigError
from cmrec.models import DataSpec, build_model, model_config
from cmrec.train import predict, train_epoch

SMALL: dict[str, dict[str, Any]] = {
    "dien": {"item_dim": 16, "hidden": 16, "mlp": (32, 16), "attention_mlp": (16, 8), "aux_mlp": (16, 8)},
    "gru4rec": {"item_dim": 16, "hidden": 16, "mlp": (32, 16)},
    "avg-pool": {"item_dim": 16, "mlp": (32, 16)},
    "mimn": {"item_dim": 16, "mlp": (32, 16), "attention_mlp": (16, 8), "aux_mlp": (16, 8)},
    "hpmn": {"item_dim": 16, "hidden": 16, "mlp": (32, 16), "attention_mlp": (16, 8)},
    "caser": {"item_dim": 16, "mlp": (32, 16)},
    "rum": {"item_dim": 16, "mlp": (32, 16)},
}


@pytest.fixture(scope="module")
def data() -> ClickLogData:
    log = generate(SyntheticConfig(users=300, length=60, items=300, categories=12, seed=1))
    return build_from_events(validate_events(log.events()), SplitConfig(max_len=60, train_targets_per_user=4))


def _negatives(data: ClickLogData, seed: int = 0) -> HistoryNegatives:
    return HistoryNegatives(len(data.vocabs.items), data.vocabs.item_category, seed=seed)


def _loader(data: ClickLogData, split: str = "train", size: int = 16, **kwargs: Any):  # type: ignore[no-untyped-def]
    return make_loader(
        data.histories, data.split(split), size, data.max_len, negatives=_negatives(data), **kwargs
    )


@pytest.mark.parametrize(
    ("name", "terms"),
    [
        ("dien", {"ctr", "aux"}),
        ("gru4rec", {"ctr"}),
        ("avg-pool", {"ctr"}),
        ("mimn", {"ctr", "utilisation"}),
        ("mimn-aux", {"ctr", "utilisation", "aux"}),
        ("hpmn", {"ctr", "covariance"}),
        ("caser", {"ctr"}),
        ("rum", {"ctr"}),
    ],
)
def test_shapes_loss_terms_and_gradients(data: ClickLogData, name: str, terms: set[str]) -> None:
    torch.manual_seed(0)
    overrides = {**SMALL["mimn"], "aux_weight": 0.5} if name == "mimn-aux" else SMALL[name]
    model = build_model(name.removesuffix("-aux"), DataSpec.from_vocabs(data.vocabs), overrides).train()
    batch = next(iter(_loader(data)))
    out = model(batch)
    assert out.logits.shape == (16,)
    assert set(out.losses) == terms == set(out.weights)
    assert all(torch.isfinite(v) and v > 0 for v in out.losses.values())
    out.total().backward()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []


def test_padding_and_batch_composition_do_not_change_a_logit(data: ClickLogData) -> None:
    """A user's pair scored alone, or beside a longer history (more right padding), scores the same."""
    for name in ("dien", "gru4rec", "avg-pool", "mimn", "hpmn", "caser", "rum"):
        torch.manual_seed(0)
        model = build_model(name, DataSpec.from_vocabs(data.vocabs), SMALL[name]).eval()
        test = data.test
        pair = Samples(
            test.sequence[:2],
            test.prefix_len[:2] - 40,
            test.target_item[:2],
            test.target_category[:2],
            test.label[:2],
        )  # a 21-event history
        longer = Samples.concat([pair, test.take(torch.arange(2, 4).numpy())])  # beside a 61-event one
        alone = model(next(iter(make_loader(data.histories, pair, 2, 60, negatives=_negatives(data))))).logits
        together = model(
            next(iter(make_loader(data.histories, longer, 4, 60, negatives=_negatives(data))))
        ).logits
        assert_close(together[:2], alone, rtol=1e-5, atol=1e-5, msg=lambda m, n=name: f"{n}: {m}")


def test_dien_aux_loss_off_cleanly(data: ClickLogData) -> None:
    spec = DataSpec.from_vocabs(data.vocabs)
    model = build_model("dien", spec, {**SMALL["dien"], "aux_weight": 0.0})
    assert not [n for n, _ in model.named_parameters() if n.startswith("auxiliary")]
    assert model.needs.history_negatives is False
    plain = make_loader(data.histories, data.train, 16, data.max_len)  # no negatives sampled
    out = model(next(iter(plain)))
    assert set(out.losses) == {"ctr"} and out.weights == {"ctr": 1.0}
    with_aux = build_model("dien", spec, SMALL["dien"])
    with pytest.raises(ConfigError, match="needs sampled negative behaviours"):
        with_aux(next(iter(plain)))


def _augru_reference(augru: AUGRU, inputs: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
    w_i, w_h, b_i, b_h = augru.input_weight, augru.hidden_weight, augru.input_bias, augru.hidden_bias
    size = augru.hidden_size
    finals = []
    for s in range(inputs.shape[0]):
        h = torch.zeros(size)
        for t in range(inputs.shape[1]):
            gi, gh = w_i @ inputs[s, t] + b_i, w_h @ h + b_h
            r = torch.sigmoid(gi[:size] + gh[:size])
            u = attention[s, t] * torch.sigmoid(gi[size : 2 * size] + gh[size : 2 * size])
            n = torch.tanh(gi[2 * size :] + r * gh[2 * size :])
            h = (1 - u) * h + u * n
        finals.append(h)
    return torch.stack(finals)


def test_augru_equals_plain_loop_forward_and_backward() -> None:
    torch.manual_seed(0)
    augru = AUGRU(5, 4)
    inputs = torch.randn(3, 6, 5, requires_grad=True)
    attention = torch.softmax(torch.randn(3, 6), -1).requires_grad_()
    out, expected = augru(inputs, attention), _augru_reference(augru, inputs, attention)
    assert_close(out, expected)
    weights = torch.randn_like(out)
    params = [inputs, attention, *augru.parameters()]
    for got, want in zip(
        torch.autograd.grad((out * weights).sum(), params),
        torch.autograd.grad((expected * weights).sum(), params),
        strict=True,
    ):
        assert_close(got, want)
    # A zero attention step leaves the state as it was.
    zeroed = attention.detach().clone()
    zeroed[:, 3:] = 0
    assert_close(augru(inputs, zeroed), augru(inputs[:, :3], zeroed[:, :3]))


@pytest.mark.parametrize("name", ["dien", "gru4rec", "avg-pool", "mimn", "hpmn", "caser", "rum"])
def test_each_baseline_learns(data: ClickLogData, name: str) -> None:
    """Two epochs on 2,400 samples: test AUC above the model's bar (0.67; HPMN 0.63: it reached
    0.657 here, and 0.64-0.66 with one hop, one period or no covariance term), training loss falls."""
    torch.manual_seed(0)
    model = build_model(name, DataSpec.from_vocabs(data.vocabs), SMALL[name])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = train_epoch(model, _loader(data, size=64, shuffle=True, seed=0), optimizer).losses
    losses = train_epoch(model, _loader(data, size=64, shuffle=True, seed=1), optimizer).losses
    assert losses["total"] < first["total"]
    predictions = predict(model, _loader(data, "test", size=256))
    auc = roc_auc_score(predictions.labels, predictions.scores)
    print(f"{name}: two epochs, losses {losses}, test AUC {auc:.4f}")
    assert auc > {"hpmn": 0.63}.get(name, 0.67), auc


@pytest.mark.parametrize(
    ("name", "overrides", "message"),
    [
        ("dien", {"aux_weight": -1.0}, "aux_weight must be >= 0"),
        ("dien", {"mlp": ()}, "mlp must be positive"),
        ("gru4rec", {"hidden": 0}, "hidden must be positive"),
        ("avg-pool", {"item_dim": -3}, "item_dim must be positive"),
        ("avg-pool", {"dense_per_segment": 21}, "dense_per_segment must be in \\[0, 20\\]"),
        ("gru4rec", {"dense_last_segments": -1}, "dense_last_segments >= 0"),
        ("mimn", {"slots": 0}, "slots must be positive"),
        ("mimn", {"slots": 65}, "slots \\(65\\) must be <= item_dim"),
        ("mimn", {"utilisation_weight": -0.1}, "utilisation_weight must be >= 0"),
        ("hpmn", {"periods": (2, 0)}, "periods must be >= 1"),
        ("hpmn", {"hops": 0}, "hops must be positive"),
        ("caser", {"window": 0}, "window must be positive"),
        ("rum", {"alpha": -1.0}, "alpha must be >= 0"),
        ("caser", {"dropout": 1.0}, "dropout must be in \\[0, 1\\)"),
    ],
)
def test_bad_configs(name: str, overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        model_config(name, overrides)


def test_caser_window_is_the_last_clicks_zero_padded_in_front() -> None:
    from cmrec.baselines.caser import last_window

    x = torch.arange(1, 13, dtype=torch.float32).reshape(2, 6, 1)  # two right-padded histories
    window = last_window(x, torch.tensor([6, 2]), 4)
    assert window[..., 0].tolist() == [[3.0, 4.0, 5.0, 6.0], [0.0, 0.0, 7.0, 8.0]]


def test_rum_reads_only_the_latest_clicks(data: ClickLogData) -> None:
    """The memory read sees the K latest clicks only: changing an older click leaves it as it was,
    changing a recent one does not; a history shorter than K reads only its own clicks."""
    torch.manual_seed(0)
    model = build_model("rum", DataSpec.from_vocabs(data.vocabs), {**SMALL["rum"], "slots": 3})
    assert isinstance(model, RUMModel)
    x, lengths, target = torch.randn(2, 7, 16), torch.tensor([7, 2]), torch.randn(2, 16)
    rows = torch.arange(2)
    base = model.read(x, rows, lengths, target)
    older, recent = x.clone(), x.clone()
    older[0, 3] += 1.0  # the 4th latest of 7 clicks
    recent[0, 5] += 1.0
    assert_close(model.read(older, rows, lengths, target), base)
    assert (model.read(recent, rows, lengths, target)[0] - base[0]).abs().max() > 1e-3
    padded = x.clone()
    padded[1, 2:] = 99.0  # past the end of the 2-click history
    assert_close(model.read(padded, rows, lengths, target), base)
