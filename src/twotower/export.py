"""Export a trained run for serving, and retrieve from an export.

Console scripts:

- ``twotower-export RUN [--out DIR] [--index exact|hnsw|ivfpq] [--ckpt best|last]``:
  item vectors + an :class:`ItemIndex`, the user tower (weights and constructor
  arguments), the encoded user features, and the index's quality against exact search.
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
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf

from twotower.artifacts import check_plain_values, first_line, load_weights
from twotower.cli import is_write_error, report
from twotower.data.features import encode_feature
from twotower.fsutil import swap_in
from twotower.integrity import file_digest, folder_digests
from twotower.index import FILES as INDEX_FILES
from twotower.index import ItemIndex, ann_quality
from twotower.models import Tower, TwoTowerModel, require_factorized
from twotower.models.tower import select_features

INDEX_DIR = "index"
EXPORT_FILES = ("item_vectors.npy", "item_ids.json", "user_tower.pt", "user_tower.json",
                "user_features.pt", "user_ids.json", "features.json", "ann_quality.json")  # fmt: skip
CHECKSUMS = "checksums.json"  # SHA-256 of every other file of an export, written last
TOWER_ARGS = {"embedding_dim": 32, "mlp": [128, 64], "dropout": 0.0, "normalize": True}  # TwoTowerModel defaults
ENCODE_CHUNK = 65536


class ExportError(ValueError):
    """An export folder with a file that cannot be read; the message names the file."""


@torch.no_grad()
def encode(tower: torch.nn.Module, features: dict[str, torch.Tensor], count: int) -> torch.Tensor:
    """``{name: [count, ...]}`` -> ``[count, D]`` float32 vectors, in chunks."""
    chunks = [tower({k: v[s : s + ENCODE_CHUNK] for k, v in features.items()}) for s in range(0, count, ENCODE_CHUNK)]
    return torch.cat(chunks).float()


def tower_spec(cfg: DictConfig, fitted: dict) -> dict:
    """The user tower's constructor arguments and fitted user features (``user_tower.json``)."""
    net = OmegaConf.to_container(cfg.model.net, resolve=True)
    args = {k: net.get(k, default) for k, default in TOWER_ARGS.items()}
    return {"args": args, "fitted": select_features(fitted, net.get("feature_set", "all"))["user"]}


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
    items = encode(model.item_tower, data.item_features, data.num_items).numpy()  # [N, D]
    users = encode(model.user_tower, data.user_features, data.num_users).numpy()  # [U, D]
    item_ids, user_ids = data.item_ids.tolist(), data.user_ids.tolist()
    item_index = ItemIndex(items, item_ids, {"kind": index, **(index_params or {})})

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
        _write_json(tmp / "features.json", ckpt["twotower_features"])
        rng = np.random.default_rng(seed)
        sample = rng.choice(len(users), size=min(1000, len(users)), replace=False)
        quality = ann_quality(item_index, items, users[np.sort(sample)], min(100, len(items)))
        _write_json(tmp / "ann_quality.json", {"index": item_index.config, **quality})
        _write_json(tmp / CHECKSUMS, folder_digests(tmp))
        swap_in(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def check_export(export_dir: str | os.PathLike) -> Path:
    """The export folder, if every exported file is there and matches its SHA-256 in
    ``checksums.json``; else ``FileNotFoundError`` naming the missing files, or
    ``ExportError`` naming the first corrupted one."""
    folder = Path(export_dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"export folder {folder} does not exist")
    missing = [name for name in (*EXPORT_FILES, CHECKSUMS) if not (folder / name).is_file()]
    missing += [f"{INDEX_DIR}/"] if not (folder / INDEX_DIR).is_dir() else []
    if missing:
        raise FileNotFoundError(f"export {folder} is incomplete: missing {', '.join(missing)}")
    recorded = read_json(folder / CHECKSUMS)
    if not isinstance(recorded, dict) or not all(isinstance(v, str) for v in recorded.values()):
        raise ExportError(f"{folder / CHECKSUMS}: expected {{file: sha256}}, as twotower-export writes it (export again)")
    for name, digest in sorted(recorded.items()):
        path = folder / name
        if ".." in Path(name).parts or Path(name).is_absolute() or not path.is_file():
            raise ExportError(f"{folder / CHECKSUMS} lists {name!r}, which is not a file of the export (export again)")
        if file_digest(path) != digest:
            raise ExportError(f"{path}: its SHA-256 does not match {CHECKSUMS}: the file is corrupted (export again)")
    unlisted = [name for name in (*EXPORT_FILES, *(f"{INDEX_DIR}/{f}" for f in INDEX_FILES)) if name not in recorded]
    if unlisted:
        raise ExportError(f"{folder / CHECKSUMS} does not cover {', '.join(unlisted)} (export again)")
    return folder


def read_json(path: Path):
    """A JSON file of an export; a file that is not valid JSON (e.g. cut short) raises ``ExportError``."""
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ExportError(f"{path}: not valid JSON ({first_line(err)}); expected the file as twotower wrote it (is it truncated?)") from err


def _read_tensors(path: Path) -> dict:
    """A ``{name: tensor}`` file of an export, loaded with ``weights_only=True``."""
    try:
        value = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises several types for a broken file
        raise ExportError(
            f"{path}: cannot read ({first_line(err)}); expected the file twotower-export wrote (is it truncated? export again)"
        ) from err
    if not isinstance(value, dict) or not all(isinstance(v, torch.Tensor) for v in value.values()):
        raise ExportError(f"{path}: expected a dict of tensors, as twotower-export writes it (export again)")
    return value


def load_user_tower(export_dir: str | os.PathLike) -> Tower:
    """The exported user tower (eval mode), from ``user_tower.json`` and ``user_tower.pt`` only."""
    folder = Path(export_dir)
    spec = read_json(folder / "user_tower.json")
    check_plain_values(spec, str(folder / "user_tower.json"))
    try:
        tower = Tower(spec["fitted"], **spec["args"])
    except (KeyError, TypeError, ValueError) as err:
        raise ExportError(f"{folder / 'user_tower.json'}: not a user tower description ({err!r}); expected the file twotower-export wrote") from err
    load_weights(folder / "user_tower.pt", tower, _read_tensors(folder / "user_tower.pt"), "the user tower user_tower.json describes", ExportError)
    return tower.eval()


def encode_new_users(export_dir: str | os.PathLike, raw_users: list[dict[str, str]]) -> dict[str, torch.Tensor]:
    """Encode users unseen in training from their raw features, with the exported fitted
    transforms: ``[{"age": "25", "gender": "M", ...}]`` -> ``{name: [U, ...]}``. Their ID
    maps to the unknown row; a feature left out counts as missing (unknown row, or the mean)."""
    spec = read_json(Path(export_dir) / "user_tower.json")
    names = [f["name"] for f in spec["fitted"] if f["kind"] != "id"]
    continuous = {f["name"] for f in spec["fitted"] if f["kind"] == "continuous"}
    for raw in raw_users:
        unknown = sorted(set(raw) - set(names))
        if unknown:
            raise ValueError(f"new user features {unknown} are not features of this model; expected some of {names}")
        for name in sorted(continuous & set(raw)):
            value = raw[name]
            number = pd.to_numeric(pd.Series([value]), errors="coerce").iloc[0]
            if value not in (None, "") and not np.isfinite(number):
                raise ValueError(f"new user feature {name}={value!r}: expected a number (or leave it out: missing)")
    table = pd.DataFrame([{n: raw.get(n) for n in names} for raw in raw_users], columns=names)
    features: dict[str, torch.Tensor] = {}
    for fitted in spec["fitted"]:
        values = pd.Series([None] * len(raw_users), dtype=object) if fitted["kind"] == "id" else table[fitted["name"]]
        features.update(encode_feature(fitted, values))
    return features


def retrieve(
    export_dir: str | os.PathLike, users: list[str], k: int = 10, new_users: list[dict[str, str]] = ()
) -> list[list[dict]]:
    """Top-``k`` items (``rank, id, title, score``) for each known raw user id (as a string),
    then for each new user given by raw features (see :func:`encode_new_users`)."""
    folder = check_export(export_dir)
    user_ids = read_json(folder / "user_ids.json")
    position = {str(u): i for i, u in enumerate(user_ids)}
    unknown = [u for u in users if str(u) not in position]
    if unknown:
        raise KeyError(f"unknown user id(s) {unknown}; known ids include {[str(u) for u in user_ids[:5]]} ({len(user_ids)} users)")
    titles_file = folder / "item_titles.json"
    ids = read_json(folder / "item_ids.json")
    titles = dict(zip(map(str, ids), read_json(titles_file))) if titles_file.is_file() else {}
    tower = load_user_tower(folder)
    vectors = []
    if users:
        features = _read_tensors(folder / "user_features.pt")
        short = {n: len(t) for n, t in features.items() if len(t) != len(user_ids)}
        if short:
            raise ExportError(f"{folder / 'user_features.pt'}: rows {short} for {len(user_ids)} user ids in user_ids.json; expected one row per user (export again)")
        rows = torch.as_tensor([position[str(u)] for u in users], dtype=torch.long)
        vectors.append(encode(tower, {n: t.index_select(0, rows) for n, t in features.items()}, len(rows)))
    if new_users:
        vectors.append(encode(tower, encode_new_users(folder, list(new_users)), len(new_users)))
    with torch.no_grad():
        queries = torch.cat(vectors).detach()
    scores, found, _ = ItemIndex.load(folder / INDEX_DIR).search(queries.numpy(), k)
    return [
        [{"rank": r + 1, "id": i.item() if hasattr(i, "item") else i, "title": titles.get(str(i), ""), "score": float(s)}
         for r, (i, s) in enumerate(zip(found[q], scores[q]))]
        for q in range(len(queries))
    ]  # fmt: skip


# ----------------------------------------------------------------------------- console scripts


# Refusals the commands report in one line (exit 2): bad input, and a folder that cannot be written.
def refused(err: BaseException) -> bool:
    return isinstance(err, (ValueError, KeyError, FileNotFoundError, FileExistsError)) or is_write_error(err)


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
        if not refused(err):
            raise
        return report(p.prog, err)
    quality = json.loads((out / "ann_quality.json").read_text())
    print(f"exported to {out}: {args.index} index, recall@{quality['k']}={quality['recall@k']:.4f}, qps={quality['qps']:.0f}")
    return 0


def retrieve_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="twotower-retrieve", description="Top-k items for known users from an export.")
    p.add_argument("export_dir")
    p.add_argument("--user", action="append", default=[], help="raw user id (repeatable)")
    p.add_argument(
        "--new-user", action="append", default=[], metavar="NAME=VALUE,...",
        help="a user unseen in training, by raw features, e.g. age=25,gender=F,occupation=student (repeatable)",
    )  # fmt: skip
    p.add_argument("-k", type=int, default=10)
    args = p.parse_args(argv)
    if not args.user and not args.new_user:
        p.error("give at least one --user or --new-user")
    try:
        new_users = [dict(pair.split("=", 1) for pair in spec.split(",") if pair) for spec in args.new_user]
        results = retrieve(args.export_dir, args.user, args.k, new_users)
    except Exception as err:
        if not refused(err):
            raise
        return report(p.prog, err)
    for user, rows in zip([*args.user, *(f"(new: {s})" for s in args.new_user)], results):
        print(f"user {user}:")
        for row in rows:
            print(f"  {row['rank']:>3}  {row['id']!s:>8}  {row['score']:+.4f}  {row['title']}")
    return 0


if __name__ == "__main__":
    sys.exit(export_main())
