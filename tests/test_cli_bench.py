from __future__ import annotations

import json
from pathlib import Path

import pytest

from cmrec import cli


def test_bench_writes_step_time_parts_and_flops(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bench" / "cm.json"
    argv = ["bench", "--model", "cm-recall", "dien", "--length", "40", "--batch-size", "8", "--steps", "1"]
    assert cli.main([*argv, "--precision", "float32", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["length"] == 40 and result["batch_size"] == 8 and result["matmul_gflops_per_second"] > 0
    assert result["precisions"] == ["float32"] and "scaling" not in result
    cm, dien = result["runs"]
    assert (cm["model"], dien["model"]) == ("cm-recall", "dien")  # cm with the recall model: every part
    for run in (cm, dien):
        assert run["step_seconds"] > 0 and run["samples_per_second"] > 0 and run["train_flops_per_sample"] > 0
    assert set(cm["parts"]) == {"embeddings", "encoder", "memory_update", "reason_head", "recall"}
    assert sum(part["share"] for part in cm["parts"].values()) == pytest.approx(1.0, abs=0.01)
    assert cm["parts"]["encoder"]["flops_per_sample"] > cm["parts"]["reason_head"]["flops_per_sample"] > 0
    assert "parts" not in dien
    for run in (cm, dien):  # the achieved rate as a share of the in-run matmul's
        share = run["train_gflops_per_second"] / result["matmul_gflops_per_second"]
        assert run["matmul_share"] == pytest.approx(share, abs=1e-4)
    assert result["speedup"]["cm-recall_over_dien_samples_float32"] == pytest.approx(
        cm["samples_per_second"] / dien["samples_per_second"], abs=1e-3
    )
    assert capsys.readouterr().out.count("s/step") == 2
    assert result["cm_config"] == {}  # the presets as registered


def test_bench_scaling_table_and_bfloat16_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "scaling.json"
    argv = ["bench", "--model", "cm", "--length", "40", "80", "--batch-size", "8", "--steps", "1"]
    assert cli.main([*argv, "--precision", "bfloat16", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["precisions"] == ["bfloat16"] and result["runs"] == []  # no float32 run asked
    (run,) = result["runs_by_precision"]["bfloat16"]
    assert run["precision"] == "bfloat16" and "parts" not in run  # parts are measured in float32
    rate = result["matmul_gflops_per_second_by_precision"]["bfloat16"]
    assert run["matmul_share"] == pytest.approx(run["train_gflops_per_second"] / rate, abs=1e-4)
    rows = {row["length"]: row for row in result["scaling"]}
    assert set(rows) == {40, 80} and rows[40]["step_over_L40"] == 1.0
    assert rows[80]["step_over_L40"] == pytest.approx(
        rows[80]["step_seconds"] / rows[40]["step_seconds"], abs=1e-3
    )
    printed = capsys.readouterr().out
    assert "precisions run: bfloat16" in printed and "scaling (step seconds" in printed


def test_bench_config_changes_the_cm_models_only(tmp_path: Path) -> None:
    config = tmp_path / "recent.yaml"
    config.write_text("recent_clicks: true\n")
    out = tmp_path / "recent.json"
    argv = ["bench", "--model", "cm", "gru4rec", "--length", "40", "--batch-size", "8", "--steps", "1"]
    assert cli.main([*argv, "--config", str(config), "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["cm_config"] == {"recent_clicks": True}
    cm, gru4rec = result["runs"]
    assert cm["parts"]["reason_head"]["flops_per_sample"] > 0 and gru4rec["samples_per_second"] > 0


def test_bench_refuses_bad_sizes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["bench", "--steps", "0", "--out", str(tmp_path / "x.json")]) == 2
    assert "--steps >= 1" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()


def test_bench_serving_measures_latency_refresh_and_store(tmp_path: Path) -> None:
    out = tmp_path / "serving.json"
    argv = ["bench", "--serving", "--lengths", "20", "100", "--requests", "3", "--candidates", "10"]
    assert cli.main([*argv, "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert [row["length"] for row in result["lengths"]] == [20, 100]
    for row in result["lengths"]:
        assert set(row["latency_ms"]) == {"cm", "cm_19_pending", "cm_reason_head_only", "dien", "gru4rec"}
        assert all(v["p99"] >= v["p50"] > 0 for v in row["latency_ms"].values())
        assert row["refresh_backfill"]["segments"] == 8 * (row["length"] // 20) + 8 * (
            (row["length"] + 19) // 20
        )
        assert row["raw_history_bytes_per_user"] == 8 * row["length"]
        other = row["incremental_latency_ms"]
        assert set(other) == {"gru4rec_from_store", "mimn_from_store", "hpmn_from_store"}
        assert all(v["p99"] >= v["p50"] > 0 for v in other.values())
        assert row["state_bytes_per_user"] == {"gru4rec": 64 * 4, "mimn": 11 * 64 * 4, "hpmn": 6 * 64 * 4}
    assert result["refresh_steady_state"]["segments"] == result["refresh_steady_state"]["users"] == 2048
    store = result["store"]
    assert (
        store["float32"]["memory_bytes_per_user"]
        # the `cm` preset: K slots, the recurrent row, two history-mean and two profile rows, and
        # (256 + 2 x 1,024) / 64 = 36 count rows; then the pending clicks' mean and profile sums and
        # the recurrent row after them
        == (20 + 1 + 2 + 2 + 36 + 3 + 1) * 64 * 4
        == 2 * store["float16"]["memory_bytes_per_user"]
    )
    assert store["float16"]["file_bytes_per_user"] < store["float32"]["file_bytes_per_user"] < 2 * 16640
    assert result["targets"] == {}  # L = 100 and 10,000 (and 1,000) were not both measured


def test_bench_serving_measures_redis_beside_sqlite(tmp_path: Path, redis_address: str) -> None:
    from cmrec.store import parse_store, read_store_info
    from tests.redis_server import store_url

    url = store_url(redis_address, "bench")
    out = tmp_path / "serving.json"
    argv = ["bench", "--serving", "--lengths", "20", "--requests", "3", "--candidates", "10", "--store", url]
    assert cli.main([*argv, "--out", str(out)]) == 0
    backends = json.loads(out.read_text())["backends"]
    assert backends["redis_server"] == url and backends["users"] == 2000
    for name in ("sqlite", "redis"):
        row = backends[name]
        for key in ("read_1_user_ms", "read_100_users_ms", "write_100_users_ms", "score_100_candidates_ms"):
            assert row[key]["p99"] >= row[key]["p50"] > 0, (name, key)
        assert row["refresh_steady_state"]["segments"] == row["refresh_steady_state"]["users"] == 2048
    ratios = backends["redis_over_sqlite"]
    assert ratios["read_1_user_ms"] == round(
        backends["redis"]["read_1_user_ms"]["p50"] / backends["sqlite"]["read_1_user_ms"]["p50"], 2
    )
    for part in ("rw", "steady", "score"):  # the scratch stores were dropped
        assert read_store_info(parse_store(f"{url}.bench-{part}")) is None
    assert cli.main(["bench", "--serving", "--store", str(tmp_path / "folder"), "--out", str(out)]) == 2
