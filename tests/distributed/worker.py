"""Run by `torchrun --nproc_per_node 2` from test_sharding.py: each scenario on 2 gloo processes.

Writes a JSON file of measured differences (rank 0); the test asserts on them. Tiny sizes.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository, for tests.*

from cmrec.data.batch import HistoryNegatives, make_loader
from cmrec.data.dataset import SplitConfig, build_from_events
from cmrec.data.events import validate_events
from cmrec.data.synthetic import SyntheticConfig, generate
from cmrec.errors import ConfigError
from cmrec.models.registry import DataSpec, build_model
from cmrec.train import distributed
from cmrec.train.loop import predict
from tests.models.conftest import TINY

MODELS = {"cm": TINY, "dien": {"item_dim": 8}, "gru4rec": {"item_dim": 8}, "avg-pool": {"item_dim": 8}}
SHARDINGS = ["table-wise", "row-wise", "column-wise", "auto"]


def broadcast(tensor: torch.Tensor) -> torch.Tensor:
    """Rank 0's copy of a tensor."""
    copied = tensor.detach().clone()
    torch.distributed.broadcast(copied, src=0)
    return copied


def main(out: Path) -> None:
    cluster = distributed.Cluster.from_env()
    events = generate(SyntheticConfig(users=40, length=48, items=200, categories=10, seed=0)).events()
    data = build_from_events(validate_events(events), SplitConfig(max_len=48))
    spec = DataSpec.from_vocabs(data.vocabs)
    results: dict[str, Any] = {"forward": {}, "plans": {}}

    def fresh(name: str) -> torch.nn.Module:
        torch.manual_seed(0)
        return build_model(name, spec, MODELS[name])

    # 1. Sharded forward == unsharded forward with the same weights; this rank's own batch, whose
    # size differs between ranks (rank 0: 8 samples, rank 1: 6).
    for name in MODELS:
        negatives = HistoryNegatives(len(data.vocabs.items), data.vocabs.item_category, 0)
        batches = list(make_loader(data.histories, data.train, 8 - 2 * cluster.rank, 48, negatives=negatives))
        batch = batches[cluster.rank]
        for sharding in SHARDINGS:
            model = fresh(name)
            plain = copy.deepcopy(model)
            sharded, _, plan = distributed.shard_model(
                model, cluster, distributed.ShardingOptions(sharding=sharding)
            )
            results["plans"][f"{name}/{sharding}"] = distributed.describe_plan(plan)
            diffs = {}
            with torch.no_grad():
                sharded.eval(), plain.eval()
                diffs["eval_logits"] = (sharded(batch).logits - plain(batch).logits).abs().max().item()
                sharded.train(), plain.train()
                torch.manual_seed(1)
                got = sharded(batch).total()
                torch.manual_seed(1)
                want = plain(batch).total()
                diffs["train_loss"] = abs(got.item() - want.item())
            diffs = {k: max(cluster.sum([v])[0], 0.0) for k, v in diffs.items()}  # both ranks' diffs
            results["forward"][f"{name}/{sharding}"] = diffs

    # 2. Gathered predictions over the user shards == single-process predictions, in row order.
    model = fresh("cm")
    plain = copy.deepcopy(model)
    sharded, _, _ = distributed.shard_model(model, cluster, distributed.ShardingOptions(sharding="row-wise"))
    loader = make_loader(data.histories, data.test, 6, 48, shard=(cluster.rank, cluster.world_size))
    local = predict(sharded, loader)
    gathered = cluster.gather_predictions(local, loader.batch_sampler.rows(), len(data.test))
    single = predict(plain, make_loader(data.histories, data.test, 6, 48))
    results["gather"] = {
        "local_rows": len(local.scores),
        "rows": len(gathered.scores),
        "expected_rows": len(data.test),
        "labels_equal": bool((gathered.labels == single.labels).all()),
        "users_equal": bool((gathered.users == single.users).all()),
        "max_score_diff": float(abs(gathered.scores - single.scores).max()),
    }

    # 3. Save after 2 steps -> load into a fresh sharded model -> steps 3 and 4 give the same losses
    # as the uninterrupted run (step 4 depends on the restored optimiser state).
    train = list(make_loader(data.histories, data.train, 8, 48, shuffle=True, seed=cluster.rank))[:4]
    checkpoint = out.parent / "resume-checkpoint"

    def step(model: torch.nn.Module, optimizer: Any, batch: Any) -> float:
        loss = model(batch).total()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    def trained(options: distributed.ShardingOptions) -> tuple[Any, Any]:
        model, optimizer, _ = distributed.shard_model(fresh("cm"), cluster, options)
        model.train()
        torch.manual_seed(5 + cluster.rank)
        return model, optimizer

    resume: dict[str, Any] = {}
    for sharding in ("row-wise", "table-wise"):
        options = distributed.ShardingOptions(sharding=sharding, embedding_lr=0.05, dense_lr=0.01)
        model, optimizer = trained(options)
        first = [step(model, optimizer, b) for b in train[:2]]
        distributed.save_distributed(checkpoint, cluster, model, optimizer, {"note": "after 2 steps"})
        uninterrupted = [step(model, optimizer, b) for b in train[2:]]
        spread = 0.0  # dense parameters stay identical on both ranks (DDP averages the gradients)
        for key, parameter in model.named_parameters():
            if "embeddings" not in key:
                spread = max(spread, float((parameter.detach() - broadcast(parameter)).abs().max()))
        model, optimizer = trained(options)
        no_load = [step(model, optimizer, b) for b in train[2:]]
        model, optimizer = trained(options)
        state = distributed.load_distributed(checkpoint, cluster, model, optimizer)
        resumed = [step(model, optimizer, b) for b in train[2:]]
        # Only the model restored, optimiser state fresh: step 4 differs (what a lost state does).
        model, optimizer = trained(options)
        distributed.load_distributed(checkpoint, cluster, model, None)
        torch.set_rng_state(torch.load(checkpoint / f"rng-rank{cluster.rank}.pt")["torch"])
        fresh_optimizer = [step(model, optimizer, b) for b in train[2:]]
        resume[sharding] = {
            "first": first,
            "uninterrupted": uninterrupted,
            "resumed": resumed,
            "no_load": no_load,
            "fresh_optimizer": fresh_optimizer,
            "dense_spread": cluster.sum([spread])[0],
            "note": state["note"],
        }
    results["resume"] = resume

    # 4. Each fused table optimiser offered on CPU trains: the tables move, losses stay finite.
    optimizers = {}
    for choice in ("rowwise-adagrad", "adagrad", "sgd"):
        options = distributed.ShardingOptions(
            sharding="row-wise", embedding_optimizer=choice, embedding_lr=0.1
        )
        model, optimizer = trained(options)
        table = model.state_dict()["embeddings.collection.embeddings.item.weight"]
        before = table.local_shards()[0].tensor.clone()
        losses = [step(model, optimizer, b) for b in train]
        moved = float((table.local_shards()[0].tensor - before).abs().max())
        optimizers[choice] = {"losses": losses, "table_change": cluster.sum([moved])[0]}
    results["optimizers"] = optimizers

    # 5. Fused Adam for the tables is refused on CPU with a clear error.
    try:
        distributed.shard_model(fresh("cm"), cluster, distributed.ShardingOptions(embedding_optimizer="adam"))
        results["adam_on_cpu"] = "accepted"
    except ConfigError as exc:
        results["adam_on_cpu"] = str(exc)

    if cluster.is_main:
        out.write_text(json.dumps(results, indent=2))
    cluster.close()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
