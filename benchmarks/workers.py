"""Workers: the benchmark (``python -m benchmarks``) re-invoked in a fresh process (``--worker KIND``), for measurements
that a process's own history would skew (peak memory, thread settings).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from benchmarks.common import BenchmarkError, Context, PeakMemory, epoch_timer, make_run, make_trainer, quiet, rss_mb, summarize_epochs


PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # where `-m benchmarks` is found


def child_env(ctx: Context) -> dict:
    env = dict(os.environ, WANDB_MODE="disabled")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [PACKAGE_ROOT, os.environ.get("PYTHONPATH")]))
    if ctx.args.threads:
        env["OMP_NUM_THREADS"] = str(ctx.args.threads)
    return env


def run_worker(ctx: Context, kind: str, params: dict, label: str) -> dict:
    """Run ``kind`` in a fresh process; returns its result and its wall time."""
    args_path = tempfile.mktemp(suffix=".json", dir=ctx.out_dir)
    out_path = tempfile.mktemp(suffix=".json", dir=ctx.out_dir)
    with open(args_path, "w") as f:
        json.dump(params, f)
    cmd = [sys.executable, "-m", "benchmarks", "--worker", kind, "--worker-args", args_path, "--worker-out", out_path]
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=child_env(ctx))
    wall = time.perf_counter() - start
    if proc.returncode != 0 or not os.path.exists(out_path):
        raise BenchmarkError(f"{label}: the worker process ({kind}) failed with exit status {proc.returncode} (see its output above)")
    with open(out_path) as f:
        res = json.load(f)
    res.update(lifetime_peak_mb=res["memory"]["process_peak_mb"], process_wall_s=wall)
    return res


def worker_vectors(p: dict) -> dict:
    """Synthetic vectors, then one ranking method over the first ``users`` users."""
    import faiss
    import numpy as np
    import torch

    from twotower.models.scoring import dot_matrix
    from twotower.topk import build_faiss_index, faiss_top_k, rank_and_match, torch_top_k

    faiss.omp_set_num_threads(p["threads"])
    default_blas_threshold = faiss.cvar.distance_compute_blas_threshold
    method, blas = p["method"].removesuffix("_blas"), p["method"].endswith("_blas")
    if blas:
        faiss.cvar.distance_compute_blas_threshold = 1  # every search through BLAS (sgemm, then heaps)
    rng = np.random.default_rng(p["seed"])
    n_items, n_users, dim, clusters = p["items"], p["total_users"], p["dim"], p["clusters"]
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)

    def mixture(cluster_of: np.ndarray) -> np.ndarray:
        out = np.empty((len(cluster_of), dim), dtype=np.float32)
        for s in range(0, len(out), 1 << 17):
            e = min(s + (1 << 17), len(out))
            x = centres[cluster_of[s:e]] + p["noise"] * rng.standard_normal((e - s, dim), dtype=np.float32)
            out[s:e] = x / np.linalg.norm(x, axis=1, keepdims=True)
        return out

    item_cluster = np.arange(n_items) % clusters  # cluster c holds items c, c + C, c + 2C, ...
    user_cluster = rng.integers(clusters, size=n_users)
    item_vecs = torch.from_numpy(mixture(item_cluster))
    user_vecs = torch.from_numpy(mixture(user_cluster))
    per_cluster = max(1, n_items // clusters)

    def pairs(counts: np.ndarray, in_cluster_share: float) -> tuple[torch.Tensor, torch.Tensor]:
        owner = np.repeat(np.arange(n_users), counts)
        local = user_cluster[owner] + clusters * rng.integers(per_cluster, size=len(owner))
        items = np.where(rng.random(len(owner)) < in_cluster_share, local, rng.integers(n_items, size=len(owner)))
        keys = np.unique(owner * n_items + items)  # deduplicated, sorted by user: CSR as EvalSet holds it
        ptr = np.concatenate([[0], np.cumsum(np.bincount(keys // n_items, minlength=n_users))])
        return torch.as_tensor(ptr, dtype=torch.long), torch.as_tensor(keys % n_items, dtype=torch.long)

    sigma = 0.8  # log-normal spread of seen items per user, mean seen_mean
    cap = max(1, min(n_items // 2, 20 * p["seen_mean"]))
    seen_counts = np.clip(np.rint(rng.lognormal(math.log(p["seen_mean"]) - sigma**2 / 2, sigma, n_users)), 1, cap).astype(np.int64)
    seen_ptr, seen_items = pairs(seen_counts, 0.5)  # half in the user's own cluster, half anywhere
    target_ptr, target_items = pairs(np.full(n_users, 10), 1.0)

    def csr_slice(ptr, values, start, stop):  # as twotower.data.datamodule._csr_slice
        lengths = ptr[start + 1 : stop + 1] - ptr[start:stop]
        return torch.repeat_interleave(torch.arange(stop - start), lengths), values[ptr[start] : ptr[stop]]

    users, k = p["users"], p["k"]
    chunk = p["faiss_chunk"] if method == "faiss_top_k" else p["chunk"]
    chunks = [(s, min(s + chunk, users)) for s in range(0, users, chunk)]
    rss_data = rss_mb()
    index = None

    def run_chunk(s, e):
        rows, seen = csr_slice(seen_ptr, seen_items, s, e)
        if method == "torch_top_k":
            torch_top_k(user_vecs[s:e], item_vecs, rows, seen, k)
        elif method == "rank_and_match":  # what RetrievalModule._eval_step runs for eval.backend=torch
            trows, titems = csr_slice(target_ptr, target_items, s, e)
            rank_and_match(dot_matrix(user_vecs[s:e], item_vecs), rows, seen, trows, titems, k)
        else:
            faiss_top_k(user_vecs[s:e], index, rows, seen, k, n_items)

    def one_pass() -> float:
        start, last = time.perf_counter(), time.perf_counter()
        if method == "faiss_raw":
            index.search(np.ascontiguousarray(user_vecs[:users].numpy()), k)
            return time.perf_counter() - start
        for i, (s, e) in enumerate(chunks):
            run_chunk(s, e)
            if time.perf_counter() - last > 30:
                last = time.perf_counter()
                print(f"    [{method}] {e:,}/{users:,} users, {last - start:.0f} s", flush=True)
        return time.perf_counter() - start

    build_s = None
    with PeakMemory() as mem:
        if method in ("faiss_top_k", "faiss_raw"):
            start = time.perf_counter()
            if method == "faiss_top_k":
                index = build_faiss_index(item_vecs)  # what RetrievalModule._start_eval does
            else:
                index = faiss.IndexFlatIP(dim)
                index.add(np.ascontiguousarray(item_vecs.numpy()))
            build_s = time.perf_counter() - start
        if method == "faiss_raw":  # warm-up
            index.search(np.ascontiguousarray(user_vecs[: min(16, users)].numpy()), k)
        else:
            run_chunk(*chunks[0])
        times = [one_pass() for _ in range(p["repeats"])]
    sec = statistics.median(times)
    how = {"torch_top_k": f"twotower.topk.torch_top_k per chunk of {chunk} users",
           "rank_and_match": f"score_matrix + twotower.topk.rank_and_match per chunk of {chunk} users (trainer.test, torch)",
           "faiss_top_k": f"build_faiss_index + twotower.topk.faiss_top_k per chunk of {chunk} users (trainer.test, faiss)",
           "faiss_raw": f"faiss.IndexFlatIP.search(all {users:,} users, {k}) in one call, no masking"}[method]  # fmt: skip
    how += (f"; distance_compute_blas_threshold {faiss.cvar.distance_compute_blas_threshold}" if blas else
            f"; FAISS defaults (distance_compute_blas_threshold {default_blas_threshold})" if "faiss" in method else "")  # fmt: skip
    return {"method": p["method"], "how": how, "faiss_blas_threshold": faiss.cvar.distance_compute_blas_threshold, "users": users, "items": n_items, "dim": dim, "k": k, "chunk": chunk,
            "seconds": sec, "seconds_all": times, "build_s": build_s, "scores_per_s": users * n_items / sec,
            "extrapolated_all_users_s": sec * n_users / users, "memory": mem.as_dict(), "rss_data_mb": rss_data,
            "seen_per_user_mean": float(len(seen_items)) / n_users, "seen_per_user_max": int(torch.diff(seen_ptr).max()),
            "torch_threads": torch.get_num_threads(), "faiss_threads": faiss.omp_get_max_threads()}  # fmt: skip


def load_fixed_data(ctx: Context, path: str) -> None:
    import pickle

    with open(path, "rb") as f:
        ctx.fixed_data = pickle.load(f)


def worker_train_memory(ctx: Context, p: dict) -> dict:
    load_fixed_data(ctx, p["data_file"])
    rss_data = rss_mb()
    with PeakMemory() as mem:
        cfg, dm, module = make_run(ctx, "ml100k", p["overrides"])  # "ml100k" adds no overrides: they come complete
        timer = epoch_timer()
        fit = make_trainer(ctx, cfg, max_epochs=2, limit_val_batches=0, callbacks=[timer], limit_train_batches=p["steps"])
        fit.fit(module, datamodule=dm)
    return {"rss_data_mb": rss_data, "memory": mem.as_dict(), "steps": 2 * p["steps"], "batch_size": dm.batch_size,
            "last_epoch": summarize_epochs(timer.epochs[-1:]),
            "what": f"DataModule set-up, model, Trainer.fit 2 x {p['steps']} steps, batch {dm.batch_size}"}  # fmt: skip


def worker_eval_memory(ctx: Context, p: dict) -> dict:
    load_fixed_data(ctx, p["data_file"])
    rss_data = rss_mb()
    with PeakMemory() as mem:
        cfg, dm, module = make_run(ctx, "ml100k", p["overrides"])
        from twotower.data.datamodule import EvalBatches

        loader = EvalBatches(dm, "test")
        chunks = len(loader) if p["chunks"] is None else min(p["chunks"], len(loader))
        users = min(len(dm.data.eval_sets["test"].users), chunks * loader.chunk)
        ev = make_trainer(ctx, cfg, limit_test_batches=chunks)
        start = time.perf_counter()
        ev.test(module, datamodule=dm, verbose=False)
        sec = time.perf_counter() - start
    return {"rss_data_mb": rss_data, "memory": mem.as_dict(), "users": users, "chunk_users": loader.chunk,
            "items": dm.data.num_items, "seconds": sec, "backend": module.eval_backend,
            "what": f"trainer.test ({module.eval_backend}), {users:,} of {len(dm.data.eval_sets['test'].users):,} test "
                    f"users x {dm.data.num_items:,} items (chunks of {loader.chunk}), untrained model"}  # fmt: skip


def worker_main(args: argparse.Namespace) -> None:
    with open(args.worker_args) as f:
        params = json.load(f)
    quiet()
    import torch

    if params.get("threads"):
        torch.set_num_threads(params["threads"])
    torch.set_float32_matmul_precision("high")
    out_dir = tempfile.mkdtemp(prefix="bench_worker_")
    try:
        ctx = Context(args, out_dir)
        if args.worker == "vectors":
            res = worker_vectors(params)
        elif args.worker == "train_memory":
            res = worker_train_memory(ctx, params)
        elif args.worker == "eval_memory":
            res = worker_eval_memory(ctx, params)
        else:
            raise BenchmarkError(f"unknown worker {args.worker!r}")
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)
    with open(args.worker_out, "w") as f:
        json.dump(res, f)
