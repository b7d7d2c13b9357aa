"""Training throughput of the peer library torch-rechub: DSSM two-tower model on MovieLens-100K.

What it measures: samples/s and ms/step of ``MatchTrainer.train_one_epoch`` (torch-rechub's own
training loop: its ``DataLoader`` from ``MatchDataGenerator.generate_dataloader``, forward,
loss, regularisation term, backward, Adam step, its tqdm bar) for torch-rechub's ``DSSM``, set
up as in its MovieLens example ``examples/matching/run_ml_dssm.py`` (ML-1M there, ML-100K here):

- features: user tower ``user_id, gender, age, occupation, zip`` (``SparseFeature``, 16 each)
  + ``hist_movie_id`` (``SequenceFeature``, mean pooling over the last 50 items, embedding
  shared with ``movie_id``) = 96 inputs; item tower ``movie_id, cate_id`` (first genre) = 32;
- towers: ``MLP`` dims [256, 128, 64], PReLU, BatchNorm1d after every Linear, L2-normalised
  output; ``temperature=0.02`` (the example's value); Adam lr 1e-4, weight decay 1e-6;
- data: ``generate_seq_feature_match`` (leave-last-out per user, popularity negatives
  ``sample_method=1``) and ``gen_model_input(seq_max_len=50)``.

Modes (``--mode``):

- ``in_batch``: ``MatchTrainer(mode=0, in_batch_neg=True)``, positives only (``neg_ratio=0``).
  torch-rechub 0.9.0 computes the ``[B, B]`` score matrix ``user @ item.T``, then draws, in a
  Python loop over the B rows, a random permutation of the other B - 1 columns
  (``inbatch_negative_sampling``; ``--in-batch-neg-ratio`` keeps only the first K of them),
  gathers ``[B, 1 + K]`` logits and applies cross-entropy with the positive in column 0: with
  the default K = B - 1 this is the listwise softmax over the whole batch. No temperature, no
  logQ correction, no masking of repeated items. Samples = training rows = positives.
- ``pointwise``: ``MatchTrainer(mode=0)``, 1 positive : 3 sampled negatives as rows of the data
  set, ``sigmoid(cos(u, i))`` and binary cross-entropy (the example as published). Samples =
  training rows (positives + negatives); positives/s = rows/s / 4 is also reported.

Timing: data preparation once (not timed); then per repeat a fresh model, trainer and data
loader, ``--warmup`` epochs untimed, ``--epochs`` epochs timed with ``perf_counter`` around
``trainer.train_one_epoch`` (so batch construction and the loader's worker start-up at each
epoch are included, as they are in the peer's ``fit``). Reported: the median over repeats of
rows / seconds. Also the forward matmul FLOPs per sample and a 2048 x 2048 fp32 ``torch.mm``
peak measured in the same process. The loader uses the example's ``num_workers=8``
(``--num-workers`` to change it).

This script does not import twotower; it runs in its own virtual environment:

    python3 -m venv /tmp/peervenv
    /tmp/peervenv/bin/pip install "torch>=2.3,<=2.13.0"      # CPU build; torch first, bounded
    /tmp/peervenv/bin/pip install torch-rechub==0.9.0        # numpy, pandas, scikit-learn, tqdm
    /tmp/peervenv/bin/python scripts/peer_torch_rechub.py --data /path/to/ml-100k.zip \\
        --mode in_batch --batch-size 256 --epochs 2 --repeats 3 --out /tmp/peer_in_batch.json
    /tmp/peervenv/bin/python scripts/peer_torch_rechub.py --data /path/to/ml-100k.zip \\
        --mode pointwise --batch-size 256 --epochs 1 --repeats 3 --out /tmp/peer_pointwise.json

Add ``--num-workers 0`` for the loader in the main process (faster than 8 workers on a
2-core machine). On 2 cores an in-batch epoch (98,114 rows, 384 steps) takes 13-21 s, a
pointwise one (392,456 rows, 1,534 steps) 36-68 s. The trainer's tqdm bar goes to stderr.
"""

import argparse
import io
import json
import os
import platform
import statistics
import tempfile
import time
import zipfile
from datetime import datetime, timezone
from importlib.metadata import version

import pandas as pd
import torch
from sklearn.preprocessing import LabelEncoder
from torch_rechub.basic.features import SequenceFeature, SparseFeature
from torch_rechub.models.matching import DSSM
from torch_rechub.trainers import MatchTrainer
from torch_rechub.utils.data import MatchDataGenerator, df_to_dict
from torch_rechub.utils.match import gen_model_input, generate_seq_feature_match

USER_COLS = ["user_id", "gender", "age", "occupation", "zip"]
ITEM_COLS = ["movie_id", "cate_id"]
EMBED_DIM = 16
SEQ_MAX_LEN = 50
TOWER_DIMS = [256, 128, 64]
POINTWISE_NEGATIVES = 3


def read_member(archive: zipfile.ZipFile, name: str, **kwargs) -> pd.DataFrame:
    """One GroupLens file (``u.data``, ``u.user``, ``u.item``) of the archive, whatever its folder."""
    member = next(m for m in archive.namelist() if m.rsplit("/", 1)[-1] == name)
    return pd.read_csv(io.BytesIO(archive.read(member)), header=None, **kwargs)


def load_movielens_100k(path: str) -> pd.DataFrame:
    """ML-100K as the one table the peer's ML-1M example reads (ratings joined with users and
    movies; ``genres`` pipe-joined genre names)."""
    with zipfile.ZipFile(path) as archive:
        ratings = read_member(archive, "u.data", sep="\t", names=["user_id", "movie_id", "rating", "timestamp"])
        users = read_member(archive, "u.user", sep="|", names=["user_id", "age", "gender", "occupation", "zip"])
        genres = read_member(archive, "u.genre", sep="|", names=["name", "index"]).dropna()["name"].tolist()
        items = read_member(archive, "u.item", sep="|", encoding="latin-1",
                            names=["movie_id", "title", "release", "video", "url", *genres])  # fmt: skip
    flags = items[genres].to_numpy().astype(bool)
    items["genres"] = ["|".join(g for g, on in zip(genres, row) if on) or "unknown" for row in flags]
    data = ratings.merge(users, on="user_id").merge(items[["movie_id", "title", "genres"]], on="movie_id")
    return data


def prepare(data: pd.DataFrame, mode: str) -> dict:
    """The peer example's ``get_movielens_data``, with ``neg_ratio=0`` for in-batch training."""
    data = data.copy()
    data["cate_id"] = data["genres"].apply(lambda x: x.split("|")[0])
    feature_max_idx = {}
    for feature in USER_COLS + ["movie_id", "cate_id"]:
        data[feature] = LabelEncoder().fit_transform(data[feature]) + 1
        feature_max_idx[feature] = data[feature].max() + 1
    user_profile = data[USER_COLS].drop_duplicates("user_id")
    item_profile = data[ITEM_COLS].drop_duplicates("movie_id")
    neg_ratio = 0 if mode == "in_batch" else POINTWISE_NEGATIVES
    df_train, df_test = generate_seq_feature_match(data, "user_id", "movie_id", time_col="timestamp", item_attribute_cols=[],
                                                   sample_method=1, mode=0, neg_ratio=neg_ratio, min_item=0)  # fmt: skip
    x_train = gen_model_input(df_train, user_profile, "user_id", item_profile, "movie_id", seq_max_len=SEQ_MAX_LEN)
    x_test = gen_model_input(df_test, user_profile, "user_id", item_profile, "movie_id", seq_max_len=SEQ_MAX_LEN)
    user_features = [SparseFeature(name, vocab_size=feature_max_idx[name], embed_dim=EMBED_DIM) for name in USER_COLS]
    user_features += [SequenceFeature("hist_movie_id", vocab_size=feature_max_idx["movie_id"], embed_dim=EMBED_DIM,
                                      pooling="mean", shared_with="movie_id")]  # fmt: skip
    item_features = [SparseFeature(name, vocab_size=feature_max_idx[name], embed_dim=EMBED_DIM) for name in ITEM_COLS]
    return {"x_train": x_train, "y_train": x_train["label"], "test_user": x_test, "all_item": df_to_dict(item_profile),
            "user_features": user_features, "item_features": item_features,
            "positives": int((x_train["label"] == 1).sum()), "rows": len(x_train["label"])}  # fmt: skip


def build(prep: dict, args: argparse.Namespace, model_dir: str):
    """A fresh DSSM, MatchTrainer and training DataLoader, as the peer example builds them."""
    model = DSSM(prep["user_features"], prep["item_features"], temperature=0.02,
                 user_params={"dims": TOWER_DIMS, "activation": "prelu"},
                 item_params={"dims": TOWER_DIMS, "activation": "prelu"})  # fmt: skip
    in_batch = args.mode == "in_batch"
    trainer = MatchTrainer(model, mode=0, in_batch_neg=in_batch, in_batch_neg_ratio=args.in_batch_neg_ratio if in_batch else None,
                           optimizer_params={"lr": 1e-4, "weight_decay": 1e-6}, n_epoch=1, device="cpu",
                           model_path=model_dir)  # fmt: skip
    generator = MatchDataGenerator(x=prep["x_train"], y=prep["y_train"])
    train_dl, _, _ = generator.generate_dataloader(prep["test_user"], prep["all_item"], batch_size=args.batch_size,
                                                   num_workers=args.num_workers)  # fmt: skip
    return model, trainer, train_dl


def flops_per_sample(model: DSSM, args: argparse.Namespace) -> dict:
    """Forward matmul FLOPs per training row: 2 x in x out per Linear of both towers, the
    scoring (in-batch: B logits of 2D each; pointwise: one dot product, 2D), and apart the
    mean pooling of the history (a bmm of 2 x L x E)."""
    def linears(mlp):
        return sum(2 * m.in_features * m.out_features for m in mlp.modules() if isinstance(m, torch.nn.Linear))

    dim = TOWER_DIMS[-1]
    user, item = linears(model.user_mlp), linears(model.item_mlp)
    scoring = args.batch_size * 2 * dim if args.mode == "in_batch" else 2 * dim
    return {"user_mlp": user, "item_mlp": item, "scoring": scoring, "forward": user + item + scoring,
            "history_pooling_bmm": 2 * SEQ_MAX_LEN * EMBED_DIM,
            "user_mlp_shape": [model.user_dims, *TOWER_DIMS], "item_mlp_shape": [model.item_dims, *TOWER_DIMS]}  # fmt: skip


def mm_peak(n: int = 2048, runs: int = 5) -> dict:
    """fp32 ``torch.mm`` GFLOP/s of an n x n product (best and median), as benchmarks/ (python -m benchmarks)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        torch.mm(a, b)
        times.append(time.perf_counter() - start)
    flop = 2 * n**3
    return {"n": n, "best_gflops": flop / min(times) / 1e9, "median_gflops": flop / statistics.median(times) / 1e9}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="path to ml-100k.zip (GroupLens layout)")
    parser.add_argument("--mode", choices=["in_batch", "pointwise"], default="in_batch")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs per repeat")
    parser.add_argument("--warmup", type=int, default=1, help="untimed epochs per repeat, before the timed ones")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--num-workers", type=int, default=8, help="DataLoader workers (the peer example's default: 8)")
    parser.add_argument("--in-batch-neg-ratio", type=int, default=None,
                        help="in-batch negatives per row (default: all B - 1, the full-batch softmax)")  # fmt: skip
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=2022)
    parser.add_argument("--out", default=None, help="JSON results path")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    env = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "python": platform.python_version(),
           "torch": torch.__version__, "torch_rechub": version("torch-rechub"), "threads": torch.get_num_threads(),
           "cpus": os.cpu_count(), "cpu": platform.processor() or platform.machine(),
           "loadavg_before": os.getloadavg()}  # fmt: skip
    peak = mm_peak()
    start = time.perf_counter()
    prep = prepare(load_movielens_100k(args.data), args.mode)
    prep_s = time.perf_counter() - start

    repeats = []
    with tempfile.TemporaryDirectory() as model_dir:
        for r in range(args.repeats):
            torch.manual_seed(args.seed + r)
            model, trainer, train_dl = build(prep, args, model_dir)
            for _ in range(args.warmup):
                trainer.train_one_epoch(train_dl)
            epochs = []
            for _ in range(args.epochs):
                start = time.perf_counter()
                loss = trainer.train_one_epoch(train_dl)
                epochs.append({"seconds": time.perf_counter() - start, "loss": loss})
            seconds = sum(e["seconds"] for e in epochs)
            rows = prep["rows"] * args.epochs
            repeats.append({"epochs": epochs, "samples_per_s": rows / seconds,
                            "ms_per_step": 1000 * seconds / (len(train_dl) * args.epochs)})  # fmt: skip
            print(f"repeat {r + 1}/{args.repeats}: {repeats[-1]['samples_per_s']:,.0f} samples/s, "
                  f"{repeats[-1]['ms_per_step']:.2f} ms/step", flush=True)  # fmt: skip
    flops = flops_per_sample(model, args)

    samples_per_s = statistics.median(r["samples_per_s"] for r in repeats)
    ms_per_step = statistics.median(r["ms_per_step"] for r in repeats)
    positives_per_s = samples_per_s * prep["positives"] / prep["rows"]
    env["loadavg_after"] = os.getloadavg()
    result = {"env": env, "settings": vars(args), "mm_peak": peak, "data_prep_s": prep_s, "rows_per_epoch": prep["rows"],
              "positives_per_epoch": prep["positives"], "steps_per_epoch": len(train_dl), "flops_per_sample": flops,
              "samples_per_s": samples_per_s, "positives_per_s": positives_per_s, "ms_per_step": ms_per_step,
              "achieved_forward_gflops": samples_per_s * flops["forward"] / 1e9, "repeats": repeats}  # fmt: skip

    label = f"torch-rechub {env['torch_rechub']} DSSM {args.mode}"
    if args.mode == "in_batch":
        label += f" (softmax over {args.in_batch_neg_ratio or args.batch_size - 1} in-batch negatives)"
    else:
        label += f" (BCE, 1:{POINTWISE_NEGATIVES})"
    header = ["config", "batch", "rows/epoch", "steps", "samples/s", "positives/s", "ms/step", "fwd FLOPs/sample"]
    row = [label, args.batch_size, f"{prep['rows']:,}", len(train_dl), f"{samples_per_s:,.0f}", f"{positives_per_s:,.0f}",
           f"{ms_per_step:.2f}", f"{flops['forward']:,}"]  # fmt: skip
    widths = [max(len(str(h)), len(str(v))) for h, v in zip(header, row)]
    print(" | ".join(str(h).ljust(w) for h, w in zip(header, widths)))
    print("-+-".join("-" * w for w in widths))
    print(" | ".join(str(v).ljust(w) for v, w in zip(row, widths)))
    print(f"user MLP {' -> '.join(map(str, flops['user_mlp_shape']))}, item MLP {' -> '.join(map(str, flops['item_mlp_shape']))}; "
          f"forward FLOPs/sample {flops['forward']:,} (user {flops['user_mlp']:,}, item {flops['item_mlp']:,}, "
          f"scoring {flops['scoring']:,}; history pooling bmm {flops['history_pooling_bmm']:,} apart); "
          f"torch.mm {peak['n']}x{peak['n']} fp32: best {peak['best_gflops']:.1f} GFLOP/s, median {peak['median_gflops']:.1f}; "
          f"{env['threads']} torch threads, {args.num_workers} loader workers; data prep {prep_s:.1f} s")  # fmt: skip
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
