"""Section ``eval``: exact full-ranking evaluation, the platform's own ``trainer.test`` and the
ranking methods on synthetic vectors (in worker processes).
"""

from __future__ import annotations

import statistics
import time

from benchmarks.common import COMMON, Context, RAW_FAISS, fmt, fresh_copy, make_run, make_trainer, progress, table
from benchmarks.workers import run_worker


def eval_vector_params(ctx: Context) -> dict:
    """Settings of the synthetic ranking benchmark; user chunks as ``EvalBatches`` makes them
    for the synthetic data's ``eval_batch_size``: bounded to ``MAX_EVAL_SCORES`` scores for the
    torch backend, and as ``train()`` sets them up for the faiss backend."""
    from types import SimpleNamespace

    from twotower.config import compose_config
    from twotower.data.datamodule import MAX_EVAL_SCORES, EvalBatches

    a = ctx.args
    eval_batch_size = int(compose_config(COMMON + ["data=synthetic"]).data.eval_batch_size)

    def chunk(max_eval_scores):
        fake = SimpleNamespace(eval_batch_size=eval_batch_size, max_eval_scores=max_eval_scores,
                               data=SimpleNamespace(num_items=a.eval_items))  # fmt: skip
        return EvalBatches(fake, "test").chunk

    torch_chunk = chunk(MAX_EVAL_SCORES)
    # train() lifts the bound for FAISS (dm.max_eval_scores = None) where it has that attribute.
    import twotower.topk

    faiss_chunk = chunk(None) if hasattr(twotower.topk, "choose_backend") else torch_chunk
    return {"items": a.eval_items, "total_users": a.eval_total_users, "users": a.eval_users, "dim": a.eval_dim,
            "seen_mean": a.eval_seen, "k": a.eval_k, "chunk": torch_chunk, "faiss_chunk": faiss_chunk,
            "eval_batch_size": eval_batch_size, "max_eval_scores": MAX_EVAL_SCORES,
            "clusters": max(1, min(1000, a.eval_items // 1000)), "noise": 0.1, "seed": 0, "repeats": a.repeats,
            "threads": a.threads_effective}  # fmt: skip


def timed_evaluations(ctx: Context, cfg, dm, template, stage: str) -> list[float]:
    """Seconds of ``trainer.<stage>`` (``test`` or ``validate``) on fresh copies of ``template``,
    one per repeat after a warm-up."""
    times = []
    for rep in range(1 + ctx.args.repeats):  # the first is a warm-up
        module = fresh_copy(template)
        ev = make_trainer(ctx, cfg)
        start = time.perf_counter()
        getattr(ev, stage)(module, datamodule=dm, verbose=False)
        if rep:
            times.append(time.perf_counter() - start)
    return times


def bench_platform_test(ctx: Context, scale: str, backend: str) -> dict:
    cfg, dm, template = make_run(ctx, scale, [f"eval.backend={backend}"])
    users = len(dm.data.eval_sets["test"].users)
    times = timed_evaluations(ctx, cfg, dm, template, "test")
    sec = statistics.median(times)
    return {"backend": backend, "users": users, "items": dm.data.num_items, "seconds": sec,
            "scores_per_s": users * dm.data.num_items / sec, "seconds_all": times}  # fmt: skip


def bench_platform_validate(ctx: Context, scale: str, overrides: list[str]) -> dict:
    """``trainer.validate`` of an untrained module: with the default popularity prior, every
    candidate weight ranks the validation users (the weight search); without, one ranking."""
    cfg, dm, template = make_run(ctx, scale, overrides)
    search = template.weight_search
    times = timed_evaluations(ctx, cfg, dm, template, "validate")
    return {"users": len(dm.data.eval_sets["val"].users), "items": dm.data.num_items,
            "rankings": len(search.candidates) if search is not None else 1,
            "seconds": statistics.median(times), "seconds_all": times}  # fmt: skip


def section_eval(ctx: Context) -> dict:
    out = {}
    if "ml100k" in ctx.args.scale:
        out["ml100k"] = {}
        for backend in ("torch", "faiss"):
            progress(f"  eval ml100k: trainer.test, eval.backend={backend}")
            out["ml100k"][backend] = bench_platform_test(ctx, "ml100k", backend)
        out["ml100k_validate"] = {}
        for label, overrides in (("prior weights searched (default)", []), ("no prior", ["model.popularity_prior=null"])):
            progress(f"  eval ml100k: trainer.validate, {label}")
            out["ml100k_validate"][label] = bench_platform_validate(ctx, "ml100k", overrides)
        ctx.results["eval"] = out
    if "synthetic" in ctx.args.scale:
        params = eval_vector_params(ctx)
        out["synthetic"] = {"settings": params, "methods": {}}
        for method in ctx.args.eval_methods:
            progress(f"  eval synthetic vectors: {method} over {params['users']:,} of {params['total_users']:,} users x "
                     f"{params['items']:,} items (fresh process)")  # fmt: skip
            res = run_worker(ctx, "vectors", {**params, "method": method}, f"eval {method}")
            out["synthetic"]["methods"][method] = res
            progress(f"  eval {method}: {res['seconds']:.2f} s, {res['scores_per_s']:,.0f} scores/s, "
                     f"peak extra {fmt(res['memory']['peak_extra_mb'], ',.0f')} MB")  # fmt: skip
            ctx.results["eval"] = out
        methods = out["synthetic"]["methods"]
        for raw in RAW_FAISS:
            if raw in methods:
                for r in methods.values():
                    r[f"ratio_to_{raw}"] = r["scores_per_s"] / methods[raw]["scores_per_s"]
    return out


def print_eval(res: dict) -> None:
    if "ml100k" in res:
        rows = [[b, r["users"], r["items"], fmt(r["seconds"], ".4f"), fmt(r["scores_per_s"])] for b, r in res["ml100k"].items()]
        print(table("eval [ml100k]: trainer.test (full ranking of the catalogue, masking, top 100, all metrics), untrained "
                    "default two-tower model", ["eval.backend", "users", "items", "wall s", "scores/s"], rows))  # fmt: skip
    if "ml100k_validate" in res:
        rows = [[label, r["users"], r["items"], r["rankings"], fmt(r["seconds"], ".4f")] for label, r in res["ml100k_validate"].items()]
        print(table("eval [ml100k]: trainer.validate, untrained default two-tower model: the popularity prior's weight "
                    "search ranks the validation users once per candidate weight", ["popularity prior", "users", "items",
                    "rankings", "wall s"], rows))  # fmt: skip
    if "synthetic" in res:
        s = res["synthetic"]["settings"]
        rows = []
        for m, r in res["synthetic"]["methods"].items():
            mem = r["memory"]
            rows.append([m, f"{r['users']:,}", fmt(r.get("build_s"), ".2f"), fmt(r["seconds"], ".2f"),
                         fmt(r["scores_per_s"]), fmt(r.get("ratio_to_faiss_raw"), ".2f"), fmt(r.get("ratio_to_faiss_raw_blas"), ".2f"),
                         fmt(r["extrapolated_all_users_s"], ",.0f"),
                         fmt(mem["peak_extra_mb"], ",.0f"), fmt(r["rss_data_mb"], ",.0f")])  # fmt: skip
        print(table(f"eval [synthetic vectors]: {s['total_users']:,} users x {s['items']:,} items x {s['dim']} dims "
                    f"({s['clusters']} clusters), mean {s['seen_mean']} seen items per user, top {s['k']}; timed over "
                    f"{s['users']:,} users; chunks of {s['chunk']} users (torch: MAX_EVAL_SCORES // items), {s['faiss_chunk']} (faiss); ratios = scores/s / "
                    f"raw FAISS scores/s, FAISS defaults / BLAS path forced (target >= 0.7); {s['threads']} threads",
                    ["method", "users", "build s", "search s", "scores/s", "/ raw", "/ raw_blas", f"s for {s['total_users']:,} (extrap.)",
                     "peak extra MB", "RSS data MB"], rows))  # fmt: skip
        for m, r in res["synthetic"]["methods"].items():
            print(f"  {m}: {r['how']}")
