"""scripts/progress_bar_cost.py: alternates runs with and without a progress bar and prints
one row per variant (its timings are for docs/BENCHMARKS.md, not checked here)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "progress_bar_cost.py"


@pytest.mark.slow
def test_progress_bar_cost_prints_a_row_per_variant(tmp_path):
    cmd = [sys.executable, str(SCRIPT), "model=matrix_completion", "data.batch_size=8192",
           "--refresh", "2", "--repeats", "1", "--epochs", "1"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = {m.group(1): (float(m.group(2)), float(m.group(3)))
            for m in re.finditer(r"^(none|updated every 2 steps)\s+([\d.]+)\s+([\d.]+)$", done.stderr, re.M)}  # fmt: skip
    assert set(rows) == {"none", "updated every 2 steps"}
    assert all(p25 > 0 and median >= p25 for p25, median in rows.values())
    assert "Epoch" in done.stdout  # the bar ran (Lightning writes it to stdout)


def test_progress_bar_cost_refuses_a_zero_refresh_rate():
    done = subprocess.run([sys.executable, str(SCRIPT), "--refresh", "0"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "every --refresh must be >= 1" in done.stderr


@pytest.mark.slow
def test_integrity_benchmark_prints_a_row_per_size():
    """scripts/bench_integrity.py: seal and verify timed against torch.save, one row per catalogue size."""
    script = SCRIPT.with_name("bench_integrity.py")
    done = subprocess.run([sys.executable, str(script), "--items", "100", "2000", "--repeats", "1"],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    rows = re.findall(r"^\| ([\d,]+) \| [\d,]+ \| [\d.]+ \| [\d.]+ \| [\d.]+ \| [\d.]+ \|$", done.stdout, re.M)
    assert rows == ["100", "2,000"]


def test_time_to_quality_reads_the_first_validation_within_the_share_of_the_best(tmp_path):
    """scripts/time_to_quality.py on a hand-made CSV log: best 0.20 at epoch 3; 95% of it is 0.19,
    first reached at epoch 2 (0.195), 120 s into the run."""
    run = tmp_path / "run"
    (run / "csv").mkdir(parents=True)
    rows = ["epoch,step,val/recall@20,time/elapsed_s,train/loss", "0,10,0.10,40.0,", "0,10,,,3.0",
            "1,20,0.18,80.0,", "2,30,0.195,120.0,", "3,40,0.20,160.0,", "4,50,0.199,200.0,"]  # fmt: skip
    (run / "csv" / "metrics.csv").write_text("\n".join(rows) + "\n")
    script = SCRIPT.with_name("time_to_quality.py")
    done = subprocess.run([sys.executable, str(script), str(run)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "| run | 0.2000 (3) | 2, 2.0 min | 4, 3.3 min |" in done.stdout
    missing = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2 and missing.stderr.startswith("time_to_quality: error:")
