"""Export a trained run for serving, and retrieve from an export.

Console scripts:

- ``twotower-export RUN [--out DIR] [--index exact|hnsw|ivfpq] [--ckpt best|last]``:
  item vectors + an :class:`ItemIndex`, the user tower (weights and constructor
  arguments), the encoded user features, the model's popularity prior (indexed with the
  items; :mod:`twotower.prior`), the co-visitation score's weight (its walks go over the
  exported seen clicks; :mod:`twotower.covisit`), and the index's quality against exact search.
- ``twotower-retrieve EXPORT --user ID [--user ID ...] [-k 10]``: top-k items for
  known users, from the exported files only (no config, no checkpoint).

A checkpoint that cannot be used is refused as :mod:`twotower.restore` says; an export
folder with a missing, unreadable or corrupted file (``checksums.json`` holds every file's
SHA-256) with an :class:`ExportError`; the commands print the message and exit with 2.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import uuid
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from twotower.cli import is_refusal, report
from twotower.fsutil import swap_in
from twotower.integrity import folder_digests
from twotower.index import ItemIndex, ann_quality
from twotower.models import Tower, TwoTowerModel, require_factorized
from twotower.models.tower import select_features
from twotower.prior import append_column
from twotower.retrieval import (CHECKSUMS, COVISIT_FILE, INDEX_DIR, LOG_PRIOR_FILE, PRIOR_FILE, SEEN_FILES, USER_WARM_FILE,
                                Retriever, encode)  # fmt: skip

TOWER_ARGS = {"embedding_dim": 32, "mlp": [128, 64], "dropout": 0.0, "normalize": True}  # TwoTowerModel defaults


def tower_spec(cfg: DictConfig, fitted: dict) -> dict:
    """The user tower's constructor arguments and fitted user features (``user_tower.json``)."""
    net = OmegaConf.to_container(cfg.model.net, resolve=True)
    args = {k: net.get(k, default) for k, default in TOWER_ARGS.items()}
    return {"args": args, "fitted": select_features(fitted, net.get("feature_set", "all"))["user"]}


def seen_items_csr(data) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each user's training items (every training and validation interaction, what the test
    ranking masks and retrieval leaves out by default), CSR over the users: ``(ptr [U+1] int64,
    item rows [S] int32, positive [S] bool)``, ``positive``: the pair was a positive (a click;
    the co-visitation walks go over those)."""
    parts = [data.splits[name] for name in ("train", "val")]
    keys = torch.cat([p.user for p in parts]).numpy().astype(np.int64) * data.num_items + torch.cat([p.item for p in parts]).numpy()
    positive = torch.cat([p.positive for p in parts]).numpy()
    distinct = np.unique(keys)  # sorted by user, then item; no repeats
    positive_keys = np.unique(keys[positive])
    counts = np.bincount(distinct // data.num_items, minlength=data.num_users)
    ptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return ptr, (distinct % data.num_items).astype(np.int32), np.isin(distinct, positive_keys)


def user_warm_flags(data) -> np.ndarray:
    """``[U]`` bool: the user has training interactions (served with the prior's warm weight)."""
    warm = np.zeros(data.num_users, dtype=bool)
    warm[data.splits["train"].user.numpy()] = True
    return warm


def _write_json(path: Path, value) -> None:
    path.write_text(json.dumps(value, indent=1))


def export(path: str | os.PathLike, out: str | os.PathLike | None = None, index: str = "exact",
           which: str = "best", index_params: dict | None = None, seed: int = 0, overwrite: bool = False) -> Path:  # fmt: skip
    """Write a run's serving files into ``out`` (default ``<run>/export``), atomically."""
    from twotower.restore import load_run, run_dir_of  # Lightning and the data: not needed to retrieve

    ckpt_path, run, ckpt = load_run(path, which)
    cfg, model = run.cfg, run.model
    require_factorized(model, "export")
    if not isinstance(model, TwoTowerModel):
        raise ValueError(f"{type(model).__name__}: only a two-tower model has a user tower to export")
    if model.history is not None:
        raise ValueError(
            "a user vector blended with the history (model.net.history_weight) has no standalone user tower to "
            "export yet; expected a model without history_weight (its item vectors and metrics are evaluated as usual)"
        )
    data = run.data
    target = Path(out) if out is not None else run_dir_of(ckpt_path) / "export"
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} exists; pass --overwrite to replace it")
    items = encode(model.item_tower, data.item_features, data.num_items)  # [N, D]
    users = encode(model.user_tower, data.user_features, data.num_users)  # [U, D]
    user_warm = user_warm_flags(data)
    prior = run.module.popularity_prior
    indexed, queries, log_prior = items, users, torch.zeros(data.num_items)
    if prior is not None:  # the index ranks by score + prior: [v, log(1 + c)] . [u, w] (twotower.prior)
        log_prior = prior.item_log_prior(*data.clicks_before("test"), data.num_items)
        indexed = append_column(items, log_prior)
        queries = append_column(users, prior.user_weights(torch.as_tensor(user_warm)))
    items, indexed, queries = items.numpy(), indexed.numpy(), queries.numpy()
    item_ids, user_ids = data.item_ids.tolist(), data.user_ids.tolist()
    item_index = ItemIndex(indexed, item_ids, {"kind": index, **(index_params or {})})

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        np.save(tmp / "item_vectors.npy", items.astype(np.float32))
        _write_json(tmp / "item_ids.json", item_ids)
        if data.item_titles is not None:
            _write_json(tmp / "item_titles.json", data.item_titles)
        item_index.save(tmp / INDEX_DIR, source={"checkpoint": str(ckpt_path.resolve()), "model": cfg.model.name})
        spec = tower_spec(cfg, ckpt["twotower_features"])
        Tower(spec["fitted"], **spec["args"]).load_state_dict(model.user_tower.state_dict())  # the spec rebuilds it
        torch.save({k: v.detach().clone() for k, v in model.user_tower.state_dict().items()}, tmp / "user_tower.pt")
        _write_json(tmp / "user_tower.json", spec)
        torch.save({k: v.clone() for k, v in data.user_features.items()}, tmp / "user_features.pt")
        _write_json(tmp / "user_ids.json", user_ids)
        for name, array in zip(SEEN_FILES, seen_items_csr(data)):
            np.save(tmp / name, array)
        np.save(tmp / USER_WARM_FILE, user_warm)
        _write_json(tmp / PRIOR_FILE, None if prior is None else asdict(prior))
        np.save(tmp / LOG_PRIOR_FILE, log_prior.numpy().astype(np.float32))
        # The walks go over the seen positives written above: those observed before test, as when testing.
        _write_json(tmp / COVISIT_FILE, {"weight": float(run.module.covisit_weight)})
        _write_json(tmp / "features.json", ckpt["twotower_features"])
        rng = np.random.default_rng(seed)
        sample = rng.choice(len(queries), size=min(1000, len(queries)), replace=False)
        quality = ann_quality(item_index, indexed, queries[np.sort(sample)], min(100, len(items)))
        _write_json(tmp / "ann_quality.json", {"index": item_index.config, **quality})
        _write_json(tmp / CHECKSUMS, folder_digests(tmp))
        swap_in(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


# ----------------------------------------------------------------------------- console scripts


def _param(text: str) -> tuple[str, int]:
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"{text!r}: expected KEY=VALUE (e.g. nlist=64)")
    return key, int(value)


def export_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="twotower-export", description="Export a trained run for retrieval.")
    p.add_argument("run", help="run directory or checkpoint file")
    p.add_argument("--out", help="export directory (default <run>/export)")
    p.add_argument("--index", default="exact", choices=["exact", "hnsw", "ivfpq"])
    p.add_argument("--param", action="append", type=_param, default=[], help="index parameter KEY=VALUE (repeatable)")
    p.add_argument("--ckpt", default="best", choices=["best", "last"])
    p.add_argument("--overwrite", action="store_true", help="replace an existing export directory")
    args = p.parse_args(argv)
    try:
        out = export(args.run, args.out, args.index, args.ckpt, dict(args.param), overwrite=args.overwrite)
    except Exception as err:
        if not is_refusal(err):
            raise
        return report(p.prog, err)
    quality = json.loads((out / "ann_quality.json").read_text())
    covisit = json.loads((out / COVISIT_FILE).read_text())["weight"]
    merged = f", co-visitation weight {covisit:g} merged at retrieval" if covisit else ""
    print(f"exported to {out}: {args.index} index, recall@{quality['k']}={quality['recall@k']:.4f}, qps={quality['qps']:.0f}{merged}")
    return 0


def retrieve_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="twotower-retrieve", description="Top-k items for users from an export.")
    p.add_argument("export_dir")
    p.add_argument("--user", action="append", default=[], help="raw user id (repeatable)")
    p.add_argument(
        "--new-user", action="append", default=[], metavar="NAME=VALUE,...",
        help="a user unseen in training, by raw features, e.g. age=25,gender=F,occupation=student (repeatable)",
    )  # fmt: skip
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--include-seen", action="store_true", help="keep the items a known user interacted with in training")
    args = p.parse_args(argv)
    if not args.user and not args.new_user:
        p.error("give at least one --user or --new-user")
    if args.k < 1:
        p.error(f"-k {args.k}: expected a positive number of items")
    try:
        new_users = [dict(pair.split("=", 1) for pair in spec.split(",") if pair) for spec in args.new_user]
        results = Retriever(args.export_dir).recommend(args.user, new_users, args.k, exclude_seen=not args.include_seen)
    except Exception as err:
        if not is_refusal(err):
            raise
        return report(p.prog, err)
    for user, rows in zip([*args.user, *(f"(new: {s})" for s in args.new_user)], results):
        print(f"user {user}:")
        for row in rows:
            print(f"  {row['rank']:>3}  {row['id']!s:>8}  {row['score']:+.4f}  {row.get('title', '')}")
    return 0


if __name__ == "__main__":
    sys.exit(export_main())
