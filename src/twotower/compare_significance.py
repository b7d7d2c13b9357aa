"""``twotower-compare --baseline``: whether each configuration differs from a reference one.

Each run keeps its test users' metrics (:mod:`twotower.per_user`). Two configurations are
paired on the seeds both ran and, within a seed, on the users both were tested on (the same
split: the same users). Two tests per configuration and metric, each against the baseline:
  - over users: each user's difference averaged over the matched seeds, then a paired test
    over users (t-test by default, or Wilcoxon signed-rank), with its effect size (Cohen's
    d_z) and the 95% confidence interval of the mean difference;
  - over seeds: a paired t-test on the per-seed means (the split-to-split and seed-to-seed
    noise; with 3 seeds it rarely reaches significance).
p-values are Holm-corrected over all the comparisons of the table (configurations x metrics),
each kind apart; a difference is marked significant when its corrected per-user p is below alpha.
The baseline ``popularity`` is each run's own most-popular reference on the same users.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from twotower.metric_names import METRIC_NAMES
from twotower.per_user import FILENAME, PerUserMetrics, read_per_user
from twotower.significance import holm, paired_t_test, wilcoxon_test

if TYPE_CHECKING:
    from twotower.compare import Run

REFERENCE = "popularity"  # --baseline popularity: each run's own popularity reference
TESTS = {"t": paired_t_test, "wilcoxon": wilcoxon_test}
SLICED = re.compile(rf"^test/(?:(warm|cold)/)?((?:{'|'.join(METRIC_NAMES)})@\d+)$")


class MissingPerUser(Exception):
    """A run has no per-user metrics for what is asked (older run, or a metric it did not keep)."""


def testable(metric: str) -> bool:
    """A per-user ranking metric, over all / warm / cold users (not coverage, bands or durations)."""
    return SLICED.match(metric) is not None


class PerUserValues:
    """Per-user metric values of runs, read once per run folder."""

    def __init__(self) -> None:
        self._read: dict[Path, PerUserMetrics] = {}

    def of(self, runs: list[Run], metric: str, reference: bool = False) -> pd.Series:
        """``metric`` (``test/[warm/|cold/]<name>@K``) of ``runs`` (their popularity reference's
        with ``reference``), indexed by ``(seed, user)``, averaged over runs of the same seed."""
        group, name = SLICED.match(metric).groups()
        column = f"{REFERENCE}/test/{name}" if reference else f"test/{name}"
        frames = []
        for run in runs:
            path = run.path / FILENAME
            if not path.exists():
                raise MissingPerUser(f"{run.path} has no {FILENAME} (a run from before twotower kept per-user metrics)")
            if path not in self._read:
                self._read[path] = read_per_user(path)  # ValueError for a broken file
            data = self._read[path]
            if column not in data.metrics:
                raise MissingPerUser(f"{path} has no {column}")
            keep = np.ones(len(data.users), dtype=bool) if group is None else (data.warm if group == "warm" else ~data.warm)
            frames.append(pd.DataFrame({"seed": run.config.get("seed"), "user": data.users[keep], "value": data.metrics[column][keep]}))
        return pd.concat(frames).groupby(["seed", "user"])["value"].mean()


def paired(candidate: pd.Series, baseline: pd.Series, test: str) -> dict[str, Any]:
    """The two tests of ``candidate`` against ``baseline`` (Series by ``(seed, user)``), on the
    pairs present in both; the per-user fields are NaN with fewer than 2 users, the per-seed
    ones with fewer than 2 seeds."""
    joined = pd.concat({"candidate": candidate, "baseline": baseline}, axis=1, join="inner")
    by_user = joined.groupby(level="user").mean()
    by_seed = joined.groupby(level="seed").mean()
    row: dict[str, Any] = {"users": len(by_user), "seeds": len(by_seed)}
    base_mean = float(by_user["baseline"].mean()) if len(by_user) else math.nan
    row["relative"] = math.nan if not base_mean else float(by_user["candidate"].mean()) / base_mean - 1
    if len(by_user) >= 2:
        users = TESTS[test](by_user["candidate"].to_numpy(), by_user["baseline"].to_numpy())
        row.update(delta=users.mean, ci_low=users.ci_low, ci_high=users.ci_high, effect=users.effect, p_users=users.p)
    else:
        delta = float((by_user["candidate"] - by_user["baseline"]).mean()) if len(by_user) else math.nan
        row.update(delta=delta, ci_low=math.nan, ci_high=math.nan, effect=math.nan, p_users=math.nan)
    row["p_seeds"] = paired_t_test(by_seed["candidate"].to_numpy(), by_seed["baseline"].to_numpy()).p if len(by_seed) >= 2 else math.nan
    return row


def significance_table(configurations: dict[str, list[Run]], baseline: str, metrics: list[str],
                       test: str = "t", alpha: float = 0.05) -> tuple[pd.DataFrame, list[str]]:
    """One row per (configuration other than ``baseline``, testable metric): the mean difference
    from the baseline with its 95% interval, the relative difference, d_z, the raw and
    Holm-corrected p-values over users and over seeds, and ``significant``. ``baseline``: a key
    of ``configurations``, or :data:`REFERENCE`. Also returns notes on what could not be tested."""
    values, rows, notes = PerUserValues(), [], []
    for label, runs in configurations.items():
        if label == baseline:
            continue
        for metric in filter(testable, metrics):
            try:
                candidate = values.of(runs, metric)
                reference = values.of(runs if baseline == REFERENCE else configurations[baseline], metric, reference=baseline == REFERENCE)
            except MissingPerUser as missing:
                notes.append(f"{label}: not tested ({missing})")
                break
            rows.append({"configuration": label, "metric": metric, **paired(candidate, reference, test)})
    columns = ["configuration", "metric", "users", "seeds", "delta", "ci_low", "ci_high", "relative", "effect", "p_users", "p_seeds"]
    table = pd.DataFrame(rows, columns=columns)
    table["p_users_holm"] = holm(table["p_users"].tolist())
    table["p_seeds_holm"] = holm(table["p_seeds"].tolist())
    table["significant"] = table["p_users_holm"] < alpha
    return table, notes


def _p(p: float) -> str:
    return "–" if pd.isna(p) else ("<0.001" if p < 0.001 else f"{p:.3f}")


def _signed(x: float) -> str:
    return "–" if pd.isna(x) else f"{x:+.4f}"


def to_markdown(table: pd.DataFrame, notes: list[str], baseline: str, test: str, alpha: float) -> str:
    """The significance section of ``comparison.md``."""
    against = "each run's own popularity reference (same users)" if baseline == REFERENCE else f"`{baseline}`"
    name = {"t": "paired t-test", "wilcoxon": "Wilcoxon signed-rank test"}[test]
    lines = [
        f"## Significance against {against}",
        "",
        f"Δ: configuration minus baseline, mean over users of each user's difference averaged over the seeds both ran "
        f"[95% CI]; d_z: Cohen's effect size of the paired differences; p (users): {name} over users; p (seeds): "
        f"paired t-test over the per-seed means; both Holm-corrected over the {len(table)} comparisons. "
        f"n.s.: not significant at α = {alpha} over users.",
        "",
        "| configuration | metric | Δ [95% CI] | Δ % | d_z | users | p (users) | seeds | p (seeds) | |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in table.itertuples(index=False):
        interval = _signed(row.delta) + ("" if pd.isna(row.ci_low) else f" [{_signed(row.ci_low)}, {_signed(row.ci_high)}]")
        relative = "–" if pd.isna(row.relative) else f"{100 * row.relative:+.1f}%"
        effect = "–" if pd.isna(row.effect) else f"{row.effect:+.2f}"
        mark = "–" if pd.isna(row.p_users_holm) else ("significant" if row.significant else "n.s.")
        lines.append(f"| {row.configuration} | {row.metric} | {interval} | {relative} | {effect} | {row.users} | "
                     f"{_p(row.p_users_holm)} | {row.seeds} | {_p(row.p_seeds_holm)} | {mark} |")  # fmt: skip
    lines += ["", *(f"- {note}" for note in notes)] if notes else []
    return "\n".join(lines) + "\n"
