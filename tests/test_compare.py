"""``twotower-compare`` on hand-made sweeps with known metric values (no training)."""

import csv
import json
import math
from pathlib import Path

import matplotlib.image
import pytest
import yaml

from twotower.compare import compare, default_metrics, find_run_dirs, load_run, main, short_names, varying_keys

R10, R50, N10 = "test/recall@10", "test/recall@50", "test/ndcg@10"

# Sweep A: loss.temperature in {0.05, 0.1} x seed in {1, 2, 3}, plus one failed run (temperature 0.2).
SWEEP_A = {
    0.1: {R10: [0.20, 0.22, 0.24], R50: [0.5, 0.5, 0.5], N10: [0.3, 0.3, 0.3]},
    0.05: {R10: [0.10, 0.10, 0.16], R50: [0.6, 0.7, 0.8], N10: [0.4, 0.4, 0.4]},
}
DURATIONS = [10.0, 20.0, 30.0]  # per seed; mean 20, std sqrt((100 + 0 + 100) / 2) = 10


def write_run(run_dir: Path, seed: int, temperature: float, metrics: dict | None, *, emb: int = 32,
              status: str | None = "completed", error: str | None = None, duration: float = 10.0,
              overrides: list[str] = ()) -> Path:
    """A run directory as ``twotower-train`` leaves it (only the files the report reads)."""
    config = {
        "task_name": "train", "seed": seed, "tags": [f"s{seed}"],
        "data": {"name": "ml-100k", "split": {"kind": "temporal", "seed": seed}},
        "loss": {"_target_": "twotower.losses.ListwiseLoss", "temperature": temperature},
        "model": {"name": "two_tower", "net": {"embedding_dim": emb, "mlp": [128, 64]}},
        "trainer": {"max_epochs": 3},
        "logger": {"wandb": {"group": f"g{seed}"}},
        "paths": {"output_dir": str(run_dir)},
    }
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))  # must not count as a run
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    if metrics is not None:
        (run_dir / "results.json").write_text(json.dumps(metrics))
        # validation rows and training rows apart, as Lightning's CSVLogger writes them
        rows = ["epoch,step,train/loss,val/ndcg@20"]
        for epoch in range(3):
            rows += [f"{epoch},{epoch * 10 + 9},{1.0 / (epoch + 1)},", f"{epoch},{epoch * 10 + 9},,{metrics.get(R10, 0.0) + epoch / 10}"]
        (run_dir / "csv").mkdir()
        (run_dir / "csv" / "metrics.csv").write_text("\n".join(rows) + "\n")
    if status is not None:
        (run_dir / "status.json").write_text(json.dumps(
            {"status": status, "error": error, "duration_s": duration, "overrides": [f"seed={seed}", *overrides]}))
    return run_dir


@pytest.fixture
def sweep_a(tmp_path) -> Path:
    sweep, job = tmp_path / "sweep_a", 0
    for temperature, metrics in SWEEP_A.items():
        for i, seed in enumerate((1, 2, 3)):
            values = {name: vals[i] for name, vals in metrics.items()} | {"test/recall@20": 0.3, "val/ndcg@20": 0.2}
            write_run(sweep / str(job), seed, temperature, values, duration=DURATIONS[i])
            job += 1
    write_run(sweep / str(job), 1, 0.2, None, status="failed", error="RuntimeError: boom")
    (sweep / "multirun.yaml").write_text("hydra: {}\n")
    return sweep


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_finds_runs_but_not_hydra_dirs(sweep_a):
    dirs = find_run_dirs(sweep_a)
    assert len(dirs) == 7 and not any(".hydra" in d.parts for d in dirs)
    assert find_run_dirs(sweep_a / "0") == [sweep_a / "0"]  # a run directory itself


def test_varying_keys_leave_out_seeds_and_bookkeeping(sweep_a):
    runs = [load_run(d) for d in find_run_dirs(sweep_a)]
    # seed, data.split.seed, tags, logger.*, paths.output_dir all differ too
    assert varying_keys(runs) == ["loss.temperature"]
    assert short_names(["model.net.embedding_dim", "loss.temperature", "a.x.dim", "b.x.dim"]) == {
        "model.net.embedding_dim": "net.embedding_dim", "loss.temperature": "loss.temperature",
        "a.x.dim": "a.x.dim", "b.x.dim": "b.x.dim"}


def test_report_means_stds_sorting_and_failed_run(sweep_a, tmp_path):
    out = tmp_path / "report"
    markdown, written = compare([sweep_a], out)
    lines = markdown.splitlines()
    assert lines[0] == ("| loss.temperature | n | test/recall@10 mean ± std | test/recall@50 mean ± std"
                        " | test/ndcg@10 mean ± std | duration_s mean ± std |")
    # temperature 0.1: recall@10 mean (0.20 + 0.22 + 0.24) / 3 = 0.22, std sqrt((0.02² + 0 + 0.02²) / 2) = 0.02;
    #   recall@50 0.5 ± 0; ndcg@10 0.3 ± 0; duration (10 + 20 + 30) / 3 = 20, std sqrt((10² + 0 + 10²) / 2) = 10.
    assert lines[2] == "| 0.1 | 3 | 0.2200 ± 0.0200 | 0.5000 ± 0.0000 | 0.3000 ± 0.0000 | 20.0 ± 10.0 |"  # seconds: 1 decimal
    # temperature 0.05: recall@10 mean 0.36 / 3 = 0.12, std sqrt((0.02² + 0.02² + 0.04²) / 2) = sqrt(0.0012) = 0.0346;
    #   recall@50 mean 0.7, std sqrt((0.1² + 0 + 0.1²) / 2) = 0.1.
    assert lines[3] == "| 0.05 | 3 | 0.1200 ± 0.0346 | 0.7000 ± 0.1000 | 0.4000 ± 0.0000 | 20.0 ± 10.0 |"
    assert "Failed or unfinished runs (1)" in markdown and "failed: RuntimeError: boom" in markdown
    assert "0.2 |" not in markdown  # the failed configuration has no row
    assert [p.name for p in written] == ["comparison.md", "comparison.csv", "recall_at_k.png", "val_curve.png"]
    assert (out / "comparison.md").read_text() == markdown

    rows = read_csv(out / "comparison.csv")
    assert list(rows[0]) == ["loss.temperature", "n", "test/recall@10 mean", "test/recall@10 std", "test/recall@50 mean",
                             "test/recall@50 std", "test/ndcg@10 mean", "test/ndcg@10 std", "duration_s mean", "duration_s std"]
    assert [r["loss.temperature"] for r in rows] == ["0.1", "0.05"] and [r["n"] for r in rows] == ["3", "3"]
    assert float(rows[1]["test/recall@10 mean"]) == pytest.approx(0.12)
    assert float(rows[1]["test/recall@10 std"]) == pytest.approx(math.sqrt(0.0012))
    assert float(rows[0]["duration_s std"]) == pytest.approx(10.0)

    for name in ("recall_at_k.png", "val_curve.png"):
        data = (out / name).read_bytes()
        assert data[:4] == b"\x89PNG"
        image = matplotlib.image.imread(out / name)
        assert image.shape[:2] == (450, 700)  # figsize 7 x 4.5 inches at 100 dpi
        assert image[..., :3].std() > 0.05  # something is drawn on the white canvas


def test_sort_and_metrics_options(sweep_a, tmp_path, capsys):
    assert main([str(sweep_a), "--metrics", f"{R10},{R50}", "--sort", R50, "--out", str(tmp_path / "o")]) == 0
    printed = capsys.readouterr().out
    table = [line for line in printed.splitlines() if line.startswith("| 0")]
    assert [row.split(" | ")[0] for row in table] == ["| 0.05", "| 0.1"]  # by recall@50: 0.7 > 0.5
    assert "duration_s" not in printed and f"wrote {tmp_path / 'o' / 'comparison.md'}" in printed
    assert main([str(sweep_a), "--sort", "test/mrr@10"]) == 2  # not among the metrics
    capsys.readouterr()
    assert main([str(sweep_a), "--metrics", f"{R10},test/recal@10"]) == 2  # a metric no run has
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("twotower-compare: error: --metrics test/recal@10: no completed run has it; expected some of")
    assert R10 in line


def test_default_metrics_follow_the_cut_offs_the_runs_have(tmp_path):
    # Gowalla's eval.ks [20, 50]: the end-of-sweep report of `experiment=gowalla` needs no --metrics.
    gowalla = {"test/recall@20": 0.18, "test/recall@50": 0.28, "test/ndcg@20": 0.15, "test/ndcg@50": 0.18}
    for seed in (1, 2):
        write_run(tmp_path / "g" / str(seed), seed, 0.08, gowalla)
    markdown, _ = compare([tmp_path / "g"], tmp_path / "out")
    assert markdown.splitlines()[0] == ("| configuration | n | test/recall@20 mean ± std | test/recall@50 mean ± std "
                                        "| test/ndcg@20 mean ± std | duration_s mean ± std |")
    assert default_metrics(["test/recall@5", "test/recall@10", "test/ndcg@5", "test/ndcg@10"]) == [
        "test/recall@5", "test/recall@10", "test/ndcg@5"]  # no 50: the largest
    assert default_metrics(["test/recall@10", "test/recall@20", "test/recall@50", "val/recall@5"]) == [R10, R50, N10]
    assert default_metrics(["test/mse"]) == [R10, R50, N10]  # nothing ranked: reported as missing


def test_two_sweeps_and_single_seed(sweep_a, tmp_path):
    sweep_b = tmp_path / "sweep_b"
    # no status.json (an older run): completed because results.json exists; one seed only
    write_run(sweep_b / "0", 1, 0.1, {R10: 0.3, R50: 0.9, N10: 0.5}, emb=64, status=None)
    markdown, _ = compare([sweep_a, sweep_b], tmp_path / "both")
    lines = markdown.splitlines()
    assert lines[0].startswith("| loss.temperature | net.embedding_dim | n |")
    assert lines[2] == "| 0.1 | 64 | 1 | 0.3000 | 0.9000 | 0.5000 |  |"  # no std for one seed, no duration
    assert lines[3].startswith("| 0.1 | 32 | 3 | 0.2200 ± 0.0200 |")
    rows = read_csv(tmp_path / "both" / "comparison.csv")
    assert rows[0]["test/recall@10 std"] == "" and len(rows) == 3


def test_default_out_dir_is_under_the_first_dir(sweep_a):
    assert main([str(sweep_a)]) == 0
    assert (sweep_a / "comparison" / "comparison.md").exists()
    assert len(find_run_dirs(sweep_a)) == 7  # the report is not taken for a run


def test_errors(tmp_path, capsys):
    missing = tmp_path / "no_such_sweep"
    assert main([str(missing)]) == 2
    assert f"path does not exist: {missing}" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty")]) == 2
    assert "no run" in capsys.readouterr().err


def test_group_choices_from_the_overrides_name_the_configurations(tmp_path):
    """`model=a` vs `model=b` also changes config values (here the embedding size and the
    temperature); the table shows the choice the user made, not every value it implies."""
    sweep = tmp_path / "sweep"
    for job, (choice, emb, temperature, recall) in enumerate([("a", 32, 0.1, 0.2), ("b", 64, 0.2, 0.3)]):
        write_run(sweep / str(job), 1, temperature, {R10: recall}, emb=emb, overrides=[f"model={choice}"])
    markdown, _ = compare([sweep], tmp_path / "out", metrics=[R10])
    header = markdown.splitlines()[0]
    assert header.startswith("| model | n |") and "temperature" not in header and "embedding_dim" not in header
    assert markdown.splitlines()[2].startswith("| b | 1 | 0.3000")


def test_one_configuration_keeps_a_label_column_and_lines_carry_their_spread(sweep_a, tmp_path):
    from twotower.compare import group_runs, mean_lines, recall_at_k

    runs = [load_run(d) for d in find_run_dirs(sweep_a) if load_run(d).error is None]
    same = [r for r in runs if r.config["loss.temperature"] == 0.1]  # flattened config
    markdown, _ = compare([r.path for r in same], tmp_path / "one")
    assert markdown.splitlines()[0].startswith("| configuration | n |")
    assert markdown.splitlines()[2].startswith("| all runs | 3 | 0.2200 ± 0.0200 |")
    # recall@10 of the three runs 0.20, 0.22, 0.24: mean 0.22, sample std 0.02; recall@50 0.5 each: std 0.
    (frame,) = mean_lines(group_runs(same, []), [], recall_at_k).values()
    assert frame.loc[10, "mean"] == pytest.approx(0.22) and frame.loc[10, "std"] == pytest.approx(0.02)
    assert frame.loc[50, "std"] == pytest.approx(0.0)
