"""``twotower-compare``: a local comparison report for the runs of one or several sweeps.

Finds the run directories (``config.yaml``, ``results.json``, ``csv/metrics.csv``, ``status.json``),
groups runs by the config values that differ between them (a "configuration"; seeds and bookkeeping
ignored), aggregates metrics over seeds and writes a markdown table, a CSV file and two plots; with
``--baseline``, tests each configuration against that one (:mod:`twotower.compare_significance`)."""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from twotower import compare_significance

DEFAULT_METRICS = ["test/recall@10", "test/recall@50", "test/ndcg@10"]  # for the default cut-offs (eval.ks)
DURATION = "duration_s"  # training time, from status.json
IGNORED_PREFIXES = ("paths.", "hydra.", "logger.")
IGNORED_KEYS = {
    "seed", "tags", "task_name", "trainer.enable_progress_bar", "trainer.enable_model_summary", "progress_bar_refresh_steps",
}  # fmt: skip
MISSING = "–"  # the value of a key a run's config does not have

Groups = dict[tuple, list["Run"]]  # configuration (values of the varying keys) -> its runs


@dataclass
class Run:
    """One run directory: its flattened config, its metrics, and an error if it did not complete."""
    path: Path
    config: dict[str, Any]
    metrics: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    overrides: dict[str, str] | None = None  # command-line overrides (status.json), None if unknown


def find_run_dirs(path: Path) -> list[Path]:
    """Directories under ``path`` (itself included) with a ``config.yaml``; not ``.hydra``, nor inside runs."""
    found = []
    for root, dirs, files in os.walk(path):
        if "config.yaml" in files:
            found.append(Path(root))
            dirs.clear()
        dirs[:] = [d for d in dirs if not d.startswith(".")]
    return sorted(found)


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Nested mappings as one dict with dotted keys; lists (and empty mappings) stay values."""
    if not (isinstance(tree, dict) and tree):
        return {prefix: tree}
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        flat.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def load_run(path: Path) -> Run:
    """One run directory; without ``status.json``, completed if and only if it has ``results.json``."""
    path = Path(path)
    run = Run(path, flatten(yaml.safe_load((path / "config.yaml").read_text()) or {}))
    status = json.loads((path / "status.json").read_text()) if (path / "status.json").exists() else {}
    if status.get("status", "completed") != "completed":  # "failed", or "running" (or killed)
        run.error = ": ".join(str(x) for x in (status.get("status"), status.get("error")) if x)
    elif not (path / "results.json").exists():
        run.error = "no results.json (crashed or still running)"
    else:
        results = json.loads((path / "results.json").read_text())
        run.metrics = {k: float(v) for k, v in results.items() if isinstance(v, (int, float))}
    if status.get("duration_s") is not None:
        run.metrics[DURATION] = float(status["duration_s"])
    if "overrides" in status:
        pairs = (o.lstrip("+~").split("=", 1) for o in status["overrides"] if "=" in o)
        run.overrides = {k: v for k, v in pairs}
    return run


def value_of(run: Run, key: str) -> str:
    """A run's value of ``key``: from its resolved config, else its command-line choice
    (a config group like ``model``), else ``MISSING``."""
    if key in run.config:
        return format_value(key, run.config[key])
    return (run.overrides or {}).get(key, MISSING)


def _ignored(key: str) -> bool:
    return key in IGNORED_KEYS or key.startswith(IGNORED_PREFIXES) or key.rsplit(".", 1)[-1] == "seed"


def format_value(key: str, value: Any) -> str:
    """A config value as text for a cell or a legend; ``_target_`` paths by their last part."""
    if isinstance(value, str) and key.endswith("_target_"):
        return value.rsplit(".", 1)[-1]
    return json.dumps(value, sort_keys=True) if isinstance(value, (list, dict)) else str(value)


def varying_keys(runs: list[Run]) -> list[str]:
    """Keys whose values differ across runs (missing counts as a value), except seeds and bookkeeping
    (paths, loggers, tags), in order of first appearance. When every run knows its command-line
    overrides and some overridden key varies, only those keys are used (``model=popularity``, not the
    dozen config values that choice changes); otherwise every config key is a candidate."""
    def varying(keys) -> list[str]:
        return [k for k in dict.fromkeys(keys) if not _ignored(k) and len({value_of(r, k) for r in runs}) > 1]

    if all(r.overrides is not None for r in runs):
        chosen = varying(k for run in runs for k in run.overrides)
        if chosen:
            return chosen
    return varying(k for run in runs for k in run.config)


def short_names(keys: list[str]) -> dict[str, str]:
    """Keys by their last two parts (``model.net.embedding_dim`` -> ``net.embedding_dim``), more if ambiguous."""
    names = {}
    for key in keys:
        parts = key.split(".")
        for n in range(min(2, len(parts)), len(parts) + 1):
            names[key] = ".".join(parts[-n:])
            if sum(k == names[key] or k.endswith("." + names[key]) for k in keys) == 1:
                break
    return names


def group_runs(runs: list[Run], keys: list[str]) -> Groups:
    """Runs grouped by their values of ``keys``: one group per configuration."""
    groups: Groups = {}
    for run in runs:
        groups.setdefault(tuple(value_of(run, k) for k in keys), []).append(run)
    return groups


def summarize(groups: Groups, keys: list[str], metrics: list[str], sort: str | None = None) -> pd.DataFrame:
    """One row per configuration: varying keys (short names), ``n``, ``<metric> mean`` and ``<metric> std``
    (sample std, ddof=1; NaN for one run) per metric; sorted by ``sort`` (default: first metric) descending."""
    names = short_names(keys)
    rows = []
    for values, runs in groups.items():
        # One configuration (nothing varies): a label column all the same, so the table still says what a row is.
        label = dict(zip(names.values(), values)) if names else {"configuration": "all runs"}
        row: dict[str, Any] = {**label, "n": len(runs)}
        for m in metrics:
            values_m = [r.metrics[m] for r in runs if m in r.metrics]
            row[f"{m} mean"] = statistics.fmean(values_m) if values_m else math.nan
            row[f"{m} std"] = statistics.stdev(values_m) if len(values_m) > 1 else math.nan
        rows.append(row)
    columns = [*(names.values() or ["configuration"]), "n", *(f"{m} {s}" for m in metrics for s in ("mean", "std"))]
    table = pd.DataFrame(rows, columns=columns).astype({"n": int})  # all-numeric rows would make n a float
    by = f"{sort or metrics[0]} mean"
    return table.sort_values(by, ascending=False, na_position="last", kind="stable", ignore_index=True)


def _fmt(x: float, decimals: int) -> str:
    return "" if pd.isna(x) else f"{x:.{decimals}f}"


def decimals_of(metric: str, mean: float) -> int:
    """One rounding per metric, mean and std alike: 1 decimal for seconds and values of 100 or
    more, 4 for the ranking metrics."""
    return 1 if metric == DURATION or (not pd.isna(mean) and abs(mean) >= 100) else 4


def to_markdown(table: pd.DataFrame, metrics: list[str], failed: list[Run] = ()) -> str:
    """The summary as a markdown table with ``mean ± std`` cells, then the failed runs."""
    keys = list(table.columns[: table.columns.get_loc("n") + 1])
    header = keys + [f"{m} mean ± std" for m in metrics]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for _, row in table.iterrows():
        cells = [str(int(row[k])) if k == "n" else str(row[k]) for k in keys]  # iterrows makes numbers floats
        for m in metrics:
            mean, std, decimals = row[f"{m} mean"], row[f"{m} std"], decimals_of(m, row[f"{m} mean"])
            cells.append(_fmt(mean, decimals) + ("" if pd.isna(std) else f" ± {_fmt(std, decimals)}"))
        lines.append("| " + " | ".join(cells) + " |")
    if failed:
        lines += ["", f"Failed or unfinished runs ({len(failed)}), not in the table:"]
        lines += [f"- `{r.path}`: {r.error}" for r in failed]
    return "\n".join(lines) + "\n"


def plot_lines(lines: dict[str, pd.DataFrame], path: Path, **labels: str) -> Path:
    """A PNG, one line per legend label (frames with ``mean`` and ``std`` indexed by x), a band
    of mean ± std (sample std over seeds) where a configuration has several runs; Agg canvas,
    no pyplot or global backend."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(7, 4.5))
    ax = fig.add_subplot()
    for name, frame in lines.items():
        (line,) = ax.plot(frame.index, frame["mean"], marker="o", label=name)
        spread = frame["std"].fillna(0.0)
        if (spread > 0).any():
            ax.fill_between(frame.index, frame["mean"] - spread, frame["mean"] + spread, color=line.get_color(), alpha=0.2)
    ax.set(**labels)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small") if lines else ax.text(0.5, 0.5, "no data", ha="center", transform=ax.transAxes)
    fig.tight_layout()
    FigureCanvasAgg(fig).print_png(str(path))
    return path


def recall_at_k(run: Run) -> pd.Series:
    """A run's ``test/recall@K`` indexed by K."""
    found = {int(m.group(1)): v for k, v in run.metrics.items() if (m := re.fullmatch(r"test/recall@(\d+)", k))}
    return pd.Series(found, dtype=float).sort_index()


def val_curve(run: Run, metric: str) -> pd.Series:
    """``metric`` per epoch from a run's ``csv/metrics.csv`` (empty if it was not logged)."""
    csv = run.path / "csv" / "metrics.csv"
    df = pd.read_csv(csv) if csv.exists() else pd.DataFrame()
    if metric not in df or "epoch" not in df:
        return pd.Series(dtype=float)
    return df.dropna(subset=[metric]).groupby("epoch")[metric].mean()


def configuration_labels(groups: Groups, keys: list[str]) -> dict[tuple, str]:
    """Each configuration's label, ``name=value, ...`` with short names, keys it does not have
    left out (``all runs`` when nothing varies)."""
    names = short_names(keys)
    return {values: ", ".join(f"{names[k]}={v}" for k, v in zip(keys, values) if v != MISSING) or "all runs" for values in groups}


def find_baseline(spec: str, groups: Groups, keys: list[str]) -> tuple | str:
    """The configuration ``--baseline`` names: ``popularity`` (each run's own reference), a run
    or sweep directory (the one configuration of the runs under it), or ``key=value[,key=value]``
    (keys by full or short name). Raises ValueError unless exactly one configuration matches."""
    labels = configuration_labels(groups, keys)
    if spec == compare_significance.REFERENCE:
        return spec
    if Path(spec).exists():
        where = Path(spec).resolve()
        found = [v for v, runs in groups.items() if any(r.path == where or where in r.path.parents for r in runs)]
    else:
        wanted = {}
        for pair in re.split(r",(?=[^,=\[\]]+=)", spec):
            key, sep, value = (part.strip() for part in pair.partition("="))
            matching = [i for i, k in enumerate(keys) if k == key or k.endswith("." + key)]
            if len(matching) != 1 or not sep:
                raise ValueError(f"--baseline {spec}: {pair.strip()!r} names no varying key once; expected key=value with "
                                 f"one of: {', '.join(keys) or '(nothing varies)'}")  # fmt: skip
            wanted[matching[0]] = value
        found = [v for v in groups if all(v[i] == value for i, value in wanted.items())]
    if len(found) != 1:
        raise ValueError(f"--baseline {spec}: matches {len(found)} configurations; expected one of: "
                         f"{'; '.join(labels.values())}; or {compare_significance.REFERENCE} (each run's own reference)")  # fmt: skip
    return found[0]


def mean_lines(groups: Groups, keys: list[str], per_run) -> dict[str, pd.DataFrame]:
    """Per configuration (labelled ``name=value, ...``), the ``mean`` and sample ``std`` (NaN for
    one run) over its runs of ``per_run(run)``, indexed by x."""
    labels, lines = configuration_labels(groups, keys), {}
    for values, runs in groups.items():
        series = [s for s in map(per_run, runs) if len(s)]
        if series:
            label = labels[values]
            joined = pd.concat(series, axis=1)
            lines[label] = pd.DataFrame({"mean": joined.mean(axis=1), "std": joined.std(axis=1, ddof=1)}).sort_index()
    return lines


def default_metrics(known: list[str]) -> list[str]:
    """Recall at the runs' smallest cut-off and at 50 (else their largest), NDCG at the smallest:
    :data:`DEFAULT_METRICS` for the default ``eval.ks``, ``test/recall@20``, ``test/recall@50``,
    ``test/ndcg@20`` for Gowalla's ``[20, 50]``. ``known``: the metric names the runs have."""
    ks = sorted(int(m.rsplit("@", 1)[1]) for m in known if re.fullmatch(r"test/recall@\d+", m))
    if not ks:
        return list(DEFAULT_METRICS)  # reported as missing by the caller
    low, high = ks[0], 50 if 50 in ks else ks[-1]
    return list(dict.fromkeys([f"test/recall@{low}", f"test/recall@{high}", f"test/ndcg@{low}"]))


def compare(paths: list[Path], out: Path, metrics: list[str] | None = None, sort: str | None = None,
            curve_metric: str = "val/ndcg@20", baseline: str | None = None, test: str = "t",
            alpha: float = 0.05) -> tuple[str, list[Path]]:
    """Write the report on the runs under ``paths`` into ``out``; return the markdown and the files written.
    With ``baseline`` (see :func:`find_baseline`), also the significance of each configuration's
    difference from it (``test``: ``t`` or ``wilcoxon`` over users; ``alpha``: the level).
    Raises FileNotFoundError (missing path, no completed run) or ValueError (``sort`` not in
    ``metrics``, a baseline that names no configuration, a broken per-user file)."""
    dirs: list[Path] = []
    for p in map(Path, paths):
        if not p.exists():
            raise FileNotFoundError(f"path does not exist: {p}")
        dirs += find_run_dirs(p)
    where = ", ".join(map(str, paths))
    if not dirs:
        raise FileNotFoundError(f"no run (directory with a config.yaml) under {where}")
    runs = [load_run(d) for d in dict.fromkeys(p.resolve() for p in dirs)]
    done, failed = [r for r in runs if r.error is None], [r for r in runs if r.error is not None]
    if not done:
        raise FileNotFoundError(f"no completed run under {where} ({len(failed)} failed)")
    known = sorted({k for r in done for k in r.metrics})
    if metrics is None:
        metrics = default_metrics(known) + ([DURATION] if DURATION in known else [])
    if sort and sort not in metrics:
        raise ValueError(f"--sort {sort} is not one of the metrics: {', '.join(metrics)}")
    unknown = [m for m in metrics if m not in known]
    if unknown:
        raise ValueError(
            f"--metrics {','.join(unknown)}: no completed run has {'it' if len(unknown) == 1 else 'them'}; "
            f"expected some of {', '.join(k for k in known if k.startswith('test/') and '/warm/' not in k and '/cold/' not in k)}"
        )
    keys = varying_keys(done)
    unordered = group_runs(done, keys)
    table = summarize(unordered, keys, metrics, sort)
    groups = {v: unordered[v] for v in table.iloc[:, : len(keys)].itertuples(index=False, name=None)}
    markdown = to_markdown(table, metrics, failed)
    significance = None
    if baseline is not None:
        significance, section = significance_of(groups, keys, baseline, metrics, test, alpha)
        markdown += "\n" + section
    out.mkdir(parents=True, exist_ok=True)
    (out / "comparison.md").write_text(markdown)
    table.to_csv(out / "comparison.csv", index=False)
    written = [out / "comparison.md", out / "comparison.csv"]
    if significance is not None:
        significance.to_csv(out / "significance.csv", index=False)
        written.append(out / "significance.csv")
    recall = plot_lines(mean_lines(groups, keys, recall_at_k), out / "recall_at_k.png",
                        xlabel="K", ylabel="test Recall@K (mean ± std over seeds)", title="Recall@K")
    curve = plot_lines(mean_lines(groups, keys, lambda r: val_curve(r, curve_metric)), out / "val_curve.png",
                       xlabel="epoch", ylabel=f"{curve_metric} (mean ± std over seeds)", title=curve_metric)
    return markdown, [*written, recall, curve]


def significance_of(groups: Groups, keys: list[str], baseline: str, metrics: list[str], test: str,
                    alpha: float) -> tuple[pd.DataFrame, str]:
    """The significance table against ``baseline`` and its markdown section (checked before any file is written)."""
    if test not in compare_significance.TESTS:
        raise ValueError(f"--test {test}: expected one of {', '.join(compare_significance.TESTS)}")
    if not 0 < alpha < 1:
        raise ValueError(f"--alpha {alpha}: expected a level between 0 and 1, e.g. 0.05")
    tested = [m for m in metrics if compare_significance.testable(m)]
    if not tested:
        raise ValueError(f"--baseline: none of the metrics ({', '.join(metrics)}) is a per-user ranking metric; "
                         "expected test/<metric>@K or test/<warm|cold>/<metric>@K in --metrics")  # fmt: skip
    chosen = find_baseline(baseline, groups, keys)
    labels = configuration_labels(groups, keys)
    if chosen != compare_significance.REFERENCE and len(groups) < 2:
        raise ValueError(f"--baseline {baseline}: one configuration only, nothing to compare it with; expected runs of "
                         f"two or more configurations, or --baseline {compare_significance.REFERENCE}")  # fmt: skip
    label = labels.get(chosen, chosen)
    configurations = {labels[v]: runs for v, runs in groups.items()}
    table, notes = compare_significance.significance_table(configurations, label, tested, test, alpha)
    return table, compare_significance.to_markdown(table, notes, label, test, alpha)


def main(argv: list[str] | None = None) -> int:
    """The ``twotower-compare`` command; returns the exit status (2: a missing path, no run found)."""
    parser = argparse.ArgumentParser(prog="twotower-compare", description=__doc__.split("\n")[0].replace("``", ""))
    parser.add_argument("dirs", nargs="+", type=Path, help="sweep or run directories (searched recursively)")
    parser.add_argument("--metrics", help=f"comma-separated (default: recall at the runs' smallest cut-off and at 50, NDCG at the smallest, "
                        f"e.g. {','.join(DEFAULT_METRICS)}[,{DURATION}])")
    parser.add_argument("--sort", help="metric to sort by, descending (default: the first metric)")
    parser.add_argument("--curve-metric", default="val/ndcg@20", help="metric of val_curve.png (default: %(default)s)")
    parser.add_argument("--out", type=Path, help="output directory (default: <first dir>/comparison)")
    parser.add_argument("--baseline", help="test every configuration against this one: key=value[,key=value] "
                        "(e.g. loss=listwise), a run directory, or 'popularity' (each run's own popularity reference)")
    parser.add_argument("--test", default="t", choices=sorted(compare_significance.TESTS),
                        help="paired test over users (default: %(default)s; wilcoxon: signed-rank)")
    parser.add_argument("--alpha", type=float, default=0.05, help="significance level after Holm's correction (default: %(default)s)")
    args = parser.parse_args(argv)
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()] if args.metrics else None
    try:
        markdown, written = compare(args.dirs, args.out or args.dirs[0] / "comparison", metrics,
                                    args.sort, args.curve_metric, args.baseline, args.test, args.alpha)
    except (FileNotFoundError, ValueError) as e:
        print(f"twotower-compare: error: {e}", file=sys.stderr)
        return 2
    print(markdown, *(f"wrote {p}" for p in written), sep="\n")
    return 0
