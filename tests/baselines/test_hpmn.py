"""HPMN's periodic update against a plain per-click loop, forward and gradients, whole and in chunks."""

from __future__ import annotations

import torch
from torch.testing import assert_close

from cmrec.baselines.hpmn import HPMNConfig, HPMNModel, covariance_penalty, update_every
from cmrec.embeddings.tables import ItemEmbeddings


def _reference(model: HPMNModel, clicks: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
    """One user's (n, D) clicks, one at a time: layer j + 1 steps on every periods[j]-th output of
    layer j. Returns the (J, H) final states and how often each layer stepped."""
    layers = model.config.layers
    states = [torch.zeros(model.config.hidden) for _ in range(layers)]
    steps = [0] * layers

    def push(j: int, value: torch.Tensor) -> None:
        _, h = model.grus[j](value[None, None], states[j][None, None])
        states[j] = h[0, 0]
        steps[j] += 1
        if j + 1 < layers and steps[j] % model.config.periods[j] == 0:
            push(j + 1, states[j])

    for x in clicks:
        push(0, x)
    return torch.stack(states), steps


def _model(seed: int = 0) -> HPMNModel:
    torch.manual_seed(seed)
    config = HPMNConfig(item_dim=6, hidden=5, periods=(2, 3, 2), hops=2, mlp=(8,), attention_mlp=(4,))
    return HPMNModel(config, ItemEmbeddings(40, 6))


def test_periodic_update_equals_the_plain_loop_forward_and_backward() -> None:
    model = _model()
    lengths = [13, 1, 0, 24]
    x = torch.randn(len(lengths), max(lengths), 6, requires_grad=True)
    steps = torch.tensor(lengths)
    mask = torch.arange(x.shape[1])[None] < steps[:, None]
    state = model.consume(model.initial_memory(len(lengths)), x, mask, steps)
    expected = [_reference(model, x[b, :n]) for b, n in enumerate(lengths)]
    assert_close(state[:, :4], torch.stack([e[0] for e in expected]), rtol=1e-5, atol=1e-6)
    assert state[:, 4, 0].tolist() == [float(n) for n in lengths]
    assert expected[3][1] == [24, 12, 4, 2] and update_every(model.config) == [1, 2, 6, 12]
    probe = torch.randn_like(state[:, :4])
    got = torch.autograd.grad((state[:, :4] * probe).sum(), [x, *model.grus.parameters()], retain_graph=True)
    want = torch.autograd.grad(
        (torch.stack([e[0] for e in expected]) * probe).sum(), [x, *model.grus.parameters()]
    )
    for g, w in zip(got, want, strict=True):
        assert_close(g, w, rtol=1e-4, atol=1e-5)


def test_clicks_in_chunks_equal_one_write() -> None:
    model = _model(1).eval()
    items = torch.randint(2, 40, (3, 1, 29))
    mask = torch.ones(3, 1, 29, dtype=torch.bool)
    mask[1, 0, 17:] = False
    with torch.no_grad():
        whole = model.write(model.initial_memory(3), items.reshape(3, 29, 1), mask.reshape(3, 29, 1))
        memory = model.initial_memory(3)
        for a, b in [(0, 5), (5, 6), (6, 18), (18, 29)]:
            memory = model.write(
                memory, items[:, :, a:b].reshape(3, -1, 1), mask[:, :, a:b].reshape(3, -1, 1)
            )
    assert_close(memory, whole, rtol=1e-5, atol=1e-6)
    assert whole[:, -1, 0].tolist() == [29.0, 17.0, 29.0]


def test_covariance_penalty_is_zero_for_uncorrelated_rows_and_positive_otherwise() -> None:
    rows = torch.tensor([[[1.0, -1.0, 0.0, 0.0], [0.0, 0.0, 1.0, -1.0]]])  # orthogonal, zero-mean
    assert float(covariance_penalty(rows)) < 1e-5
    same = torch.tensor([[[1.0, -1.0, 2.0, 0.0], [1.0, -1.0, 2.0, 0.0]]])
    assert float(covariance_penalty(same)) > 0.5
