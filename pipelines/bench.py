"""`cmrec bench`: measure a model's training step and its parts on this machine; write JSON.

With ``--serving``: the serving benchmark instead (see `pipelines.bench_serving`): scoring latency
of CM from the store against DIEN and GRU4REC from the raw history, refresh throughput, store
latency and bytes per user, for L in ``--lengths``.

Measures, on generated XLong-style data: forward + backward + Adam step time per batch (mean of
``--steps`` steps after one warm-up), samples/s, the forward + backward time of each part of CM
measured separately on the same batch (embeddings, segment encoder, memory update loop, recall
model, reason head), and FLOPs counted by `torch.utils.flop_counter` (forward + backward, per
sample). Timings are noisy on shared machines: compare runs made together.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from cmrec.atomic import write_json
from cmrec.data import (
    SplitConfig,
    build_from_events,
    validate_events,
)
from cmrec.data.batch import Batch
from cmrec.data.dataset import ClickLogData
from cmrec.data.synthetic import SyntheticConfig, generate
from cmrec.errors import ConfigError
from cmrec.memory.machine import Trajectory
from cmrec.models import ContinualMemoryModel, DataSpec, build_model, model_names
from cmrec.output import ModelOutput
from cmrec.pipelines._common import read_overrides, run_command
from cmrec.pipelines.bench_serving import add_serving_arguments, print_serving, run_serving
from cmrec.precision import PRECISIONS, autocast, cpu_model, native_bfloat16
from cmrec.train import Batches

DESCRIPTION = "Benchmark a model's training step (and CM's parts) on generated data; write JSON."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        nargs="+",
        default=["cm"],
        choices=model_names(),
        help="registered model name(s); several are measured in one run on the same batches",
    )
    parser.add_argument(
        "--length",
        type=int,
        nargs="+",
        default=[1000],
        help="history length L (default 1000); more values add a scaling table of each model's step "
        "time at every L against the first (e.g. --length 1000 200 5000)",
    )
    parser.add_argument("--batch-size", type=int, default=128, help="samples per batch (default 128)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up (default 3)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0, help="seed of data and weights")
    parser.add_argument(
        "--precision",
        choices=("auto", *PRECISIONS),
        default="auto",
        help="float32, bfloat16 (autocast), or auto (default): float32, and bfloat16 too where the "
        "device has it natively (CPU avx512_bf16 or AMX, a CUDA GPU with bf16)",
    )
    parser.add_argument("--device", default="cpu", help="torch device of the training benchmark (cpu)")
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    parser.add_argument(
        "--config",
        type=Path,
        help="YAML file of config values for the cm models measured (e.g. `recent_clicks: true`); "
        "the other models keep their presets",
    )
    add_serving_arguments(parser)


def run(args: argparse.Namespace) -> int:
    args.cm_overrides = read_overrides(args.config)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.serving:
        if args.candidates < 1 or args.requests < 1 or min(args.lengths) < 1:
            raise ConfigError("--candidates, --requests and every --lengths value must be >= 1")
        serving = run_serving(args)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        write_json(args.out, serving)
        print_serving(serving)
        print(f"wrote {args.out}")
        return 0
    if args.steps < 1 or args.batch_size < 2 or min(args.length) < 1:
        raise ConfigError("--steps >= 1, --batch-size >= 2 and --length >= 1 are required")
    device = torch.device(args.device)
    native = native_bfloat16(device)
    precisions = _precisions(args.precision, native)
    rates = {precision: _matmul_rate(device, precision) for precision in precisions}
    headline, *others = args.length
    runs: dict[str, list[dict[str, Any]]] = {}
    scaling = []
    for length in args.length:
        data = _bench_data(length, args)
        for precision in precisions:
            for name in args.model:
                measured = _bench_model(name, data, args, device, precision, parts=length == headline)
                measured["matmul_share"] = round(measured["train_gflops_per_second"] / rates[precision], 4)
                if length == headline:
                    runs.setdefault(precision, []).append(measured)
                scaling.append({"model": name, "precision": precision, "length": length, **_scaled(measured)})
    at_headline = {(m["model"], m["precision"]): m["step_seconds"] for ms in runs.values() for m in ms}
    for row in scaling:
        row[f"step_over_L{headline}"] = round(
            row["step_seconds"] / at_headline[row["model"], row["precision"]], 3
        )
    result = {
        "length": headline,
        "batch_size": args.batch_size,
        "steps": args.steps,
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads",
        "cpu": cpu_model() or platform.machine(),
        "device": str(device),
        "native_bfloat16": native,  # what gives the device bf16 arithmetic, None where nothing does
        "precisions": precisions,
        "torch": torch.__version__,
        "matmul_gflops_per_second": rates["float32"] if "float32" in rates else None,
        "matmul_gflops_per_second_by_precision": rates,
        "cm_config": args.cm_overrides,  # --config: what the cm models changed from their presets
        "runs": runs.get("float32", []),  # float32 at the first --length (the product's path)
        "runs_by_precision": runs,
        **({"scaling": scaling} if others else {}),
        "speedup": _speedups(runs),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out, result)
    _print_all(result, rates)
    print(f"wrote {args.out}")
    return 0


def _precisions(asked: str, native: str | None) -> list[str]:
    """The precisions to measure: what was asked; auto: float32, and bfloat16 where it is native."""
    if asked != "auto":
        return [asked]
    return ["float32", "bfloat16"] if native else ["float32"]


def _bench_data(length: int, args: argparse.Namespace) -> ClickLogData:
    users = (args.batch_size // 2) * (args.steps + 1)
    log = generate(SyntheticConfig(users=users, length=length, seed=args.seed))
    return build_from_events(validate_events(log.events()), SplitConfig(max_len=length))


def _scaled(measured: dict[str, Any]) -> dict[str, Any]:
    return {key: measured[key] for key in ("step_seconds", "samples_per_second", "targets_per_second")}


def _speedups(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Ratios measured in this run: each model's samples/s over DIEN's at the same precision, and
    bfloat16's step speed-up over float32 per model."""
    out: dict[str, Any] = {}
    for precision, measured in runs.items():
        by_name = {m["model"]: m for m in measured}
        if "dien" in by_name:
            for name, m in by_name.items():
                if name != "dien":
                    out[f"{name}_over_dien_samples_{precision}"] = round(
                        m["samples_per_second"] / by_name["dien"]["samples_per_second"], 3
                    )
                    out[f"{name}_over_dien_targets_{precision}"] = round(
                        m["targets_per_second"] / by_name["dien"]["targets_per_second"], 1
                    )
    if "float32" in runs and "bfloat16" in runs:
        for full, half in zip(runs["float32"], runs["bfloat16"], strict=True):
            out[f"{full['model']}_bfloat16_over_float32_speed"] = round(
                full["step_seconds"] / half["step_seconds"], 3
            )
    return out


def _bench_model(
    name: str,
    data: ClickLogData,
    args: argparse.Namespace,
    device: torch.device,
    precision: str,
    parts: bool = True,
) -> dict[str, Any]:
    torch.manual_seed(args.seed)
    overrides = args.cm_overrides if name.startswith("cm") else None
    model = build_model(name, DataSpec.from_vocabs(data.vocabs), overrides).train().to(device)
    loader = Batches(data, model.needs, args.batch_size, args.seed).loader("train")  # what the model needs
    batches = [batch.to(device) for batch in list(loader)[: args.steps + 1]]
    targets = sum(b.num_samples + len(b.history_targets or ()) for b in batches[1:]) / args.steps
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step(batch: Batch) -> None:
        with autocast(device, precision):
            output: ModelOutput = model(batch)
            loss = output.total()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step(batches[0])  # warm-up: allocator, lazy state
    _sync(device)
    started = time.perf_counter()
    for batch in batches[1:]:
        step(batch)
    _sync(device)
    seconds = (time.perf_counter() - started) / args.steps
    with FlopCounterMode(display=False) as counter:
        step(batches[1])
    result: dict[str, Any] = {
        "model": name,
        "precision": precision,
        "step_seconds": round(seconds, 4),
        "samples_per_second": round(args.batch_size / seconds, 2),
        # Labelled rows (samples + dense targets inside the histories) a step trains on, and the
        # wall-clock of one epoch over 1,000 users (each user one training sample pair).
        "targets_per_batch": targets,
        "targets_per_second": round(targets / seconds, 1),
        "epoch_seconds_per_1000_users": round(seconds * 1000 / (args.batch_size // 2), 1),
        "train_flops_per_sample": counter.get_total_flops() / args.batch_size,
        "train_gflops_per_second": round(counter.get_total_flops() / seconds / 1e9, 2),
    }
    if parts and precision == "float32" and device.type == "cpu" and isinstance(model, ContinualMemoryModel):
        result["parts"] = _cm_parts(model, batches[1])
    return result


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _matmul_rate(
    device: torch.device | str = "cpu", precision: str = "float32", size: int = 1024, repeats: int = 10
) -> float:
    """This machine's matmul rate in `precision` (bfloat16: the operands in bf16, as autocast runs
    a matmul): the ceiling to compare a model's GFLOP/s with."""
    dtype = torch.bfloat16 if precision == "bfloat16" else torch.float32
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    a @ b
    _sync(torch.device(device))
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    _sync(torch.device(device))
    return round(2 * size**3 * repeats / (time.perf_counter() - started) / 1e9, 1)


def _timed(fn: Callable[[], torch.Tensor], repeats: int = 2) -> tuple[float, int]:
    """Mean forward + backward seconds of `fn` and its forward + backward FLOPs."""
    fn().sum().backward()  # warm-up
    started = time.perf_counter()
    for _ in range(repeats):
        fn().sum().backward()
    seconds = (time.perf_counter() - started) / repeats
    with FlopCounterMode(display=False) as counter:
        fn().sum().backward()
    return seconds, counter.get_total_flops()


def _cm_parts(model: ContinualMemoryModel, batch: Batch) -> dict[str, dict[str, float]]:
    """Each part's forward + backward, measured alone on this batch's tensors."""
    grid = model.history_grid(batch.history)
    x, ids, mask, keys, initial = (
        grid.x.detach().requires_grad_(),
        grid.ids,
        grid.mask,
        grid.keys,
        grid.initial,
    )
    features = model.machine.encoder(x, mask).detach().requires_grad_()

    # The head's input: the trajectory (memories and per-click values), cut off from the writes.
    def cut(part: torch.Tensor | None) -> torch.Tensor | None:
        return None if part is None else part.detach().requires_grad_()

    trajectory = Trajectory(
        grid.trajectory.states.detach().requires_grad_(),
        cut(grid.trajectory.values),
        cut(grid.trajectory.recurrent),
    )
    grid = grid._replace(x=x, trajectory=trajectory)
    memory = model.machine.slots_of(trajectory.states[:, -1])

    def update_loop() -> torch.Tensor:  # the slots' update, the recurrent row and the running means
        return model.machine.write_features(initial, features, mask, x, keys)

    parts: dict[str, Callable[[], torch.Tensor]] = {
        "embeddings": lambda: model.embeddings(batch.history)[0],
        "encoder": lambda: model.machine.encoder(x, mask),
        "memory_update": update_loop,
        "reason_head": lambda: model.reason_logits(grid, batch),  # samples and dense targets
    }
    if model.recall is not None:
        recall = model.recall
        sampled_ids = torch.randint(2, model.embeddings.num_items, (model.config.sampled_items,))
        sampled = model.embeddings.lookup(sampled_ids).detach()

        def recall_losses() -> torch.Tensor:
            losses = recall(memory, x, ids, mask, sampled_ids, sampled)
            return torch.stack(list(losses.values()))

        parts["recall"] = recall_losses
    measured = {name: _timed(fn) for name, fn in parts.items()}
    total = sum(seconds for seconds, _ in measured.values())
    return {
        name: {
            "seconds": round(seconds, 4),
            "share": round(seconds / total, 3),
            "flops_per_sample": flops / batch.num_samples,
        }
        for name, (seconds, flops) in measured.items()
    }


def _print_all(result: dict[str, Any], rates: dict[str, float]) -> None:
    native = result["native_bfloat16"]
    print(
        f"device {result['device']}: native bfloat16: {native or 'none'}; precisions run: "
        f"{', '.join(result['precisions'])}; the product trains and scores in float32"
    )
    for precision, measured in result["runs_by_precision"].items():
        for run_result in measured:
            _print(run_result, result, rates[precision])
    for key, value in result["speedup"].items():
        print(f"  {key}: {value}")
    if "scaling" in result:
        headline = result["length"]
        print(f"scaling (step seconds, and over L = {headline}):")
        for row in result["scaling"]:
            print(
                f"  {row['model']:<10} {row['precision']:<8} L={row['length']:<6} "
                f"{row['step_seconds']:8.3f} s  {row[f'step_over_L{headline}']:6.2f}x  "
                f"{row['samples_per_second']:8.1f} samples/s"
            )


def _print(result: dict[str, Any], common: dict[str, Any], rate: float) -> None:
    print(
        f"{result['model']} ({result['precision']}): L={common['length']}, batch {common['batch_size']}: "
        f"{result['step_seconds']:.3f} s/step (forward + backward + Adam), "
        f"{result['samples_per_second']:.1f} samples/s, "
        f"{result['targets_per_second']:.0f} targets/s, "
        f"{result['epoch_seconds_per_1000_users']:.0f} s/epoch per 1,000 users, "
        f"{result['train_flops_per_sample'] / 1e9:.2f} GFLOP/sample, "
        f"{result['train_gflops_per_second']:.1f} GFLOP/s = {100 * result['matmul_share']:.1f}% "
        f"of the {result['precision']} matmul's {rate:.1f} GFLOP/s"
    )
    for name, part in result.get("parts", {}).items():
        print(
            f"  {name:<14} {part['seconds']:.3f} s  {100 * part['share']:5.1f}%  "
            f"{part['flops_per_sample'] / 1e6:9.1f} MFLOP/sample (forward + backward)"
        )


def main(argv: list[str] | None = None) -> int:
    return run_command(sys.modules[__name__], argv)


if __name__ == "__main__":
    sys.exit(main())
