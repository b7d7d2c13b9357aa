"""scripts/benchmark.py still runs: a quick pass of its in-process sections on ML-100K.

The figures are not checked (timings belong in docs/BENCHMARKS.md, not in tests); what is
checked is that every section ran and produced positive rates. A change of the platform's
defaults once left the `loop` section refusing the new default optimizer unnoticed.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]  # python -m benchmarks runs from the repository root
SECTIONS = ["train", "loop", "samplers", "eval"]


@pytest.mark.slow
def test_quick_benchmark_runs_every_in_process_section(tmp_path):
    out = tmp_path / "bench.json"
    env = {**os.environ, "TMPDIR": str(tmp_path), "WANDB_MODE": "disabled"}
    cmd = [sys.executable, "-m", "benchmarks", "--quick", "--scale", "ml100k", "--sections", ",".join(SECTIONS),
           "--configs", "mc,in_batch", "--loop-configs", "in_batch", "--repeats", "1", "--epochs", "1", "--command", "--out", str(out)]  # fmt: skip
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.exists(), (run.returncode, run.stdout[-2000:], run.stderr[-2000:])
    doc = json.loads(out.read_text())
    assert run.returncode == 0 and not doc["errors"], (doc["errors"], run.stdout[-2000:], run.stderr[-2000:])
    results = doc["results"]
    assert all(section in results for section in SECTIONS)
    for name, batch in (("mc", 2048), ("in_batch", 256)):
        train = results["train"]["scales"]["ml100k"][name]
        built, timed = train["batch_construction"], train["train"]
        assert built["samples"] == batch * built["batches"]  # --quick: 5 batches of the config's size
        assert timed["samples_per_s"] == pytest.approx(built["samples"] / timed["epoch_seconds"], rel=1e-9)
        assert timed["steady_samples_per_s"] == pytest.approx(batch / timed["steady_step_s"], rel=1e-9)
        assert built["mean_negative_columns"] == {"mc": 0, "in_batch": batch}[name]  # in-batch: B columns
        assert train["command"]["steady_samples_per_s"] == pytest.approx(batch / train["command"]["steady_step_s"], rel=1e-9)
    samplers = results["samplers"]["ml100k"]
    negatives = {"in_batch": 256, "uniform": 64, "popularity": 64, "mixed": 256 + 256, "exposed_unclicked": 8, "hard": 8}
    assert {name: s["negative_cells_per_batch"] / s["batch_size"] for name, s in samplers.items()} == negatives
    evaluation = results["eval"]["ml100k"]["torch"]
    assert (evaluation["users"], evaluation["items"]) == (153, 1682)  # the temporal split's test users, the catalogue
    assert evaluation["scores_per_s"] == pytest.approx(153 * 1682 / evaluation["seconds"], rel=1e-9)
    validate = results["eval"]["ml100k_validate"]  # 186 validation users; six candidate weights, or one ranking
    assert [(r["users"], r["rankings"]) for r in validate.values()] == [(186, 6), (186, 1)]
    loop = results["loop"]["ml100k"]["in_batch"]
    assert loop["ratio_a"] == pytest.approx(loop["lightning_a_step_ms"] / loop["hand_a_step_ms"], rel=1e-9)
    assert loop["loss_check"]["abs_diff"] < 1e-5  # Lightning's forward and the hand-written one agree
