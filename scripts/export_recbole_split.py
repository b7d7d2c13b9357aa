"""Write the platform's own train / validation / test split of a data config as RecBole
benchmark files, so that the peer (scripts/peer_recbole.py, in its own venv) trains and
tests on exactly the same pairs:

    .venv/bin/python scripts/export_recbole_split.py --name gowalla_s1 --out /tmp/recbole_peer/data \\
        data=gowalla seed=1                      # validation: 10% of each user's training pairs, >= 1 each
    # the carve of the comparison in docs/BENCHMARKS.md (2026-12-01): add data.split.min_val_per_user=0
    # -> /tmp/recbole_peer/data/gowalla_s1/gowalla_s1.{train,valid,test}.inter

Every positive of each split is one line ``user_id:token item_id:token`` with the data's raw
ids. Any Hydra override of ``twotower-train`` selects the data and the split.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from twotower.config import compose_config
from twotower.wiring import build_datamodule


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--name", required=True, help="RecBole dataset name (the folder and file stem)")
    p.add_argument("--out", required=True, type=Path, help="RecBole's data_path")
    p.add_argument("overrides", nargs="*", help="twotower-train overrides, e.g. data=gowalla seed=1")
    args = p.parse_args(argv)
    cfg = compose_config(args.overrides)
    dm = build_datamodule(cfg, train_on="positives")
    dm.setup("fit")
    data = dm.data
    folder = args.out / args.name
    folder.mkdir(parents=True, exist_ok=True)
    for split, suffix in (("train", "train"), ("val", "valid"), ("test", "test")):
        part = data.splits[split].positives()
        users, items = data.user_ids[part.user.numpy()], data.item_ids[part.item.numpy()]
        path = folder / f"{args.name}.{suffix}.inter"
        with open(path.with_suffix(".tmp"), "w") as f:
            f.write("user_id:token\titem_id:token\n")
            f.writelines(f"{u}\t{i}\n" for u, i in zip(users, items))
        os.replace(path.with_suffix(".tmp"), path)
        print(f"{path}: {len(part.user):,} pairs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
