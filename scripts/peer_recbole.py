"""The peer library RecBole on MovieLens-100K: BPR training throughput, and the quality of its
EASE, BPR and LightGCN on RecBole's own protocol (or on a split given as benchmark files).

What it measures:

- ``--mode throughput``: positives/s and s/epoch of ``Trainer._train_epoch`` (RecBole's own
  training loop: its ``TrainDataLoader`` with the uniform negative sampler in the collate
  function, ``Interaction.to(device)``, forward, ``BPRLoss``, backward, Adam step) for RecBole's
  ``BPR`` (matrix factorisation, 64-dim user and item embeddings, one uniformly drawn negative
  per positive, ``train_batch_size`` 2048 positives per step), with RecBole's defaults for
  ml-100k (split ``RS`` 0.8/0.1/0.1 per user, random order, every interaction a positive, no
  filtering). Samples = training positives (each step also scores one negative per positive).
  Timing: data loading and splitting once (not timed); then per repeat a fresh model and
  trainer, ``--warmup`` epochs untimed, ``--epochs`` epochs timed with ``perf_counter`` around
  ``trainer._train_epoch`` (the same span RecBole logs as "epoch N training [time: X s]"; no
  validation). Also timed: one pass over the training loader alone (batch construction and
  negative sampling, no model). Reported: per repeat the median epoch, and the median over
  repeats of positives / seconds. ``--worker`` is RecBole's ``worker`` (its DataLoader's
  ``num_workers``, default 0: batches built in the main process; with N > 0 the workers are
  started again at every epoch, inside the timed span, as in RecBole's ``fit``); ``--threads``
  calls ``torch.set_num_threads`` (default: leave torch's default, the number of cores).
- ``--mode quality``: test Recall@K / NDCG@K (K 10, 20, 50; MRR@10 is also computed, it is
  RecBole's default ``valid_metric``) of ``--model`` (EASE, BPR, LightGCN, ...) for each of
  ``--seeds`` (``seed`` and ``reproducibility: True``), RecBole's whole pipeline as in its
  ``run_recbole``: ``Trainer.fit`` with validation every epoch and early stopping (defaults:
  300 epochs, ``stopping_step`` 10 on MRR@10), then ``evaluate(test, load_best_model=True)``.
  Full ranking of every item not in the user's train (+ valid, for test) interactions; the
  users ranked are those with at least one interaction in the evaluated split. EASE is
  closed-form (``TraditionalTrainer``, one pass); ``--reg-weights`` runs it for several lambdas.
  ``--benchmark NAME`` replaces RecBole's own split by the files
  ``<data-dir>/NAME/NAME.{train,valid,test}.inter`` (RecBole's ``benchmark_filename``).

Data: ``--data`` is the GroupLens ``ml-100k.zip``; ``u.data`` is written once as RecBole's atomic
file ``<data-dir>/ml-100k/ml-100k.inter`` (``user_id:token item_id:token rating:float
timestamp:float``), since RecBole cannot download here. The script changes into ``--workdir``,
where RecBole writes ``log/``, ``log_tensorboard/`` and ``saved/`` (checkpoints).

This script does not import twotower; it runs in its own virtual environment:

    python3 -m venv /tmp/recbolevenv
    /tmp/recbolevenv/bin/pip install "torch==2.13.0"           # CPU build; torch first, pinned
    /tmp/recbolevenv/bin/pip install "torch==2.13.0" recbole==1.2.1 "numpy<2" "pandas<3"
    # -> numpy 1.26.4, scipy 1.17.1, pandas 2.3.3, ray 2.6.3 (pulled in, never imported here)
    /tmp/recbolevenv/bin/python scripts/peer_recbole.py --data /path/to/ml-100k.zip \\
        --mode throughput --epochs 5 --warmup 1 --repeats 3 --out /tmp/recbole_bpr.json
    /tmp/recbolevenv/bin/python scripts/peer_recbole.py --data /path/to/ml-100k.zip \\
        --mode quality --model EASE --reg-weights 100 250 500 --seeds 2020 1 2 --out /tmp/recbole_ease.json
    /tmp/recbolevenv/bin/python scripts/peer_recbole.py --data /path/to/ml-100k.zip \\
        --mode quality --model BPR --seeds 2020 1 2 --out /tmp/recbole_bpr_quality.json
    /tmp/recbolevenv/bin/python scripts/peer_recbole.py --data /path/to/ml-100k.zip \\
        --mode quality --model LightGCN --seeds 2020 1 2 --out /tmp/recbole_lightgcn.json
    # RecBole's EASE on a split exported elsewhere, as DIR/ml100k_ours_s1/ml100k_ours_s1.{train,valid,test}.inter
    /tmp/recbolevenv/bin/python scripts/peer_recbole.py --data /path/to/ml-100k.zip --data-dir DIR \
        --mode quality --model EASE --reg-weights 250 --seeds 1 --benchmark ml100k_ours_s1 --out /tmp/ease_s1.json

Workarounds for RecBole 1.2.1 (2022) with current packages, all in this script, none in
site-packages:

- ``recbole.quick_start`` imports ``ray.tune``, and ray 2.6.3 imports ``pkg_resources``, which
  the setuptools installed in the venv (84.2.1) no longer ships: ``run_recbole`` is not used;
  the script runs the same steps itself (``Config``, ``create_dataset``, ``data_preparation``,
  ``get_model``, ``get_trainer``) and never imports ``recbole.quick_start``.
- torch >= 2.6 loads checkpoints with ``weights_only=True`` by default, and RecBole's
  checkpoints hold its ``Config`` object: ``torch.load`` is wrapped to default to
  ``weights_only=False`` (the same as ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1``); only
  RecBole's own checkpoints, written by this run, are loaded.
- ``numpy<2``: RecBole 1.2.1 uses ``np.float``, ``np.bool`` (its metrics, e.g. MRR) and
  restores them in ``Config.compatibility_settings`` from ``np.float_``, ``np.complex_``,
  ``np.unicode_``, which numpy 2 removed.
- ``pandas<3``: with pandas 3 (copy-on-write) RecBole's ``feat[field].fillna(..., inplace=True)``
  silently does nothing (pandas warns ``ChainedAssignmentError``); harmless for ml-100k (no
  missing values) but pinned to the pandas RecBole was written for.
- RecBole's ``Config`` also reads ``--key=value`` arguments from ``sys.argv``: ``sys.argv`` is
  emptied while it is built, so this script's own options never reach RecBole.
- scipy's ``dok_matrix`` no longer has the private ``_update`` (a plain ``dict.update`` when
  dok_matrix was a dict subclass) that RecBole's LightGCN (and NGCF, GCMC, ...) use to build the
  adjacency matrix: it is set to the public ``dok_matrix.update`` (same effect, keys checked).
- ``use_gpu: False`` (RecBole's default is True; these runs are on the CPU).

Options: ``--set KEY=VALUE ...`` passes more RecBole settings to the quality runs (e.g.
``stopping_step=50``); ``--max-epochs`` caps ``epochs``; ``--time-budget S`` stops training after
the epoch that passes S seconds and tests the best model on validation so far (quality after the
same wall time as another run). Each quality run records the validation metric of every epoch
(``valid_per_epoch``, RecBole's ``valid_metric``) and its wall time next to the test metrics.

The LightGCN benchmarks (Gowalla): the platform's own split, written as benchmark files by
``scripts/export_recbole_split.py`` (twotower's venv), then ``--benchmark NAME --data-dir DIR``:

    .venv/bin/python scripts/export_recbole_split.py --name gowalla_s1 --out /tmp/recbole_peer/data data=gowalla seed=1
    TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 /tmp/recbolevenv/bin/python scripts/peer_recbole.py --data /path/to/ml-100k.zip \
        --data-dir /tmp/recbole_peer/data --benchmark gowalla_s1 --mode quality --model SimpleX --seeds 1 \
        --topk 20 50 --time-budget 1200 --set valid_metric=Recall@20 --out /tmp/recbole_simplex_gowalla.json

On a 2-core machine (2026-11-29, torch 2.13.0 CPU, 2 threads): a BPR epoch (80,808 training
positives, 40 steps) takes 0.38-0.51 s with ``worker`` 0 (160,000-213,000 positives/s), of which
0.2-0.3 s is the training loader alone (RecBole's negative sampler checks every drawn item
against the user's item set in a Python loop); ``torch.set_num_threads(1)`` is no slower;
``worker`` 1 or 2 is about twice as slow (0.8-1.0 s: worker start-up at every epoch, and the
workers compete for the two cores). Quality runs: EASE 3-6 s per lambda; BPR 1-1.5 min per seed
(62-82 epochs to early stopping); LightGCN about 3.3 s per epoch with validation.
"""

import argparse
import functools
import io
import json
import os
import platform
import statistics
import sys
import time
import zipfile
from datetime import datetime, timezone
from importlib.metadata import version

import scipy.sparse as sp
import torch
import yaml

_torch_load = torch.load
torch.load = functools.partial(_torch_load, weights_only=False)  # RecBole's checkpoints hold its Config
if not hasattr(sp.dok_matrix, "_update"):  # gone from scipy's dok_matrix; LightGCN, NGCF, ... call it
    sp.dok_matrix._update = sp.dok_matrix.update

from recbole.config import Config  # noqa: E402
from recbole.data import create_dataset, data_preparation  # noqa: E402
from recbole.utils import get_model, get_trainer, init_logger, init_seed  # noqa: E402

DATASET = "ml-100k"
EVAL_ARGS = {"split": {"RS": [0.8, 0.1, 0.1]}, "order": "RO", "group_by": "user", "mode": "full"}


def convert(zip_path: str, data_dir: str) -> str:
    """``u.data`` of the GroupLens archive as RecBole's ``ml-100k/ml-100k.inter``; returns its path."""
    path = os.path.join(data_dir, DATASET, f"{DATASET}.inter")
    if os.path.exists(path):
        return path
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with zipfile.ZipFile(zip_path) as archive:
        member = next(m for m in archive.namelist() if m.rsplit("/", 1)[-1] == "u.data")
        text = io.TextIOWrapper(io.BytesIO(archive.read(member)), encoding="latin-1")
        rows = [line.rstrip("\n").split("\t") for line in text if line.strip()]
    with open(path + ".tmp", "w") as f:
        f.write("user_id:token\titem_id:token\trating:float\ttimestamp:float\n")
        f.writelines("\t".join(r) + "\n" for r in rows)
    os.replace(path + ".tmp", path)
    return path


def make_config(model: str, dataset: str, config_dict: dict) -> Config:
    """RecBole's ``Config`` without its parsing of ``sys.argv`` (this script's options are not RecBole's)."""
    argv, sys.argv = sys.argv, sys.argv[:1]
    try:
        return Config(model=model, dataset=dataset, config_dict=config_dict)
    finally:
        sys.argv = argv


def base_config(args, **extra) -> dict:
    cfg = {"data_path": os.path.abspath(args.data_dir), "checkpoint_dir": os.path.abspath(os.path.join(args.workdir, "saved")),
           "use_gpu": False, "show_progress": False, "worker": args.worker, "state": args.log_level}  # fmt: skip
    cfg.update(extra)
    return cfg


def environment() -> dict:
    return {"utc": datetime.now(timezone.utc).isoformat(timespec="seconds"), "python": platform.python_version(),
            "machine": platform.machine(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch_interop_threads": torch.get_num_interop_threads(),
            "versions": {p: version(p) for p in ("recbole", "torch", "numpy", "scipy", "pandas")}}  # fmt: skip


def mm_peak_gflops(n: int = 2048, reps: int = 10) -> float:
    """fp32 ``torch.mm`` of two n x n matrices, best of ``reps``: this process's compute peak."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = min(_timed(lambda: torch.mm(a, b)) for _ in range(reps))
    return 2 * n**3 / best / 1e9


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def throughput(args) -> dict:
    config = make_config(args.model, DATASET, base_config(args, eval_args=EVAL_ARGS))
    init_seed(config["seed"], config["reproducibility"])
    dataset = create_dataset(config)
    train_data, _, _ = data_preparation(config, dataset)
    positives = train_data.sample_size
    steps = len(train_data)
    out = {"mode": "throughput", "model": args.model, "worker": config["worker"], "train_batch_size": config["train_batch_size"],
           "train_neg_sample_args": dict(config["train_neg_sample_args"]), "embedding_size": config["embedding_size"],
           "eval_args": dict(config["eval_args"]), "num_users": dataset.user_num, "num_items": dataset.item_num,
           "interactions": len(dataset), "train_positives_per_epoch": positives, "steps_per_epoch": steps,
           "warmup": args.warmup, "epochs": args.epochs, "repeats": []}  # fmt: skip
    for rep in range(args.repeats):
        init_seed(config["seed"] + rep, config["reproducibility"])
        model = get_model(config["model"])(config, train_data._dataset).to(config["device"])
        trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
        times, losses = [], []
        for epoch in range(args.warmup + args.epochs):
            t0 = time.perf_counter()
            loss = trainer._train_epoch(train_data, epoch, show_progress=False)
            dt = time.perf_counter() - t0
            if epoch >= args.warmup:
                times.append(dt)
                losses.append(float(loss))
        loader_only = min(_timed(lambda: [None for _ in train_data]) for _ in range(3))
        med = statistics.median(times)
        out["repeats"].append({"epoch_s": times, "median_epoch_s": med, "positives_per_s": positives / med,
                               "loss": losses, "loader_only_epoch_s": loader_only})  # fmt: skip
        print(f"repeat {rep}: median epoch {med:.3f} s ({positives / med:,.0f} positives/s), epochs "
              + " ".join(f"{t:.3f}" for t in times) + f"; loader alone {loader_only:.3f} s", flush=True)  # fmt: skip
    out["median_epoch_s"] = statistics.median(r["median_epoch_s"] for r in out["repeats"])
    out["positives_per_s"] = statistics.median(r["positives_per_s"] for r in out["repeats"])
    out["ms_per_step"] = 1000 * out["median_epoch_s"] / steps
    out["mm_peak_gflops"] = mm_peak_gflops()
    print(f"{args.model} worker={config['worker']} threads={torch.get_num_threads()}: median {out['median_epoch_s']:.3f} s/epoch, "
          f"{out['positives_per_s']:,.0f} positives/s, {out['ms_per_step']:.2f} ms/step", flush=True)  # fmt: skip
    return out


def quality(args) -> dict:
    runs = []
    params = args.reg_weights if args.model == "EASE" else [None]
    for seed in args.seeds:
        for reg in params:
            extra = {"seed": seed, "reproducibility": True, "metrics": ["Recall", "MRR", "NDCG"], "topk": args.topk,
                     "valid_metric": "MRR@10", "eval_args": EVAL_ARGS}  # fmt: skip
            if reg is not None:
                extra["reg_weight"] = reg
            if args.max_epochs is not None:
                extra["epochs"] = args.max_epochs
            extra.update(args.set)
            dataset_name = DATASET
            if args.benchmark:
                dataset_name = args.benchmark
                extra.update(benchmark_filename=["train", "valid", "test"], load_col={"inter": ["user_id", "item_id"]})
            config = make_config(args.model, dataset_name, base_config(args, **extra))
            init_seed(config["seed"], config["reproducibility"])
            init_logger(config)
            t0 = time.perf_counter()
            dataset = create_dataset(config)
            train_data, valid_data, test_data = data_preparation(config, dataset)
            init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
            model = get_model(config["model"])(config, train_data._dataset).to(config["device"])
            trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
            epochs = []
            started = time.perf_counter()

            def after_epoch(epoch, score):
                epochs.append((epoch, float(score), time.perf_counter() - started))
                if args.time_budget is not None and time.perf_counter() - started >= args.time_budget:
                    raise _OutOfTime  # the best model on validation so far is saved; test it

            try:
                best_valid, valid_result = trainer.fit(train_data, valid_data, saved=True, show_progress=False, callback_fn=after_epoch)
            except _OutOfTime:
                best_valid, valid_result = trainer.best_valid_score, trainer.best_valid_result
            test_result = trainer.evaluate(test_data, load_best_model=True, show_progress=False)
            run = {"model": args.model, "seed": seed, "reg_weight": reg, "dataset": dataset_name,
                   "epochs_run": len(epochs), "max_epochs": config["epochs"], "valid_metric": config["valid_metric"],
                   "valid_per_epoch": [s for _, s, _ in epochs], "wall_s_per_epoch": [t for _, _, t in epochs],
                   "best_valid": float(best_valid), "time_budget_s": args.time_budget,
                   "valid": {k: float(v) for k, v in (valid_result or {}).items()},
                   "test": {k: float(v) for k, v in test_result.items()}, "wall_s": time.perf_counter() - t0,
                   "num_users": dataset.user_num - 1, "num_items": dataset.item_num - 1,
                   "train_interactions": len(train_data._dataset), "valid_interactions": len(valid_data._dataset),
                   "test_interactions": len(test_data._dataset), "test_users": len(test_data.uid_list)}  # fmt: skip
            runs.append(run)
            tag = f"reg_weight {reg:g} " if reg is not None else ""
            print(f"{args.model} {dataset_name} seed {seed} {tag}({len(epochs)} epochs, {run['wall_s']:.0f} s): test "
                  + ", ".join(f"{k} {v:.4f}" for k, v in run["test"].items()), flush=True)  # fmt: skip
    summary = {}
    for reg in params:
        sel = [r for r in runs if r["reg_weight"] == reg]
        summary[str(reg)] = {k: {"mean": statistics.mean(r["test"][k] for r in sel),
                                 "std": statistics.stdev(r["test"][k] for r in sel) if len(sel) > 1 else 0.0}
                             for k in sel[0]["test"]}  # fmt: skip
        print(f"{args.model} mean over seeds {args.seeds}" + (f" reg_weight {reg:g}" if reg is not None else "") + ": "
              + ", ".join(f"{k} {v['mean']:.4f} ± {v['std']:.4f}" for k, v in summary[str(reg)].items()), flush=True)  # fmt: skip
    return {"mode": "quality", "model": args.model, "benchmark": args.benchmark, "eval_args": EVAL_ARGS, "runs": runs,
            "summary": summary}  # fmt: skip


class _OutOfTime(Exception):
    """Raised after the epoch that used up ``--time-budget``."""


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="GroupLens ml-100k.zip")
    parser.add_argument("--data-dir", default="/tmp/recbole_peer/data", help="where the atomic files are (written)")
    parser.add_argument("--workdir", default="/tmp/recbole_peer/work", help="RecBole's log/, log_tensorboard/, saved/")
    parser.add_argument("--mode", choices=("throughput", "quality"), default="throughput")
    parser.add_argument("--model", default=None, help="RecBole model name (default: BPR)")
    parser.add_argument("--worker", type=int, default=0, help="RecBole's `worker` (DataLoader num_workers)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--epochs", type=int, default=5, help="throughput: timed epochs per repeat")
    parser.add_argument("--warmup", type=int, default=1, help="throughput: untimed epochs per repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seeds", type=int, nargs="+", default=[2020, 1, 2])
    parser.add_argument("--reg-weights", type=float, nargs="+", default=[250.0], help="EASE's lambda(s)")
    parser.add_argument("--topk", type=int, nargs="+", default=[10, 20, 50])
    parser.add_argument("--max-epochs", type=int, default=None, help="quality: cap RecBole's `epochs` (default 300)")
    parser.add_argument("--benchmark", default=None, help="quality: dataset NAME with NAME.{train,valid,test}.inter")
    parser.add_argument("--time-budget", type=float, default=None,
                        help="quality: stop training after the epoch that passes this many seconds, then test the best model on validation")
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                        help="quality: more RecBole settings, VALUE parsed as YAML (e.g. stopping_step=50)")
    parser.add_argument("--log-level", default="WARNING", help="RecBole's `state`")
    parser.add_argument("--out", default=None, help="JSON output")
    args = parser.parse_args(argv)
    args.model = args.model or "BPR"
    args.set = {k: yaml.safe_load(v) for k, v in (kv.split("=", 1) for kv in args.set)}
    args.data, args.data_dir, args.workdir = (os.path.abspath(p) for p in (args.data, args.data_dir, args.workdir))
    if args.out:
        args.out = os.path.abspath(args.out)
    if args.threads:
        torch.set_num_threads(args.threads)
    convert(args.data, args.data_dir)
    os.makedirs(args.workdir, exist_ok=True)
    os.chdir(args.workdir)
    env = environment()
    print(json.dumps(env), flush=True)
    result = throughput(args) if args.mode == "throughput" else quality(args)
    result = {"environment": env, "argv": vars(args), **result}
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
