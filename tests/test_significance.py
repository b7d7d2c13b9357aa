"""Paired tests, effect sizes and Holm's correction against values computed by hand, and
``twotower-compare --baseline`` on hand-made runs with per-user metrics."""

import math

import numpy as np
import pytest

from twotower.compare import compare, main
from twotower.per_user import FILENAME, read_per_user, write_per_user
from twotower.significance import holm, paired_t_test, wilcoxon_test
from test_compare import write_run

R10 = "test/recall@10"


def test_paired_t_test_by_hand():
    # d = [0.2, 0.1, -0.05, 0.4, 0.2]: mean 0.17, sum of squared deviations 0.108, variance 0.027.
    result = paired_t_test(np.array([0.3, 0.5, 0.2, 0.9, 0.4]), np.array([0.1, 0.4, 0.25, 0.5, 0.2]))
    se = math.sqrt(0.027 / 5)
    assert result.n == 5 and result.mean == pytest.approx(0.17)
    assert result.statistic == pytest.approx(0.17 / se)  # 2.3134
    assert result.effect == pytest.approx(0.17 / math.sqrt(0.027))  # Cohen's d_z 1.0346
    assert result.ci_low == pytest.approx(0.17 - 2.776445 * se, abs=1e-6)  # t(0.975, 4 df) = 2.776445 (tables)
    assert result.ci_high == pytest.approx(0.17 + 2.776445 * se, abs=1e-6)
    # Two degrees of freedom have a closed form: two-sided p = 1 - |t| / sqrt(2 + t^2).
    # d = [1, 2, 3]: mean 2, sd 1, t = 2 * sqrt(3).
    t2 = paired_t_test(np.array([1.0, 2.0, 3.0]), np.zeros(3))
    assert t2.statistic == pytest.approx(2 * math.sqrt(3))
    assert t2.p == pytest.approx(1 - t2.statistic / math.sqrt(2 + t2.statistic**2))  # 0.0742


def test_wilcoxon_by_hand():
    # d = [0.2, 0.1, -0.05, 0.4, 0.3]: ranks of |d| 4, 2, 1, 5, 3; the negative rank sum is 1.
    # Exactly: of the 2^5 equally likely sign patterns, 2 have a rank sum <= 1 (0 and 1), so the
    # two-sided p is 2 * 2 / 32.
    result = wilcoxon_test(np.array([0.3, 0.5, 0.2, 0.9, 0.7]), np.array([0.1, 0.4, 0.25, 0.5, 0.4]))
    assert result.statistic == 1.0 and result.p == pytest.approx(0.125)
    assert result.mean == pytest.approx(0.19)


def test_no_difference_is_never_significant():
    values = np.array([0.0, 0.5, 1.0, 0.25])
    for test in (paired_t_test, wilcoxon_test):
        result = test(values, values.copy())
        assert (result.mean, result.effect, result.p) == (0.0, 0.0, 1.0)
    shifted = paired_t_test(values + 0.1, values)  # a constant difference: no spread, certain
    assert shifted.p == 0.0 and shifted.statistic == math.inf
    with pytest.raises(ValueError, match="same length >= 2"):
        paired_t_test(np.array([1.0]), np.array([0.0]))


def test_holm_by_hand():
    # Sorted 0.01, 0.03, 0.04 of m = 3: x3 = 0.03, x2 = 0.06, x1 = 0.04 -> raised to 0.06 (monotone).
    adjusted = holm([0.01, 0.04, math.nan, 0.03])
    assert adjusted[0] == pytest.approx(0.03) and adjusted[1] == pytest.approx(0.06) and adjusted[3] == pytest.approx(0.06)
    assert math.isnan(adjusted[2])
    assert holm([0.5, 0.9]) == [1.0, 1.0]  # capped at 1


def test_per_user_file_round_trip_and_refusals(tmp_path):
    write_per_user(tmp_path, [1, "u2"], [True, False], {R10: [0.5, 1.0], "popularity/test/ndcg@20": [0.0, 0.25], "test/coverage@10": [1, 1]})
    read = read_per_user(tmp_path / FILENAME)
    assert read.users.tolist() == ["1", "u2"] and read.warm.tolist() == [True, False]
    assert set(read.metrics) == {R10, "popularity/test/ndcg@20"}  # only per-user ranking metrics are kept
    np.savez(tmp_path / "bad.npz", user=np.array(["1", "2"]), warm=np.array([True, False]), **{R10: np.array([0.5, 2.0])})
    with pytest.raises(ValueError, match=r"bad.npz: test/recall@10 must hold 2 numbers in \[0, 1\]"):
        read_per_user(tmp_path / "bad.npz")
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    (tmp_path / "pickled.npz").write_bytes((tmp_path / "objects.npy").read_bytes())
    with pytest.raises(ValueError, match="not a readable per-user metrics file"):
        read_per_user(tmp_path / "pickled.npz")


def per_user_run(run_dir, seed, temperature, model, reference=None):
    """A run with users a, b, c (a cold) and their recall@10 for the model (and the popularity reference)."""
    write_run(run_dir, seed, temperature, {R10: float(np.mean(model)), "test/cold/recall@10": model[0], "test/coverage@10": 0.5})
    values = {R10: model} | ({"popularity/" + R10: reference} if reference is not None else {})
    write_per_user(run_dir, ["a", "b", "c"], [False, True, True], values)


def test_compare_baseline_by_hand(tmp_path, capsys):
    """Temperature 0.1 against 0.05 over seeds 1 and 2: per-user differences [0, .2, .2] and
    [.2, .2, .4], averaged per user [.1, .2, .3]: mean .2, sd .1, t = 2 sqrt(3) on 2 df. Per
    seed the mean differences are 2/15 and 4/15: t = 3 on 1 df, p = 1 - 2 atan(3) / pi."""
    sweep = tmp_path / "sweep"
    base = {1: [0.1, 0.2, 0.3], 2: [0.2, 0.2, 0.1]}
    diffs = {1: [0.0, 0.2, 0.2], 2: [0.2, 0.2, 0.4]}
    for seed in (1, 2):
        per_user_run(sweep / f"b{seed}", seed, 0.05, base[seed])
        per_user_run(sweep / f"c{seed}", seed, 0.1, list(np.add(base[seed], diffs[seed])))
    markdown, written = compare([sweep], tmp_path / "out", metrics=[R10, "test/cold/recall@10"], baseline="temperature=0.05")
    assert tmp_path / "out" / "significance.csv" in written
    row = next(r for r in _csv(tmp_path / "out" / "significance.csv") if r["metric"] == R10)
    t = 2 * math.sqrt(3)
    assert float(row["delta"]) == pytest.approx(0.2) and float(row["effect"]) == pytest.approx(2.0)
    assert (int(row["users"]), int(row["seeds"])) == (3, 2)
    assert float(row["p_users"]) == pytest.approx(1 - t / math.sqrt(2 + t**2))
    assert float(row["p_seeds"]) == pytest.approx(1 - 2 * math.atan(3) / math.pi)
    # Holm over the two comparisons; the cold slice has one user: not testable over users.
    assert float(row["p_users_holm"]) == pytest.approx(float(row["p_users"]))  # the only p over users
    assert float(row["p_seeds_holm"]) == pytest.approx(min(1.0, 2 * float(row["p_seeds"])))  # two p over seeds
    cold = next(r for r in _csv(tmp_path / "out" / "significance.csv") if r["metric"] == "test/cold/recall@10")
    assert int(cold["users"]) == 1 and cold["p_users"] == "" and float(cold["delta"]) == pytest.approx(0.1)
    line = next(ln for ln in markdown.splitlines() if ln.startswith("| loss.temperature=0.1 | test/recall@10 |"))
    assert "+0.2000 [" in line and "+2.00" in line and line.endswith("| n.s. |")  # p = 0.074 > 0.05
    assert main([str(sweep), "--out", str(tmp_path / "cli"), "--metrics", R10, "--baseline", "loss.temperature=0.05"]) == 0
    assert "## Significance against `loss.temperature=0.05`" in capsys.readouterr().out


def test_identical_configurations_do_not_differ_and_popularity_is_a_baseline(tmp_path):
    sweep = tmp_path / "sweep"
    for seed in (1, 2, 3):
        model, reference = [0.5, 0.6, 0.9], [0.1, 0.2, 0.3 + 0.01 * seed]
        per_user_run(sweep / f"a{seed}", seed, 0.05, model, reference)
        per_user_run(sweep / f"b{seed}", seed, 0.1, model, reference)  # the same values: identical runs
    compare([sweep], tmp_path / "same", metrics=[R10], baseline="temperature=0.05")
    (row,) = _csv(tmp_path / "same" / "significance.csv")
    assert float(row["delta"]) == 0.0 and float(row["p_users"]) == 1.0 and float(row["p_seeds"]) == 1.0
    assert row["significant"] == "False"
    markdown, _ = compare([sweep], tmp_path / "pop", metrics=[R10], baseline="popularity", test="wilcoxon")
    rows = _csv(tmp_path / "pop" / "significance.csv")
    assert [r["configuration"] for r in rows] == ["loss.temperature=0.05", "loss.temperature=0.1"]
    # Model minus reference per user, averaged over seeds: 0.4, 0.4, 0.58.
    assert float(rows[0]["delta"]) == pytest.approx((0.4 + 0.4 + 0.58) / 3)
    assert "each run's own popularity reference" in markdown


def test_baseline_refusals(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    per_user_run(sweep / "a", 1, 0.05, [0.1, 0.2, 0.3])
    per_user_run(sweep / "b", 1, 0.1, [0.1, 0.2, 0.3])
    write_run(sweep / "old", 1, 0.2, {R10: 0.3})  # a run without per_user.npz
    for args, expected in [
        (["--baseline", "temperature=0.5"], "--baseline temperature=0.5: matches 0 configurations; expected one of: "),
        (["--baseline", "nosuchkey=1"], "--baseline nosuchkey=1: 'nosuchkey=1' names no varying key once"),
        (["--baseline", "temperature=0.05", "--metrics", "test/coverage@10"], "none of the metrics (test/coverage@10) is a per-user ranking metric"),
        (["--baseline", "temperature=0.05", "--alpha", "5"], "--alpha 5.0: expected a level between 0 and 1"),
    ]:
        assert main([str(sweep), "--out", str(tmp_path / "out"), "--metrics", R10, *args]) == 2
        err = capsys.readouterr().err
        assert err.startswith("twotower-compare: error: ") and expected in err and err.count("\n") == 1
        assert not (tmp_path / "out").exists()  # refused before any file is written
    markdown, _ = compare([sweep], tmp_path / "ok", metrics=[R10], baseline=str(sweep / "a"))
    assert "loss.temperature=0.2: not tested (" in markdown and "has no per_user.npz" in markdown
    (sweep / "b" / FILENAME).write_bytes(b"not a zip")
    assert main([str(sweep), "--out", str(tmp_path / "broken"), "--metrics", R10, "--baseline", "temperature=0.05"]) == 2
    assert "b/per_user.npz: not a readable per-user metrics file" in capsys.readouterr().err


def _csv(path):
    import csv

    with open(path, newline="") as f:
        return list(csv.DictReader(f))
