"""Section ``memory``: peak memory of training and evaluation, each in a fresh process.
"""

from __future__ import annotations

import os

from benchmarks.common import CONFIGS, Context, epoch_batches, fmt, make_run, progress, table
from benchmarks.workers import run_worker


def data_file(ctx: Context, scale: str) -> str:
    """The scale's PreparedData pickled for worker processes (prepared here once)."""
    import pickle

    if scale not in ctx.data_files:
        make_run(ctx, scale, [], with_module=False)
        path = os.path.join(ctx.out_dir, f"prepared_{scale}.pkl")
        with open(path, "wb") as f:
            pickle.dump(ctx.prepared[ctx.current_key], f, protocol=pickle.HIGHEST_PROTOCOL)
        ctx.data_files[scale] = path
    return ctx.data_files[scale]


def section_memory(ctx: Context) -> dict:
    args = ctx.args
    out = {}
    for scale in args.scale:
        out[scale] = {"train": {}, "eval": {}}
        path = data_file(ctx, scale)
        for name in args.memory_configs:
            steps = epoch_batches(ctx, scale) or args.steps
            progress(f"  memory {scale}: training {name} in a fresh process ({2 * steps} steps)")
            params = {"overrides": ctx.scale_overrides(scale) + CONFIGS[name][1], "data_file": path, "steps": steps,
                      "threads": args.threads_effective}  # fmt: skip
            out[scale]["train"][name] = run_worker(ctx, "train_memory", params, f"memory train {name}")
            ctx.results["memory"] = out
        chunks = None if scale == "ml100k" else args.mem_eval_chunks
        progress(f"  memory {scale}: trainer.test in a fresh process ({'all' if chunks is None else chunks} user chunks)")
        params = {"overrides": ctx.scale_overrides(scale), "data_file": path, "chunks": chunks, "threads": args.threads_effective}
        out[scale]["eval"]["trainer.test"] = run_worker(ctx, "eval_memory", params, "memory eval")
        ctx.results["memory"] = out
    if "synthetic" in args.scale and "eval" in ctx.results and "synthetic" in ctx.results["eval"]:
        for m, r in ctx.results["eval"]["synthetic"]["methods"].items():
            out["synthetic"]["eval"][f"vectors {m}"] = {"memory": r["memory"], "rss_data_mb": r["rss_data_mb"],
                                                       "lifetime_peak_mb": r["lifetime_peak_mb"], "from": "eval section"}  # fmt: skip
    return out


def print_memory(res: dict) -> None:
    rows = []
    for scale, kinds in res.items():
        for kind, entries in kinds.items():
            for name, r in entries.items():
                mem = r["memory"]
                what = r.get("what", "")
                rows.append([scale, kind, name, fmt(r.get("rss_data_mb"), ",.0f"), fmt(mem["peak_mb"], ",.0f"),
                             fmt(mem["peak_extra_mb"], ",.0f"), fmt(r.get("lifetime_peak_mb"), ",.0f"), what])  # fmt: skip
    print(table("memory: peak RSS in fresh processes; RSS data = after imports and loading the prepared data (vectors: "
                "after generating them); peak = VmHWM during the measured work; extra = peak - RSS data (includes "
                "modules Lightning imports on its first fit/test); process = the process's own peak (VmHWM)",
                ["scale", "kind", "measurement", "RSS data MB", "peak MB", "peak extra MB", "process MB", "what"],
                rows, left=3, last_left=True))  # fmt: skip
