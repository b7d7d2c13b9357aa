"""Section ``loop``: time per step of Lightning against a hand-written loop over the same
towers, loss, optimizer and batches.
"""

from __future__ import annotations

import itertools

from benchmarks.common import BenchmarkError, CONFIGS, Context, EpochRecord, Prebuilt, epoch_batches, epoch_timer, fmt, fresh_copy, make_run, make_trainer, median, progress, summarize_epochs, table


def hand_loss(model, loss_fn, batch):
    """One batch's loss without Lightning: the module's own scoring, ScoredBatch, loss."""
    from twotower.losses import ScoredBatch
    from twotower.models.scoring import score_batch

    if batch.hardest is not None or batch.stream_items is not None or batch.cross_device:
        raise BenchmarkError("the hand-written loop covers neither online_hardest, logq=streaming nor DDP")
    pos, neg, walk = score_batch(model, batch)
    scored = ScoredBatch(pos=pos, neg=neg, neg_valid=batch.valid, pos_logq=batch.pos_logq, neg_logq=batch.neg_logq,
                         rating=batch.rating, pos_column=batch.pos_column, weight=batch.weight,
                         walk=walk, walk_logq=batch.walk_logq, walk_same=batch.walk_same)  # fmt: skip
    return loss_fn(scored)


def hand_epochs(model, loss_fn, optimizer, batches, steps: int, epochs: int) -> list[EpochRecord]:
    """``1 + epochs`` epochs of at most ``steps`` batches (a fresh iterator each, as Lightning
    does); returns the records of the timed epochs (the first is a warm-up)."""
    model.train()
    out = []
    for _ in range(1 + epochs):
        record = EpochRecord()
        for batch in itertools.islice(iter(batches), steps):
            record.step(len(batch))
            optimizer.zero_grad(set_to_none=True)
            loss = hand_loss(model, loss_fn, batch)
            loss.backward()
            optimizer.step()
        record.end()
        out.append(record)
    return out[1:]


def bench_loop_config(ctx: Context, scale: str, name: str) -> dict:
    import torch

    args = ctx.args
    label, overrides = CONFIGS[name]
    cfg, dm, template = make_run(ctx, scale, overrides)
    opt_cfg = cfg.model.optimizer
    steps = epoch_batches(ctx, scale) or len(dm.train_dataloader())
    prebuilt = Prebuilt(list(itertools.islice(iter(dm.train_dataloader()), steps)))
    # The same loss for the same batch and weights (same random stream for the losses that draw).
    check = fresh_copy(template)
    torch.manual_seed(0)
    platform_loss = check.batch_loss(prebuilt.batches[0]).item()
    torch.manual_seed(0)
    written_loss = hand_loss(check.model, check.loss, prebuilt.batches[0]).item()
    res = {"label": label, "overrides": overrides, "steps_per_epoch": steps, "timed_epochs": args.epochs, "repeats": args.repeats,
           "batch_size": dm.batch_size, "lr": float(opt_cfg.lr),
           "loss_check": {"platform": platform_loss, "hand_written": written_loss,
                          "abs_diff": abs(platform_loss - written_loss)}}  # fmt: skip
    times = {"lightning_a": [], "hand_a": [], "lightning_b": [], "hand_b": []}
    for rep in range(args.repeats):
        progress(f"  loop {scale} {name}: repeat {rep + 1}/{args.repeats} (4 runs of {1 + args.epochs} x {steps} steps)")
        for variant in ("a", "b"):
            module = fresh_copy(template)
            timer = epoch_timer()
            fit = make_trainer(ctx, cfg, max_epochs=1 + args.epochs, limit_val_batches=0, callbacks=[timer],
                               limit_train_batches=steps)  # fmt: skip
            if variant == "a":
                fit.fit(module, datamodule=dm)
            else:
                fit.fit(module, train_dataloaders=prebuilt)
            times[f"lightning_{variant}"].append(summarize_epochs(timer.epochs[1:]))
            module = fresh_copy(template)
            # The config's own optimizer (class and every setting), so only the loop differs.
            optimizer = module.optimizer_factory(params=module.model.parameters())
            source = dm.train_dataloader() if variant == "a" else prebuilt
            times[f"hand_{variant}"].append(summarize_epochs(hand_epochs(module.model, module.loss, optimizer, source, steps, args.epochs)))
    for key, runs in times.items():
        res[f"{key}_step_ms"] = 1000 * median(r["steady_step_s"] for r in runs)
        res[f"{key}_epoch_step_ms"] = 1000 * median(r["step_s"] for r in runs)
        res[f"{key}_runs"] = runs
    for v in ("a", "b"):
        res[f"ratio_{v}"] = res[f"lightning_{v}_step_ms"] / res[f"hand_{v}_step_ms"]
        res[f"ratio_{v}_epoch"] = res[f"lightning_{v}_epoch_step_ms"] / res[f"hand_{v}_epoch_step_ms"]
    progress(f"  loop {scale} {name}: Lightning / hand-written = {res['ratio_a']:.2f} (with batch construction), "
             f"{res['ratio_b']:.2f} (pre-built batches)")  # fmt: skip
    return res


def section_loop(ctx: Context) -> dict:
    out = {}
    for scale in ctx.args.scale:
        out[scale] = {}
        for name in ctx.args.loop_configs:
            out[scale][name] = bench_loop_config(ctx, scale, name)
            ctx.results["loop"] = out
    return out


def print_loop(res: dict) -> None:
    rows = []
    for scale, configs in res.items():
        for name, r in configs.items():
            rows.append([scale, name, r["batch_size"], r["steps_per_epoch"], fmt(r["lightning_a_step_ms"], ".3f"),
                         fmt(r["hand_a_step_ms"], ".3f"), fmt(r["ratio_a"], ".2f"), fmt(r["ratio_a_epoch"], ".2f"),
                         fmt(r["lightning_b_step_ms"], ".3f"), fmt(r["hand_b_step_ms"], ".3f"), fmt(r["ratio_b"], ".2f"),
                         fmt(r["ratio_b_epoch"], ".2f"), fmt(r["loss_check"]["abs_diff"], ".1e")])  # fmt: skip
    print(table("loop: ms per training step, Lightning vs hand-written (same towers, loss object, batches, Adam, lr), "
                "steady state (step start to step start); (a) both build their batches (dm.train_dataloader()), (b) both "
                "iterate the same pre-built batches; ratio = Lightning / hand (target <= 1.25); 'epoch' ratios: whole "
                "epochs, per-epoch work (iterator set-up, epoch hooks) included",
                ["scale", "config", "batch", "steps/epoch", "(a) L ms", "(a) hand ms", "(a) ratio", "(a) epoch", "(b) L ms",
                 "(b) hand ms", "(b) ratio", "(b) epoch", "|loss diff|"], rows, left=2))  # fmt: skip
