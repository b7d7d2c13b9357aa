"""What the checkpoints' SHA-256 records cost: sealing (at every checkpoint write) and
verifying (at every load) against ``torch.save`` of the same checkpoint to memory.

    .venv/bin/python scripts/bench_integrity.py                 # ML-100K-sized and 1M-item tables
    .venv/bin/python scripts/bench_integrity.py --items 50000   # one size, seconds

The checkpoint holds what a two-tower run with Adam saves: an ``[items, dim]`` item table, an
``[items / 2, dim]`` user table and Adam's two moments of each (three times the tables' bytes).
Times are the best of ``--repeats`` (3) runs, one thread. Prints a markdown table for
docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import io
import time

import torch

from twotower.integrity import checkpoint_mismatch, seal_checkpoint


def checkpoint(items: int, dim: int) -> dict:
    tables = {"model.item_tower.table.weight": torch.randn(items, dim), "model.user_tower.table.weight": torch.randn(items // 2, dim)}
    state = {i: {"exp_avg": t.clone(), "exp_avg_sq": t.clone()} for i, t in enumerate(tables.values())}
    return {"state_dict": tables, "optimizer_states": [{"state": state}], "twotower_config": {"seed": 1}, "twotower_features": {}}


def best_of(repeats: int, fn) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--items", type=int, nargs="+", default=[1682, 1_000_000])
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    torch.set_num_threads(1)
    print("| items | tensors (MB) | torch.save to memory (s) | seal (s) | verify (s) | seal / save |")
    print("|---|---|---|---|---|---|")
    for items in args.items:
        ckpt = checkpoint(items, args.dim)
        megabytes = sum(t.numel() * 4 for t in ckpt["state_dict"].values()) * 3 / 1e6
        save = best_of(args.repeats, lambda: torch.save(ckpt, io.BytesIO()))
        seal = best_of(args.repeats, lambda: seal_checkpoint(ckpt))
        sealed = seal_checkpoint(ckpt)
        verify = best_of(args.repeats, lambda: checkpoint_mismatch(sealed))
        assert checkpoint_mismatch(sealed) is None
        print(f"| {items:,} | {megabytes:,.0f} | {save:.3f} | {seal:.3f} | {verify:.3f} | {seal / save:.2f} |")


if __name__ == "__main__":
    main()
