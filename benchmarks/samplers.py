"""Section ``samplers``: each negative sampler with the batch's negative columns laid out, over
real batches.
"""

from __future__ import annotations

import time

from benchmarks.common import COMMON, Context, epoch_batches, fmt, make_run, median, progress, table


def section_samplers(ctx: Context) -> dict:
    import torch

    from twotower.config import build, compose_config
    from twotower.data.batches import build_layout
    from twotower.samplers import TrainingStats

    args = ctx.args
    out = {}
    for scale in args.scale:
        cfg, dm, _ = make_run(ctx, scale, [], with_module=False)
        data, train, ex = dm.data, dm.data.splits["train"], dm.train_examples
        stats = TrainingStats(data.item_counts, train.user, train.item, train.rating, data.num_users)
        generator = torch.Generator().manual_seed(0)
        order = torch.randperm(len(ex.user), generator=generator)
        limit = epoch_batches(ctx, scale) if scale == "ml100k" else args.sampler_batches
        num_batches = min(limit or len(order) // dm.batch_size, max(1, len(order) // dm.batch_size))
        batches = [(ex.user[order[i * dm.batch_size : (i + 1) * dm.batch_size]], ex.item[order[i * dm.batch_size : (i + 1) * dm.batch_size]])
                   for i in range(num_batches)]  # fmt: skip
        out[scale] = {}
        for name in args.samplers:
            scfg = compose_config(COMMON + ctx.scale_overrides(scale) + [f"sampler={name}"], output_dir=ctx.out_dir)
            sampler = build(scfg.sampler)(stats)
            note = None
            if name == "hard":
                sampler.epoch = sampler.warmup_epochs  # past the warm-up: hard negatives are drawn
                sampler.update(torch.randint(data.num_items, (data.num_users, sampler.window), generator=generator))
                note = f"random mined window of {sampler.window} items per user (ranks {sampler.lo}-{sampler.hi})"
            if name == "exposed_unclicked" and cfg.data.positive_threshold is None:
                note = ("every interaction is a positive in this data (positive_threshold null): the platform refuses this "
                        "sampler here; timed mechanically")  # fmt: skip

            def one_pass(batch_list):
                sample_s, cells, drawn = 0.0, 0, 0
                start = time.perf_counter()
                for users, items in batch_list:
                    t = time.perf_counter()
                    negatives = sampler.sample(users, items, generator)
                    sample_s += time.perf_counter() - t
                    layout = build_layout(users, items, negatives, data.is_train_positive)
                    cells += 0 if layout.valid is None else layout.valid.numel()
                    drawn += 0 if negatives.items is None else negatives.items.numel()
                return time.perf_counter() - start, sample_s, cells, drawn

            one_pass(batches[: min(5, len(batches))])  # warm-up
            runs = [one_pass(batches) for _ in range(args.repeats)]
            sec = median(r[0] for r in runs)
            cells, drawn = runs[0][2], runs[0][3]
            out[scale][name] = {"batches": len(batches), "batch_size": dm.batch_size, "seconds": sec,
                                "sample_seconds": median(r[1] for r in runs), "batches_per_s": len(batches) / sec,
                                "negatives_per_s": cells / sec, "negative_cells_per_batch": cells / len(batches),
                                "sampled_ids_per_s": drawn / sec, "note": note,
                                "config": {k: v for k, v in dict(scfg.sampler).items() if k not in ("_target_", "_partial_")}}  # fmt: skip
            progress(f"  samplers {scale} {name}: {cells / sec:,.0f} negatives/s, {len(batches) / sec:,.1f} batches/s")
            ctx.results["samplers"] = out
    return out


def print_samplers(res: dict) -> None:
    rows = []
    for scale, samplers in res.items():
        for name, r in samplers.items():
            rows.append([scale, name, r["batch_size"], r["batches"], fmt(r["negative_cells_per_batch"] / r["batch_size"], ",.0f"),
                         fmt(r["batches_per_s"], ",.1f"), fmt(r["negatives_per_s"]), fmt(r["sampled_ids_per_s"]),
                         fmt(100 * r["sample_seconds"] / r["seconds"], ".0f"), r["note"] or ""])  # fmt: skip
    print(table("samplers: sampler.sample + build_layout over real batches; negatives/s = [B, C] candidate cells given "
                "to the loss per second; sampled ids/s = ids the sampler drew",
                ["scale", "sampler", "batch", "batches", "C", "batches/s", "negatives/s", "sampled ids/s", "% in sample",
                 "note"], rows, left=2, last_left=True))  # fmt: skip
