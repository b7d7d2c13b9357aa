"""The results a run leaves behind: ``results.json`` and a printed table."""

from __future__ import annotations

import re
from pathlib import Path

from twotower.fsutil import write_json_atomic
from twotower.metric_names import METRIC_NAMES


def write_results(metrics: dict[str, float], run_dir: Path) -> Path:
    path = Path(run_dir) / "results.json"
    write_json_atomic(path, dict(sorted(metrics.items())))  # never a half-written results.json
    return path


def format_table(metrics: dict[str, float], prefix: str = "test", reference: str = "popularity") -> str:
    """Metrics as a text table: one row per metric@K, one column per user group
    (all, and warm / cold users when the split has both), then coverage and
    mean popularity of the retrieved items per K; beside them, the same columns of
    the ``reference`` baseline (``popularity/test/...``) when the metrics hold it."""
    pattern = re.compile(rf"^(?:({reference})/)?{prefix}/(?:(warm|cold)/)?({'|'.join(METRIC_NAMES)}|coverage|mean_popularity)@(\d+)$")
    table: dict[tuple[str, int], dict[str, float]] = {}
    for key, value in metrics.items():
        m = pattern.match(key)
        if m:
            table.setdefault((m.group(3), int(m.group(4))), {})[(m.group(1) or "") + (m.group(2) or "all")] = value
    if not table:
        return "(no metrics)"
    order = [*METRIC_NAMES, "coverage", "mean_popularity"]
    groups = [f"{source}{g}" for source in ("", reference) for g in ("all", "warm", "cold")]
    groups = [g for g in groups if any(g in row for row in table.values())]
    headers = []
    for g in groups:
        group = g.removeprefix(reference)
        count = metrics.get(f"{prefix}/num_users" if group == "all" else f"{prefix}/num_{group}_users")
        label = group if count is None else f"{group} ({int(count)} users)"
        headers.append(f"{reference} {group}" if g.startswith(reference) else label)
    width = max(12, *(len(h) for h in headers))
    lines = ["metric".ljust(20) + "".join(h.rjust(width + 2) for h in headers)]
    for name, k in sorted(table, key=lambda c: (order.index(c[0]), c[1])):
        row = table[(name, k)]
        cells = [f"{row[g]:.4f}" if g in row else "" for g in groups]
        lines.append(f"{name}@{k}".ljust(20) + "".join(c.rjust(width + 2) for c in cells))
    return "\n".join(lines)
