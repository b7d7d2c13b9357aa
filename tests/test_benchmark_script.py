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

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "benchmark.py"
SECTIONS = ["train", "loop", "samplers", "eval"]


def test_quick_benchmark_runs_every_in_process_section(tmp_path):
    out = tmp_path / "bench.json"
    env = {**os.environ, "TMPDIR": str(tmp_path), "WANDB_MODE": "disabled"}
    cmd = [sys.executable, str(SCRIPT), "--quick", "--scale", "ml100k", "--sections", ",".join(SECTIONS),
           "--configs", "mc,in_batch", "--loop-configs", "in_batch", "--repeats", "1", "--epochs", "1", "--command", "--out", str(out)]  # fmt: skip
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert out.exists(), (run.returncode, run.stdout[-2000:], run.stderr[-2000:])
    doc = json.loads(out.read_text())
    assert run.returncode == 0 and not doc["errors"], (doc["errors"], run.stdout[-2000:], run.stderr[-2000:])
    results = doc["results"]
    assert all(section in results for section in SECTIONS)
    for name in ("mc", "in_batch"):
        train = results["train"]["scales"]["ml100k"][name]
        assert train["train"]["samples_per_s"] > 0 and train["batch_construction"]["batches_per_s"] > 0
        assert train["command"]["steady_step_s"] > 0  # --command: the same config through the real train()
    assert all(s["batches_per_s"] > 0 for s in results["samplers"]["ml100k"].values())
    assert results["eval"]["ml100k"]["torch"]["scores_per_s"] > 0
    loop = results["loop"]["ml100k"]["in_batch"]
    assert loop["ratio_a"] > 0 and loop["ratio_b"] > 0
    assert loop["loss_check"]["abs_diff"] < 1e-5  # Lightning's forward and the hand-written one agree
