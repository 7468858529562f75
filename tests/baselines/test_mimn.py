"""MIMN's delicate core, against a plain per-user, per-slot loop: content addressing, the
utilisation re-weighting, the erase/add write and the Memory Induction Unit, forward and gradients."""

from __future__ import annotations

import torch
from torch.testing import assert_close

from cmrec.baselines.mimn import MIMNConfig, MIMNModel
from cmrec.embeddings.tables import ItemEmbeddings


def _cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * b).sum() / (a.norm() * b.norm()).clamp(min=1e-8)


def _reference_step(
    model: MIMNModel, state: dict[str, torch.Tensor], x: torch.Tensor
) -> dict[str, torch.Tensor]:
    """One click for one user (unbatched tensors), every formula of the module docstring by hand."""
    d, m = model.config.item_dim, model.config.slots
    h = model.controller(torch.cat([x, state["r"]])[None], state["h"][None])[0]
    p = model.heads(h).clamp(-model.config.clip, model.config.clip)
    keys = [torch.tanh(p[:d]), torch.tanh(p[d + 1 : 2 * d + 1])]
    betas = [p[d], p[2 * d + 1]]
    erase, add = torch.sigmoid(p[2 * d + 2 : 3 * d + 2]), torch.tanh(p[3 * d + 2 :])
    weights = []
    for key, beta in zip(keys, betas, strict=True):
        sharp = model.config.sharpness * (torch.log1p(torch.exp(beta)) + 1)
        scores = [
            sharp * 0.5 * (_cosine(key, model.slot_keys[i]) + _cosine(key, state["M"][i])) for i in range(m)
        ]
        exps = [torch.exp(s) for s in scores]
        weights.append(torch.stack([e / sum(exps) for e in exps]))
    read_w, write_w = weights
    assert model.utilisation is not None and model.induction is not None
    share = (state["u"] / state["u"].sum().clamp(min=1e-9)).detach()  # a prior, not trained through
    logits = model.utilisation.weight @ share + model.utilisation.bias
    prior = torch.exp(logits) / torch.exp(logits).sum()
    write_w = write_w * prior / (write_w * prior).sum()
    memory = torch.stack([state["M"][i] * (1 - write_w[i] * erase) + write_w[i] * add for i in range(m)])
    chosen = int(torch.argmax(read_w))
    channels = [
        model.induction(torch.cat([x, state["M"][i].detach()])[None], state["S"][i][None])[0]
        if i == chosen
        else state["S"][i]
        for i in range(m)
    ]
    read = sum(read_w[i] * state["M"][i] for i in range(m))
    return {"M": memory, "S": torch.stack(channels), "h": h, "r": read, "u": state["u"] + write_w}


def test_steps_equal_the_plain_loop_forward_and_backward() -> None:
    torch.manual_seed(0)
    model = MIMNModel(MIMNConfig(item_dim=6, slots=3, mlp=(8,), attention_mlp=(4,)), ItemEmbeddings(50, 6))
    users, steps = 2, 5
    x = torch.randn(users, steps, 6, requires_grad=True)
    start = model._unpack(model.initial_memory(users))
    state = start
    for t in range(steps):
        state = model.step(state, x[:, t], keep_utilisation_grad=True)
    expected = []
    for b in range(users):
        mine = {k: v[b] for k, v in start.items()}
        for t in range(steps):
            mine = _reference_step(model, mine, x[b, t])
        expected.append(mine)
    for name in ("M", "S", "h", "r", "u"):
        assert_close(state[name], torch.stack([e[name] for e in expected]), rtol=1e-5, atol=1e-6)
    # Gradients of one scalar of every part, through both computations.
    probe = {k: torch.randn_like(v) for k, v in state.items()}
    params = [x, *[p for p in model.parameters() if p.requires_grad]]
    batched = sum((state[k] * probe[k]).sum() for k in probe)
    looped = sum((torch.stack([e[k] for e in expected]) * probe[k]).sum() for k in probe)
    got = torch.autograd.grad(batched, params, allow_unused=True, retain_graph=True)
    want = torch.autograd.grad(looped, params, allow_unused=True)
    compared = 0
    for g, w in zip(got, want, strict=True):
        assert (g is None) == (w is None)
        if g is not None and w is not None:
            assert_close(g, w, rtol=1e-4, atol=1e-5)
            compared += 1
    assert compared >= 8
    # The MIU moves exactly one channel per click, and the utilisation shares sum to the clicks.
    assert_close(state["u"].sum(dim=1), torch.full((users,), float(steps)), rtol=1e-5, atol=1e-5)
    moved = (state["S"].abs().sum(dim=-1) > 0).sum(dim=1)
    assert ((moved >= 1) & (moved <= steps)).all()


def test_a_padded_step_changes_nothing() -> None:
    torch.manual_seed(1)
    model = MIMNModel(MIMNConfig(item_dim=8, slots=4, mlp=(8,), attention_mlp=(4,)), ItemEmbeddings(30, 8))
    memory = model.initial_memory(3)
    items = torch.randint(2, 30, (3, 1, 7))
    mask = torch.ones(3, 1, 7, dtype=torch.bool)
    mask[1, 0, 4:] = False  # user 1 has 4 clicks, then padding
    written = model.write(memory, items, mask)
    shorter = model.write(memory[1:2], items[1:2, :, :4], mask[1:2, :, :4])
    assert_close(written[1:2], shorter, rtol=1e-6, atol=1e-6)
    untouched = model.write(memory, items, torch.zeros_like(mask))
    assert_close(untouched, memory)
