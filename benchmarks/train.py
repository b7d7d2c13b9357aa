"""Section ``train``: ``Trainer.fit`` throughput of each configuration, batch construction
alone, the FLOP rate, and the same configuration through the real command's ``train()``.
"""

from __future__ import annotations

import contextlib
import io
import os
import statistics
import time

from benchmarks.common import COMMON, CONFIGS, Context, data_key, epoch_batches, epoch_timer, fmt, fresh_copy, make_run, make_trainer, median, progress, summarize_epochs, table, tower_info


def mm_peak(quick: bool, repeats: int) -> dict:
    """fp32 ``torch.mm`` GFLOP/s of an n x n product (best and median of several)."""
    import torch

    n = 1024 if quick else 2048
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    times = []
    for _ in range(max(3, repeats + 2)):
        start = time.perf_counter()
        torch.mm(a, b)
        times.append(time.perf_counter() - start)
    flop = 2 * n**3
    return {"n": n, "best_gflops": flop / min(times) / 1e9, "median_gflops": flop / median(times) / 1e9,
            "threads": torch.get_num_threads()}  # fmt: skip


def bench_batches(dm, repeats: int, limit: int | None) -> dict:
    """Iterate ``train_dataloader()`` with no model: batch construction alone. Whole passes
    (the epoch's permutation included); with ``limit``, also the steady rate between the
    first and the last batch (the permutation of every example left out, as in training)."""
    def one_pass(collect: bool = False):
        start, n, b, cols, uniq, stamps = time.perf_counter(), 0, 0, [], [], []
        for batch in dm.train_dataloader():
            stamps.append(time.perf_counter())
            n, b = n + len(batch), b + 1
            if collect:
                cols.append(batch.valid.shape[1] if batch.valid is not None else 0)
                uniq.append(len(batch.extra["index"]) if batch.extra is not None else 0)
            if limit and b >= limit:
                break
        steady = (stamps[-1] - stamps[0]) / (b - 1) if b > 1 else None
        return time.perf_counter() - start, b, n, cols, uniq, steady

    *_, cols, uniq, _ = one_pass(collect=True)  # warm-up, and what the batches hold
    runs = [one_pass() for _ in range(repeats)]
    sec = median(r[0] for r in runs)
    steady = median(r[5] for r in runs)
    return {"seconds": sec, "batches": runs[0][1], "samples": runs[0][2], "pass_batches_per_s": runs[0][1] / sec,
            "steady_batches_per_s": 1 / steady if steady else None,
            "batches_per_s": runs[0][1] / sec if limit is None or not steady else 1 / steady,
            "basis": "epoch" if limit is None or not steady else "steady", "samples_per_s": runs[0][2] / sec,
            "mean_negative_columns": statistics.fmean(cols) if cols else 0,
            "mean_unique_sampled_items": statistics.fmean(uniq) if uniq else 0}  # fmt: skip


def flops_per_sample(towers: dict, batch_size: int, columns: float, unique_extra: float) -> dict:
    """Matmul FLOPs of one training example: forward = user MLP + item MLP (the positive, plus
    this example's share of the distinct sampled negatives) + scoring (2 D per dot product: the
    positive and the C negative columns); forward + backward ~ 3 x forward."""
    fu = towers["user_tower"]["forward_mlp_flops_per_vector"]
    fi = towers["item_tower"]["forward_mlp_flops_per_vector"]
    d = towers["user_tower"]["output_dim"]
    forward = fu + fi * (1 + unique_extra / batch_size) + 2 * d * (1 + columns)
    return {"forward": forward, "forward_backward": 3 * forward, "user_mlp": fu, "item_mlp": fi,
            "scoring": 2 * d * (1 + columns), "dim": d, "negative_columns": columns}  # fmt: skip


def prepare_train_config(ctx: Context, scale: str, name: str) -> dict:
    """A configuration's run (config, DataModule, template module) and its static facts,
    batch construction measured; :func:`train_repeat` then times it."""
    label, overrides = CONFIGS[name]
    args = ctx.args
    cfg, dm, template = make_run(ctx, scale, overrides)
    limit = epoch_batches(ctx, scale)
    info = {"label": label, "overrides": overrides, "batch_size": dm.batch_size, "train_examples": len(dm.train_examples.user),
            "num_users": dm.data.num_users, "num_items": dm.data.num_items, "batches_per_epoch": limit or len(dm.train_dataloader()),
            "towers": tower_info(template), "lr": float(cfg.model.optimizer.lr)}  # fmt: skip
    info["params"] = {side: info["towers"][side]["params"] for side in ("user_tower", "item_tower")}
    info["batch_construction"] = bench_batches(dm, args.repeats, limit)
    return {"name": name, "scale": scale, "cfg": cfg, "dm": dm, "template": template, "limit": limit, "info": info,
            "fits": [], "commands": [], "evals": {"val": [], "test": []}}  # fmt: skip


def train_repeat(ctx: Context, run: dict, rep: int) -> None:
    """One timed repetition of a prepared configuration: ``1 + --epochs`` epochs from a
    fresh copy of the template (the first is the warm-up), then (ML-100K) full ranking."""
    args, cfg, dm, info = ctx.args, run["cfg"], run["dm"], run["info"]
    progress(f"  train {run['scale']} {run['name']}: repeat {rep + 1}/{args.repeats} ({1 + args.epochs} epochs of "
             f"{info['batches_per_epoch']} batches)")  # fmt: skip
    module = fresh_copy(run["template"])
    timer = epoch_timer()
    fit = make_trainer(ctx, cfg, max_epochs=1 + args.epochs, limit_val_batches=0, callbacks=[timer],
                       limit_train_batches=run["limit"] or 1.0)  # fmt: skip
    fit.fit(module, datamodule=dm)
    run["fits"].append(summarize_epochs(timer.epochs[1:]))
    if args.command:
        run["commands"].append(command_repeat(ctx, run, rep))
    if run["scale"] == "ml100k":  # full ranking of the whole catalogue, as before (synthetic: see the eval section)
        ev = make_trainer(ctx, cfg)
        for split, evaluate in (("val", ev.validate), ("test", ev.test)):
            users = len(dm.data.eval_sets[split].users)
            start = time.perf_counter()
            evaluate(module, datamodule=dm, verbose=False)
            run["evals"][split].append({"seconds": time.perf_counter() - start, "users": users})


def command_repeat(ctx: Context, run: dict, rep: int) -> dict:
    """``--command``: the same configuration through the real command's ``twotower.training.train``
    (its callbacks, CSV logger, checkpoints, progress bar, validation after every epoch and the
    final test), ``1 + --epochs`` epochs; its steady-state steps. Its output goes to a directory
    of its own under the benchmark's temporary directory, its progress bar and tables to a buffer."""
    from twotower.config import compose_config
    from twotower.training import train

    args, name, scale = ctx.args, run["name"], run["scale"]
    limits = [] if run["limit"] is None else [f"trainer.limit_train_batches={run['limit']}", "trainer.limit_val_batches=1",
                                              "trainer.limit_test_batches=1"]  # fmt: skip
    overrides = COMMON + ctx.scale_overrides(scale) + CONFIGS[name][1] + limits + [
        f"trainer.max_epochs={1 + args.epochs}", "eval.patience=null"]  # fmt: skip
    cfg = compose_config(overrides, output_dir=os.path.join(ctx.out_dir, "command", f"{scale}_{name}_{rep}"))
    ctx.current_key, ctx.current_scale = data_key(cfg), scale  # the cached preparation of this scale
    timer = epoch_timer()
    with contextlib.redirect_stdout(io.StringIO()):
        train(cfg, callbacks=[timer])
    return summarize_epochs(timer.epochs[1:])


def summarize_train_config(ctx: Context, run: dict, peak: dict) -> dict:
    """Medians over the repetitions, the batch-construction ratio and the FLOP rate."""
    args, dm, info, fits, limit = ctx.args, run["dm"], run["info"], run["fits"], run["limit"]
    info["train"] = {k: median(f[k] for f in fits) for k in fits[0]}
    info["train"].update(timed_epochs=args.epochs, repeats=args.repeats, runs=fits)
    # Whole epochs (ML-100K, as earlier versions of this script); steady state where an epoch is cut short.
    info["train"]["basis"] = "epoch" if limit is None or fits[0]["steady_step_s"] is None else "steady"
    samples = info["train"]["samples_per_s"] if info["train"]["basis"] == "epoch" else info["train"]["steady_samples_per_s"]
    step_s = info["train"]["step_s"] if info["train"]["basis"] == "epoch" else info["train"]["steady_step_s"]
    info["train"]["reported_samples_per_s"] = samples
    info["train"]["reported_step_s"] = step_s
    bc = info["batch_construction"]
    info["build_over_train"] = (bc["pass_batches_per_s"] if info["train"]["basis"] == "epoch" else bc["batches_per_s"]) * step_s
    if run["commands"]:  # steady state on both sides: the command's epochs also hold their validation
        steady = median(c["steady_step_s"] for c in run["commands"])
        info["command"] = {"steady_step_s": steady, "steady_samples_per_s": median(c["steady_samples_per_s"] for c in run["commands"]),
                           "over_fit": steady / info["train"]["steady_step_s"], "runs": run["commands"]}  # fmt: skip
    for split, runs in run["evals"].items():
        if runs:
            sec = median(r["seconds"] for r in runs)
            info[split] = {"seconds": sec, "users": runs[0]["users"], "scores_per_s": runs[0]["users"] * info["num_items"] / sec}
    fl = flops_per_sample(info["towers"], dm.batch_size, bc["mean_negative_columns"], bc["mean_unique_sampled_items"])
    achieved = samples * fl["forward_backward"] / 1e9
    info["compute"] = {"flops_per_sample": fl, "achieved_gflops": achieved, "mm_peak_gflops": peak["best_gflops"],
                       "fraction_of_mm_peak": achieved / peak["best_gflops"]}  # fmt: skip
    progress(f"  train {run['scale']} {run['name']}: {samples:,.0f} samples/s, batch construction "
             f"{bc['batches_per_s']:,.1f} batches/s = {info['build_over_train']:.1f}x what training consumes")  # fmt: skip
    return info


def section_train(ctx: Context) -> dict:
    import torch

    peak = mm_peak(ctx.args.quick, ctx.args.repeats)
    progress(f"train: torch.mm {peak['n']}x{peak['n']} fp32: best {peak['best_gflops']:.1f} GFLOP/s "
             f"(median {peak['median_gflops']:.1f}), {torch.get_num_threads()} threads")  # fmt: skip
    out = {"mm_peak": peak, "scales": {}}
    for scale in ctx.args.scale:
        runs = [prepare_train_config(ctx, scale, name) for name in ctx.args.configs]
        # Repetitions interleaved across configurations, in reversed order every other round: this
        # machine drifts by 10-20 % within minutes, which back-to-back repeats would fold into the
        # differences between configurations.
        for rep in range(ctx.args.repeats):
            for run in runs if rep % 2 == 0 else runs[::-1]:
                train_repeat(ctx, run, rep)
        out["scales"][scale] = {}
        for run in runs:
            out["scales"][scale][run["name"]] = summarize_train_config(ctx, run, peak)
        ctx.results["train"] = out  # partial results survive a failure later on
    return out


def print_train(res: dict) -> None:
    for scale, configs in res["scales"].items():
        header = ["config", "batch", "user/item params", "build batch/s", "train samp/s", "ms/step", "epoch s",
                  "build/train x", "val s", "test s", "test scores/s"]  # fmt: skip
        rows = []
        for name, r in configs.items():
            bc, p, t = r["batch_construction"], r["params"], r["train"]
            build = bc["pass_batches_per_s"] if t["basis"] == "epoch" else bc["batches_per_s"]
            rows.append([f"{name}: {r['label']}", r["batch_size"], f"{p['user_tower']:,} / {p['item_tower']:,}",
                         fmt(build, ",.1f"), fmt(t["reported_samples_per_s"]), fmt(1000 * t["reported_step_s"], ",.2f"),
                         fmt(t["epoch_seconds"], ".3f"), fmt(r["build_over_train"], ".1f"),
                         fmt(r.get("val", {}).get("seconds"), ".3f"), fmt(r.get("test", {}).get("seconds"), ".3f"),
                         fmt(r.get("test", {}).get("scores_per_s"))])  # fmt: skip
        first = next(iter(configs.values()))
        basis = ("whole epochs (epoch start to end)" if first["train"]["basis"] == "epoch" else
                 f"steady state (step start to step start; epochs of {first['batches_per_epoch']} batches, whose "
                 "per-epoch permutation of all examples is left out)")  # fmt: skip
        print(table(f"train [{scale}]: Trainer.fit; {first['num_users']:,} users x {first['num_items']:,} items; "
                    f"{first['batches_per_epoch']} batches per epoch; rates over {basis}; build/train = batch construction "
                    f"rate / training's batch rate (target >= 10)", header, rows))  # fmt: skip
    rows = [[scale, name, fmt(1000 * r["train"]["steady_step_s"], ",.2f"), fmt(1000 * r["command"]["steady_step_s"], ",.2f"),
             fmt(r["command"]["steady_samples_per_s"]), fmt(r["command"]["over_fit"], ".2f")]
            for scale, configs in res["scales"].items() for name, r in configs.items() if "command" in r]  # fmt: skip
    if rows:
        print(table("train --command: the real command (twotower.training.train: callbacks, CSV logger, checkpoints, progress "
                    "bar, validation every epoch) against the bare Trainer.fit above; steady state, ms per step",
                    ["scale", "config", "Trainer.fit", "command", "command samp/s", "command / fit"], rows, left=2))  # fmt: skip
    peak = res["mm_peak"]
    rows = []
    for scale, configs in res["scales"].items():
        for name, r in configs.items():
            c, fl = r["compute"], r["compute"]["flops_per_sample"]
            rows.append([scale, name, fl["dim"], fmt(fl["negative_columns"], ",.0f"),
                         fmt(r["batch_construction"]["mean_unique_sampled_items"], ",.0f"), fmt(fl["forward"] / 1e3, ",.1f"),
                         fmt(fl["forward_backward"] / 1e3, ",.1f"), fmt(c["achieved_gflops"], ",.2f"),
                         fmt(100 * c["fraction_of_mm_peak"], ".2f")])  # fmt: skip
    print(table(f"train: matmul FLOPs per sample (fwd+bwd ~ 3 x fwd: towers' MLPs + 2D per scored column) against "
                f"torch.mm peak {peak['best_gflops']:.1f} GFLOP/s ({peak['n']}^2 fp32, best of runs)",
                ["scale", "config", "D", "neg cols C", "uniq sampled/batch", "fwd kFLOP/samp", "fwd+bwd kFLOP/samp",
                 "achieved GFLOP/s", "% of peak"], rows, left=2))  # fmt: skip
    ml = res["scales"].get("ml100k", {}).get("in_batch")
    if ml:
        lines = ["\n== train: the two-tower listwise in-batch ML-100K configuration"]
        for side in ("user_tower", "item_tower"):
            t = ml["towers"][side]
            mlp = " -> ".join([str(t["mlp"][0][0])] + [str(o) for _, o in t["mlp"]]) if t["mlp"] else "none"
            lines.append(f"{side}: inputs {', '.join(t['inputs'])}; MLP {mlp}; {t['params']:,} params "
                         f"({t['embedding_params']:,} in embeddings, {t['mlp_params']:,} in the MLP); "
                         f"{t['forward_mlp_flops_per_vector']:,} forward MLP FLOPs per vector")  # fmt: skip
        fl, c = ml["compute"]["flops_per_sample"], ml["compute"]
        lines.append(f"per sample at batch {ml['batch_size']}: forward {fl['forward']:,.0f} FLOPs (user MLP {fl['user_mlp']:,}, "
                     f"item MLP {fl['item_mlp']:,}, {ml['batch_size']} + 1 logits x 2D = {fl['scoring']:,.0f}); fwd+bwd "
                     f"~{fl['forward_backward']:,.0f}; at {ml['train']['reported_samples_per_s']:,.0f} samples/s = "
                     f"{c['achieved_gflops']:.2f} GFLOP/s = {100 * c['fraction_of_mm_peak']:.2f}% of the measured fp32 "
                     f"matmul peak ({c['mm_peak_gflops']:.1f} GFLOP/s)")  # fmt: skip
        print("\n".join(lines))
