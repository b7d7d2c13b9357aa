"""Time one offline hard-negative mining refresh (``mine_rank_window``) on synthetic vectors.

    .venv/bin/python scripts/bench_mining.py --users 1000 --items 1000000 --lo 101 --hi 500

Exact scores of every user against every item, the users' positives removed, ranks lo..hi
kept; memory is bounded by the scoring chunk, not by users x items.
"""

import argparse
import time

import torch

from twotower.data.positives import PositiveLookup
from twotower.hard_negatives import mine_rank_window


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--lo", type=int, default=101)
    parser.add_argument("--hi", type=int, default=500)
    parser.add_argument("--positives-per-user", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    items = torch.nn.functional.normalize(torch.randn(args.items, args.dim), dim=1)
    users = torch.nn.functional.normalize(torch.randn(args.users, args.dim), dim=1)
    owners = torch.arange(args.users).repeat_interleave(args.positives_per_user)
    positives = PositiveLookup(owners, torch.randint(0, args.items, owners.shape), args.users, args.items)
    start = time.perf_counter()
    window = mine_rank_window(users, items, torch.arange(args.users), positives, args.lo, args.hi)
    seconds = time.perf_counter() - start
    print(
        f"users={args.users} items={args.items} dim={args.dim} window={args.lo}-{args.hi} "
        f"threads={args.threads}: {seconds:.2f} s per refresh, {1000 * seconds / args.users:.2f} ms per user, "
        f"window shape {tuple(window.shape)}"
    )


if __name__ == "__main__":
    main()
