"""Item index benchmark: build time, query time, QPS and recall@K against exact search
for the exact / HNSW / IVF-PQ kinds of ``twotower.index.ItemIndex``.

    .venv/bin/python scripts/bench_index.py --out bench-index.json            # 1,682 and 1,000,000 items; minutes
    .venv/bin/python scripts/bench_index.py --quick --out /tmp/bench-index.json  # 1,682 and 50,000 items; seconds

Catalogues: (a) 1,682 items (the ML-100K catalogue size) and (b) 1,000,000
items, both ``--dim`` (64) dimensional synthetic vectors from a Gaussian
mixture (``--clusters`` centres drawn from N(0, I), per-dimension noise
``--noise``), normalized, so scores are cosines as with the normalized
two-tower model. Learned embeddings are clustered, not isotropic, and ANN
recall depends heavily on that (docs/stack-notes: HNSW recall@100 0.28 on
isotropic vectors, 0.96 on clustered ones): measure on real item vectors
before choosing parameters. ``--queries`` (1,000) queries come from the same
mixture.

Parameters are ``twotower.index.KINDS``'s defaults. IVF-PQ needs at least
``39 * max(nlist, 2**nbits)`` training points; for a catalogue smaller than
that, nlist and nbits are scaled down (nlist <= N / 39, about 4*sqrt(N);
nbits <= log2(N / 39)) and the table says so.

Per kind: ``build_s`` (train + add), ``query_s`` for all queries at
``--k`` (100) in one ``search`` call, QPS, recall@K against the exact FAISS
index (mean over queries of |ANN top-K ∩ exact top-K| / K). The exact FAISS
result is itself checked against ``exact_topk`` (the torch brute-force
reference, also timed). Extra rows vary the search-time knob only
(``ef_search``, ``nprobe``) on the same built index. Threads: ``--threads``
(default 1, for FAISS and torch; the machine is shared). Times are single
runs (wall clock). Prints a table, writes the figures as JSON to ``--out``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import platform
import sys
import time
from pathlib import Path

import faiss
import numpy as np
import torch

from twotower.index import KINDS, MIN_POINTS_PER_CENTROID, ItemIndex, exact_topk, ivfpq_min_points, recall_against

SWEEP = {"hnsw": ("ef_search", (64, 256)), "ivfpq": ("nprobe", (8, 128))}


def gaussian_mixture(n: int, dim: int, centers: np.ndarray, noise: float, rng: np.random.Generator, chunk: int = 1 << 17) -> np.ndarray:
    """``n`` normalized float32 points around ``centers`` (chunked: bounded temporaries)."""
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        x = centers[rng.integers(0, len(centers), stop - start)]
        x += noise * rng.standard_normal((stop - start, dim), dtype=np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        out[start:stop] = x
    return out


def kind_configs(num_items: int) -> list[tuple[dict, str]]:
    """Each kind with its default parameters, IVF-PQ scaled down when the catalogue is too small to train it."""
    configs = []
    for kind in ("exact", "hnsw", "ivfpq"):
        config = {"kind": kind, **KINDS[kind]}
        note = ""
        if kind == "ivfpq" and num_items < ivfpq_min_points(config["nlist"], config["nbits"]):
            max_nlist = num_items // MIN_POINTS_PER_CENTROID
            nlist = max(1, min(config["nlist"], max_nlist, int(4 * math.sqrt(num_items))))
            nbits = max(1, min(config["nbits"], int(math.floor(math.log2(max(2, max_nlist))))))
            note = f"scaled from nlist={config['nlist']}, nbits={config['nbits']} (N too small)"
            config = {**config, "nlist": nlist, "nbits": nbits, "nprobe": min(config["nprobe"], nlist)}
        configs.append((config, note))
    return configs


def bench_catalogue(name: str, num_items: int, args: argparse.Namespace, rng: np.random.Generator) -> list[dict]:
    centers = rng.standard_normal((args.clusters, args.dim), dtype=np.float32)
    t0 = time.perf_counter()
    items = gaussian_mixture(num_items, args.dim, centers, args.noise, rng)
    queries = gaussian_mixture(args.queries, args.dim, centers, args.noise, rng)
    ids = np.arange(num_items, dtype=np.int64)
    print(f"\n[{name}] {num_items:,} items x {args.dim}, {args.queries:,} queries, k={args.k} (vectors in {time.perf_counter() - t0:.1f}s)", flush=True)
    k = min(args.k, num_items)
    rows: list[dict] = []

    start = time.perf_counter()
    _, torch_pos = exact_topk(queries, items, k)
    torch_s = time.perf_counter() - start

    truth = None
    for config, note in kind_configs(num_items):
        kind = config["kind"]
        start = time.perf_counter()
        index = ItemIndex(items, ids, config)
        build_s = time.perf_counter() - start
        size_mb = faiss.serialize_index(index.index).nbytes / 2**20
        settings = [None]
        if kind in SWEEP:
            knob, values = SWEEP[kind]
            settings += [{knob: v} for v in values]
        for setting in settings:
            if setting:
                index.set_search_params(**setting)
            start = time.perf_counter()
            _, _, positions = index.search(queries, k)
            query_s = time.perf_counter() - start
            if kind == "exact":
                truth = positions
            params = {key: value for key, value in index.params.items()}
            row = {
                "catalogue": name,
                "items": num_items,
                "dim": args.dim,
                "kind": kind,
                "params": params,
                "variant": "search-time " + ", ".join(f"{a}={b}" for a, b in setting.items()) if setting else "config",
                "note": note,
                "build_s": build_s if not setting else None,
                "index_mb": size_mb,
                "query_s": query_s,
                "qps": args.queries / query_s,
                f"recall@{k}": recall_against(positions, truth),
            }
            rows.append(row)
            print(format_row(row, k), flush=True)
        del index

    rows.append(
        {
            "catalogue": name,
            "items": num_items,
            "dim": args.dim,
            "kind": "torch exact_topk",
            "params": {"chunk_size": 256},
            "variant": "reference",
            "note": "recall of FAISS exact against it",
            "build_s": 0.0,
            "index_mb": items.nbytes / 2**20,
            "query_s": torch_s,
            "qps": args.queries / torch_s,
            f"recall@{k}": recall_against(truth, torch_pos),
        }
    )
    print(format_row(rows[-1], k), flush=True)
    return rows


HEADER = f"{'catalogue':<10} {'items':>9} {'kind':<16} {'params':<38} {'build s':>8} {'MB':>7} {'query s':>8} {'QPS':>9} {'recall':>7}"


def format_row(row: dict, k: int) -> str:
    params = ",".join(f"{a}={b}" for a, b in row["params"].items()) or "-"
    if row["variant"].startswith("search-time"):
        params = "  " + row["variant"].removeprefix("search-time ")
    build = f"{row['build_s']:.2f}" if row["build_s"] is not None else "(same)"
    return (
        f"{row['catalogue']:<10} {row['items']:>9,} {row['kind']:<16} {params:<38} {build:>8} {row['index_mb']:>7.1f} "
        f"{row['query_s']:>8.3f} {row['qps']:>9,.0f} {row[f'recall@{k}']:>7.3f}"
        + (f"  ({row['note']})" if row["note"] and not row["variant"].startswith("search-time") else "")
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench-index.json", help="where the JSON figures go")
    parser.add_argument("--quick", action="store_true", help="small sizes (1,682 and 50,000 items, 200 queries)")
    parser.add_argument("--sizes", type=int, nargs="+", default=None, help="catalogue sizes (default 1682 1000000)")
    parser.add_argument("--queries", type=int, default=None, help="queries (default 1000; 200 with --quick)")
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--clusters", type=int, default=1000, help="Gaussian mixture components")
    parser.add_argument("--noise", type=float, default=0.5, help="per-dimension noise around each centre (centres ~ N(0, I))")
    parser.add_argument("--threads", type=int, default=1, help="FAISS and torch threads")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.sizes is None:
        args.sizes = [1682, 50_000] if args.quick else [1682, 1_000_000]
    if args.queries is None:
        args.queries = 200 if args.quick else 1000
    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)

    print(f"faiss {faiss.__version__}, torch {torch.__version__}, {args.threads} thread(s), {platform.processor() or platform.machine()}")
    rows = []
    for size in args.sizes:
        name = "ml100k" if size == 1682 else f"synth{size // 1000}k" if size < 1_000_000 else f"synth{size // 1_000_000}M"
        rows += bench_catalogue(name, size, args, rng)

    k = args.k
    print(f"\nrecall@{k} against exact FAISS search; QPS: {args.queries} queries in one search call, {args.threads} thread(s)")
    print(HEADER)
    for row in rows:
        print(format_row(row, min(k, row["items"])))
    payload = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "platform": platform.platform(),
        "faiss": faiss.__version__,
        "torch": torch.__version__,
        "args": vars(args),
        "results": rows,
    }
    Path(args.out).write_text(json.dumps(payload, indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
