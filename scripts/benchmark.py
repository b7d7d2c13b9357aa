"""Benchmark suite: training throughput, Lightning against a hand-written loop, negative
samplers, exact full-ranking evaluation, peak memory and start-up time, on MovieLens-100K
and on the synthetic data set at 1M items. CPU only (the Trainer gets accelerator=cpu).

    .venv/bin/python scripts/benchmark.py --out benchmark-results.json           # everything (about 30-45 min)
    .venv/bin/python scripts/benchmark.py --quick --out /tmp/quick.json          # smoke run of every section
    .venv/bin/python scripts/benchmark.py --sections train,loop --scale ml100k   # a part
    .venv/bin/python scripts/benchmark.py --sections eval --scale synthetic --eval-full --repeats 1   # 100k x 1M

Sections (``--sections``, default all) at each scale (``--scale ml100k,synthetic``, default
both; synthetic = ``data=synthetic`` with ``--synthetic-items/-users/-interactions``, default
1M / 100k / 10M). Every figure is the median of ``--repeats`` repetitions (default 3).

train     ``Trainer.fit`` throughput of ``--configs``: ``mc`` (model=matrix_completion with
          data.batch_size=2048, the batch RecBole uses), ``mc_default`` (matrix_completion at the
          data's own batch size, as earlier versions of this script measured it), ``in_batch``
          (two_tower default: listwise, in-batch + logQ), ``uniform`` (listwise, sampler=uniform),
          ``pairwise`` (loss=pairwise_hinge sampler=in_batch), ``pointwise`` (loss=pointwise
          sampler=in_batch, 1:3). One warm-up epoch, then ``--epochs`` timed ones. ML-100K: whole
          epochs, timed from ``on_train_epoch_start`` to ``on_train_epoch_end`` (batch
          construction included), and ``trainer.validate/test`` as before. Synthetic (and
          ML-100K with ``--quick``, 5 batches): epochs of ``--steps`` batches, rates in steady state (from the start
          of the first step to the start of the last: each interval holds one step and one batch
          construction; the per-epoch permutation of all 8M examples, amortized over thousands
          of steps in a real epoch, is left out). Also batch construction alone (iterating
          ``train_dataloader()``, no model) and its rate over the rate training consumes batches
          (target >= 10), and matmul FLOPs per sample against a ``torch.mm`` peak measured in
          the same run. ``--command``: each repetition also trains the config through the real
          command's ``twotower.train.train`` (the platform's callbacks, CSV logger, checkpoints,
          progress bar, validation after every epoch, the final test; at the synthetic scale
          one validation and one test batch) and compares its steady-state step with the bare
          ``Trainer.fit``'s.
loop      Time per step of Lightning against a hand-written loop (no Lightning, no Hydra: the
          same ``module.model`` towers, the same ``module.loss`` object, the same batches, the
          config's optimizer and settings; the forward written out with ``score_candidates`` and
          ``ScoredBatch``; zero_grad / backward / step), (a) both building their batches
          (iterating ``dm.train_dataloader()``) and (b) both iterating the same pre-built
          batches. Steady state as above, and over whole epochs. Ratio Lightning / hand-written
          (target <= 1.25). The loss of both forwards is compared on one batch.
samplers  ``sampler.sample(users, items, generator)`` + ``build_layout(...)`` over real batches
          for every sampler of ``--samplers`` (``hard`` gets a random mined window through its
          ``update``): negatives/s = the ``[B, C]`` candidate cells the loss receives per second.
eval      Exact full ranking. ML-100K: the platform's ``trainer.test`` (untrained default model,
          eval.backend torch and faiss). Synthetic: clustered unit vectors, ``--eval-total-users``
          x ``--eval-items`` x ``--eval-dim`` (100k x 1M x 64), a mean of ``--eval-seen`` (100)
          seen items per user (log-normal; half from the user's cluster), top ``--eval-k``: the
          platform's ``torch_top_k``, ``rank_and_match`` (what ``trainer.test`` runs for the torch
          backend) and ``faiss_top_k`` (with ``build_faiss_index``) in the user chunks
          ``EvalBatches`` makes (torch: ``MAX_EVAL_SCORES // num_items`` users; faiss: as
          ``train()`` sets it up), next to raw FAISS ``IndexFlatIP.search(users, k)`` in one call.
          ``*_blas``: the same with ``faiss.cvar.distance_compute_blas_threshold = 1`` (FAISS 1.15
          defaults to 128000: below that many queries it scores query by query, without BLAS).
          Timed over the first ``--eval-users`` users (default 2,048; ``--eval-full``: all) and
          extrapolated to all; each method in a fresh process with its own peak memory.
memory    Peak RSS of training (``--memory-configs``) and of ``trainer.test`` at each scale, each
          in a fresh process (this script re-invoked with a hidden ``--worker`` flag; the parent
          prepares the data once and pickles it for them): RSS once the data is loaded, peak
          during the measured work (VmHWM, reset through /proc/self/clear_refs), the difference
          (peak extra), and the process's own peak (VmHWM, not ``ru_maxrss``: on Linux a
          fork+exec'd child's ``ru_maxrss`` starts from the parent's peak).
startup   Wall time from launching ``python -c CODE`` to the end of the first training step,
          where CODE runs the real console entry ``twotower.train.main()`` (Hydra parses the
          command-line overrides) after wrapping ``twotower.train.train`` so that it passes one
          extra callback, which writes time stamps and ends the process: python start + imports
          + Hydra config + data preparation + model build + Trainer set-up + first step, with
          the stages. Also ``python -c pass`` and ``python -c "import twotower.train"``.
          Synthetic: one run (its data preparation dominates).

Tables go to stdout, progress lines as sections run; ``--out`` (rewritten after every
section, so a failure or interrupt keeps what was measured) holds the environment (date, CPU,
cores, threads, versions, load average before/after), the settings and every result. A section
that fails is reported and the others still run; the exit status is then 1.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import io
import itertools
import json
import logging
import math
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import warnings

os.environ.setdefault("WANDB_MODE", "disabled")

SECTIONS = ("train", "loop", "samplers", "eval", "memory", "startup")
SCALES = ("ml100k", "synthetic")
COMMON = ["logger.wandb.mode=disabled"]
# name: (label, overrides)
CONFIGS = {
    "mc": ("matrix_completion (mse), batch 2048", ["model=matrix_completion", "data.batch_size=2048"]),
    "mc_default": ("matrix_completion (mse), data's batch", ["model=matrix_completion"]),
    "in_batch": ("two_tower listwise in-batch+logQ", []),
    "uniform": ("two_tower listwise uniform x64", ["sampler=uniform"]),
    "pairwise": ("two_tower pairwise_hinge in-batch", ["loss=pairwise_hinge", "sampler=in_batch"]),
    "pointwise": ("two_tower pointwise in-batch 1:3", ["loss=pointwise", "sampler=in_batch"]),
    # Not in the default set (--configs ...): what bf16 autocast and torch.compile do on this machine.
    "in_batch_bf16": ("two_tower listwise in-batch+logQ, bf16-mixed", ["trainer.precision=bf16-mixed"]),
    "in_batch_compiled": ("two_tower listwise in-batch+logQ, torch.compile", ["model.net.torch_compile=true"]),
    # RecBole's BPR set up as the platform would run it: matrix completion, pairwise logistic loss,
    # one uniform negative per positive, batch 2048, RecBole's protocol (every rating a positive).
    "mc_bpr": ("matrix_completion BPR (pairwise logistic, 1 uniform negative), batch 2048",
               ["model=matrix_completion", "loss=pairwise_logistic", "sampler=uniform", "sampler.num_negatives=1",
                "data.batch_size=2048", "experiment=recbole_protocol"]),
    "mc_4096": ("matrix_completion (mse), batch 4096", ["model=matrix_completion", "data.batch_size=4096"]),
    "in_batch_1024": ("two_tower listwise in-batch+logQ, batch 1024", ["data.batch_size=1024"]),
    "in_batch_2048": ("two_tower listwise in-batch+logQ, batch 2048", ["data.batch_size=2048"]),
    # The peer's tower sizes (torch-rechub's DSSM example, scripts/peer_torch_rechub.py): 16-dim
    # embeddings, MLP [256, 128, 64]; about twice the default's FLOPs per sample.
    "in_batch_peer_sizes": ("two_tower listwise in-batch+logQ, peer's sizes 16/[256,128,64]",
                            ["model.net.embedding_dim=16", "model.net.mlp=[256,128,64]"]),
    # Sparse embedding gradients (lazy Adam on the batch's rows): for the 1M-item scale.
    "mc_sparse": ("matrix_completion (mse), batch 2048, sparse embeddings",
                  ["model=matrix_completion", "data.batch_size=2048", "model.net.sparse_embeddings=true"]),
    "in_batch_sparse": ("two_tower listwise in-batch+logQ, sparse embeddings", ["model.net.sparse_embeddings=true"]),
    "uniform_sparse": ("two_tower listwise uniform x64, sparse embeddings",
                       ["sampler=uniform", "model.net.sparse_embeddings=true"]),
}
DEFAULT_CONFIGS = ["mc", "mc_default", "in_batch", "uniform", "pairwise", "pointwise"]
SAMPLERS = ("in_batch", "uniform", "popularity", "mixed", "exposed_unclicked", "hard")
# *_blas: the same with faiss.cvar.distance_compute_blas_threshold = 1 (FAISS 1.15's default, 128000
# queries, keeps every search of fewer queries on its non-BLAS path, about 10x slower here).
EVAL_METHODS = ("torch_top_k", "rank_and_match", "faiss_top_k", "faiss_top_k_blas", "faiss_raw", "faiss_raw_blas")
RAW_FAISS = ("faiss_raw", "faiss_raw_blas")
NOISE = (".*does not have many workers", ".*LeafSpec", ".*`IterableDataset` has `__len__`", ".*no `val_dataloader`")
T0 = time.perf_counter()


class BenchmarkError(RuntimeError):
    """A measurement that could not run; the message says why."""


# ---------------------------------------------------------------------------------------------
# small utilities
# ---------------------------------------------------------------------------------------------
def progress(msg: str) -> None:
    """A progress line on stdout with the time since the start of the script."""
    elapsed = time.perf_counter() - T0
    print(f"[{int(elapsed // 60):3d}:{elapsed % 60:04.1f}] {msg}", flush=True)


def median(values) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def quiet() -> None:
    for noise in NOISE:
        warnings.filterwarnings("ignore", noise)
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def ru_maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def rss_mb() -> float | None:
    kb = _status_kb("VmRSS")
    return None if kb is None else kb / 1024


def reset_peak_rss() -> bool:
    """Reset this process's peak RSS (VmHWM) to its current RSS (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class PeakMemory:
    """Peak RSS of the work inside ``with``: RSS before, VmHWM after (reset on entry; without
    /proc/self/clear_refs the lifetime peak, which may include earlier work)."""

    def __enter__(self) -> "PeakMemory":
        self.before = rss_mb()
        hwm = _status_kb("VmHWM")
        self.hwm_before = None if hwm is None else hwm / 1024  # this process's peak so far
        self.reset = reset_peak_rss()
        return self

    def __exit__(self, *exc) -> None:
        hwm = _status_kb("VmHWM")
        self.peak = hwm / 1024 if (hwm is not None and self.reset) else ru_maxrss_mb()
        self.after = rss_mb()

    def as_dict(self) -> dict:
        extra = None if self.before is None else self.peak - self.before
        # VmHWM of this process, not ru_maxrss: after fork + exec Linux carries the parent's peak
        # RSS into the child's ru_maxrss.
        lifetime = max(self.peak, self.hwm_before or 0.0)
        return {"rss_before_mb": self.before, "peak_mb": self.peak, "peak_extra_mb": extra, "rss_after_mb": self.after,
                "peak_is_phase_only": self.reset, "process_peak_mb": lifetime}  # fmt: skip


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown"


def mem_total_mb() -> float | None:
    try:
        with open("/proc/meminfo") as f:
            return next(int(line.split()[1]) / 1024 for line in f if line.startswith("MemTotal"))
    except (OSError, StopIteration):
        return None


def versions() -> dict:
    out = {"python": platform.python_version()}
    for name in ("torch", "lightning", "faiss", "numpy", "pandas", "hydra", "omegaconf", "twotower"):
        try:
            module = __import__(name)
            out[name] = getattr(module, "__version__", "?")
        except Exception as err:  # noqa: BLE001 - a missing optional library is recorded, not fatal
            out[name] = f"unavailable ({type(err).__name__})"
    return out


def fmt(value, spec: str = ",.0f", missing: str = "-") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return missing
    return format(value, spec)


def table(title: str, header: list[str], rows: list[list[str]], left: int = 1, last_left: bool = False) -> str:
    """A plain-text table; the first ``left`` columns (and the last with ``last_left``) are
    left-aligned, the others right-aligned."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lefts = set(range(left)) | ({len(header) - 1} if last_left else set())

    def line(r):
        return "  ".join(str(c).ljust(w) if i in lefts else str(c).rjust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()

    out = [f"\n== {title}", line(header), "-" * len(line(header))]
    return "\n".join(out + [line(r) for r in rows])


# ---------------------------------------------------------------------------------------------
# building runs with the package's own code; the data of a scale is prepared once per process
# ---------------------------------------------------------------------------------------------
class Context:
    """Settings of this invocation and the per-process caches."""

    def __init__(self, args: argparse.Namespace, out_dir: str):
        self.args = args
        self.out_dir = out_dir
        self.prepared: dict[str, object] = {}  # data key -> PreparedData
        self.data_timing: dict[str, dict] = {}  # scale -> generation / preparation figures
        self.data_files: dict[str, str] = {}  # scale -> pickled PreparedData for workers
        self.results: dict = {}
        self.errors: dict = {}
        self.current_key: str | None = None
        self.current_scale: str | None = None
        self.fixed_data = None  # a worker: the PreparedData loaded from the parent's file

    def scale_overrides(self, scale: str) -> list[str]:
        if scale == "ml100k":
            return []
        a = self.args
        return ["data=synthetic", f"data.source.num_items={a.synthetic_items}", f"data.source.num_users={a.synthetic_users}",
                f"data.source.num_interactions={a.synthetic_interactions}"]  # fmt: skip


def install_prepare_cache(ctx: Context) -> None:
    """Route ``RetrievalDataModule.setup``'s call to ``prepare`` through a per-process cache
    (keyed by the data config), so configs of one scale share one preparation. The package's
    files are not changed; the first preparation of a scale is timed."""
    import twotower.data.datamodule as dmm

    if getattr(dmm.prepare, "_benchmark_cache", False):
        return
    original = dmm.prepare

    def cached_prepare(data, *args, **kwargs):
        if ctx.fixed_data is not None:
            return ctx.fixed_data
        key = ctx.current_key
        if key not in ctx.prepared:
            with PeakMemory() as mem:
                start = time.perf_counter()
                ctx.prepared[key] = original(data, *args, **kwargs)
            timing = ctx.data_timing.setdefault(ctx.current_scale, {})
            timing.update(prepare_s=time.perf_counter() - start, prepare_peak_extra_mb=mem.as_dict()["peak_extra_mb"])
        return ctx.prepared[key]

    cached_prepare._benchmark_cache = True
    dmm.prepare = cached_prepare


def data_key(cfg) -> str:
    from omegaconf import OmegaConf

    d = OmegaConf.to_container(cfg.data, resolve=True)
    keys = ("source", "positive_threshold", "split", "user_features", "item_features")
    return json.dumps({k: d.get(k) for k in keys}, sort_keys=True, default=str)


def make_run(ctx: Context, scale: str, overrides: list[str], with_module: bool = True):
    """The run ``train()`` would build: config, DataModule (set up), RetrievalModule (never
    attached to a Trainer: callers ``copy.deepcopy`` it per measurement)."""
    import lightning as L

    from twotower.config import build, check_loss_sampler, compose_config
    from twotower.module import RetrievalModule
    from twotower.train import build_datamodule

    install_prepare_cache(ctx)
    quiet()  # after Lightning's import, which sets its own log level
    cfg = compose_config(COMMON + ctx.scale_overrides(scale) + overrides, output_dir=ctx.out_dir)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    loss = build(cfg.loss)
    dm = build_datamodule(cfg, train_on=loss.trains_on)
    ctx.current_key, ctx.current_scale = data_key(cfg), scale
    if ctx.fixed_data is not None or ctx.current_key in ctx.prepared:
        dm.source = lambda: None  # the cached preparation ignores it
    else:
        generate = dm.source
        progress(f"  preparing the {scale} data (first use in this process)")

        def timed_source():
            with PeakMemory() as mem:
                start = time.perf_counter()
                data = generate()
            ctx.data_timing.setdefault(scale, {}).update(
                load_s=time.perf_counter() - start, load_peak_extra_mb=mem.as_dict()["peak_extra_mb"]
            )
            return data

        dm.source = timed_source
    dm.setup("fit")
    if ctx.current_scale in ctx.data_timing and "num_items" not in ctx.data_timing[scale]:
        t = ctx.data_timing[scale]
        t.update(num_users=dm.data.num_users, num_items=dm.data.num_items,
                 train_positives=len(dm.data.splits["train"].positives().user))  # fmt: skip
        progress(f"  {scale} data ready: load/generate {fmt(t.get('load_s'), '.1f')} s, prepare "
                 f"{fmt(t.get('prepare_s'), '.1f')} s, {t['num_users']:,} users x {t['num_items']:,} items")  # fmt: skip
    if not with_module:
        return cfg, dm, None
    check_loss_sampler(loss, dm.sampler)
    model = build(cfg.model.net)(dm.data)
    if hasattr(model, "read_features"):  # as train() does
        dm.read_only(model.read_features)
    module = RetrievalModule(
        model, loss, build(cfg.model.optimizer), list(cfg.eval.ks), dm.data.item_counts,
        frequency_estimator=getattr(dm.sampler, "frequency_estimator", None),
        eval_backend=eval_backend(cfg, dm, model),
    )  # fmt: skip
    return cfg, dm, module


def fresh_copy(module):
    """A deep copy of a template module. A tower compiled in place (``torch_compile``) keeps a
    compiled call bound to the original module: compile the copy's own towers again."""
    copied = copy.deepcopy(module)
    for tower in (getattr(copied.model, "user_tower", None), getattr(copied.model, "item_tower", None)):
        if getattr(tower, "_compiled_call_impl", None) is not None:
            tower.compile(dynamic=True)
    return copied


def eval_backend(cfg, dm, model) -> str:
    """The ranking backend ``train()`` would use (``eval.backend=auto`` resolved as it does, on CPU)."""
    from twotower import topk

    backend = cfg.eval.backend
    if hasattr(topk, "choose_backend"):
        backend = topk.choose_backend(backend, getattr(model, "factorizes", False), dm.data.num_items, False)
        if backend == "faiss":
            dm.max_eval_scores = None  # as train() does: FAISS bounds its own memory, larger user chunks
    return backend


def make_trainer(ctx: Context, cfg, **kwargs):
    from twotower.config import build

    common = dict(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                  accelerator="cpu", devices=1)  # fmt: skip
    return build(cfg.trainer, default_root_dir=ctx.out_dir, **{**common, **kwargs})


class EpochRecord:
    """One training epoch: wall time from its start to its end (everything: the iterator's
    set-up, such as the epoch's permutation of all examples, every batch's construction and
    step, epoch hooks) and the time stamp at the start of every step with the step's batch size.
    Between two consecutive step starts lie exactly one step and one batch construction, so
    ``steady_*`` leave out the per-epoch set-up, which a real epoch of thousands of steps
    amortizes but an epoch cut to ``--steps`` batches would not."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.seconds = 0.0
        self.step_starts: list[float] = []
        self.sizes: list[int] = []

    def step(self, size: int) -> None:
        self.step_starts.append(time.perf_counter())
        self.sizes.append(size)

    def end(self) -> None:
        self.seconds = time.perf_counter() - self.start


def summarize_epochs(epochs: list[EpochRecord]) -> dict:
    """Per-step seconds and samples/s of timed epochs, over whole epochs and in steady state."""
    seconds = sum(e.seconds for e in epochs)
    steps = sum(len(e.sizes) for e in epochs)
    span = sum(e.step_starts[-1] - e.step_starts[0] for e in epochs if len(e.sizes) > 1)
    span_steps = sum(len(e.sizes) - 1 for e in epochs)
    span_samples = sum(sum(e.sizes[:-1]) for e in epochs)
    return {"epoch_seconds": seconds / len(epochs), "step_s": seconds / steps, "samples_per_s": sum(sum(e.sizes) for e in epochs) / seconds,
            "steady_step_s": span / span_steps if span_steps else None,
            "steady_samples_per_s": span_samples / span if span else None, "steps": steps}  # fmt: skip


def epoch_timer():
    import lightning as L

    class EpochTimer(L.Callback):
        """An :class:`EpochRecord` of every training epoch."""

        def __init__(self) -> None:
            self.epochs: list[EpochRecord] = []

        def on_train_epoch_start(self, trainer, pl_module) -> None:
            self.epochs.append(EpochRecord())

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            self.epochs[-1].step(len(batch["rating"]))

        def on_train_epoch_end(self, trainer, pl_module) -> None:
            self.epochs[-1].end()

    return EpochTimer()


class Prebuilt:
    """Pre-built batches as one iterable (a list would be read by Lightning as several loaders)."""

    def __init__(self, batches: list[dict]):
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def epoch_batches(ctx: Context, scale: str) -> int | None:
    """Batches per training epoch: whole epochs on ML-100K (5 with --quick), --steps on synthetic."""
    if scale == "ml100k":
        return 5 if ctx.args.quick else None
    return ctx.args.steps


def tower_info(module) -> dict:
    from torch import nn

    out = {}
    for side in ("user_tower", "item_tower"):
        tower = getattr(module.model, side)
        linear = [m for m in tower.mlp if isinstance(m, nn.Linear)]
        emb = sum(p.numel() for p in [*(tower.table.parameters() if tower.table is not None else []), *tower.bags.parameters()])
        out[side] = {
            "params": sum(p.numel() for p in tower.parameters()),
            "embedding_params": emb,
            "mlp_params": sum(p.numel() for m in linear for p in m.parameters()),
            "inputs": tower.input_names,
            "mlp": [[m.in_features, m.out_features] for m in linear],
            "output_dim": tower.output_dim,
            "forward_mlp_flops_per_vector": sum(2 * m.in_features * m.out_features for m in linear),
        }
    return out


# ---------------------------------------------------------------------------------------------
# section: train
# ---------------------------------------------------------------------------------------------
def mm_peak(quick: bool, repeats: int) -> dict:
    """fp32 ``torch.mm`` GFLOP/s of an n x n product (best and median of several)."""
    import torch

    n = 1024 if quick else 2048
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    times = []
    for _ in range(max(3, repeats + 2)):
        start = time.perf_counter()
        torch.mm(a, b)
        times.append(time.perf_counter() - start)
    flop = 2 * n**3
    return {"n": n, "best_gflops": flop / min(times) / 1e9, "median_gflops": flop / median(times) / 1e9,
            "threads": torch.get_num_threads()}  # fmt: skip


def bench_batches(dm, repeats: int, limit: int | None) -> dict:
    """Iterate ``train_dataloader()`` with no model: batch construction alone. Whole passes
    (the epoch's permutation included); with ``limit``, also the steady rate between the
    first and the last batch (the permutation of every example left out, as in training)."""
    def one_pass(collect: bool = False):
        start, n, b, cols, uniq, stamps = time.perf_counter(), 0, 0, [], [], []
        for batch in dm.train_dataloader():
            stamps.append(time.perf_counter())
            n, b = n + len(batch["rating"]), b + 1
            if collect:
                cols.append(batch["valid"].shape[1] if "valid" in batch else 0)
                uniq.append(len(batch["extra"]["index"]) if "extra" in batch else 0)
            if limit and b >= limit:
                break
        steady = (stamps[-1] - stamps[0]) / (b - 1) if b > 1 else None
        return time.perf_counter() - start, b, n, cols, uniq, steady

    *_, cols, uniq, _ = one_pass(collect=True)  # warm-up, and what the batches hold
    runs = [one_pass() for _ in range(repeats)]
    sec = median(r[0] for r in runs)
    steady = median(r[5] for r in runs)
    return {"seconds": sec, "batches": runs[0][1], "samples": runs[0][2], "pass_batches_per_s": runs[0][1] / sec,
            "steady_batches_per_s": 1 / steady if steady else None,
            "batches_per_s": runs[0][1] / sec if limit is None or not steady else 1 / steady,
            "basis": "epoch" if limit is None or not steady else "steady", "samples_per_s": runs[0][2] / sec,
            "mean_negative_columns": statistics.fmean(cols) if cols else 0,
            "mean_unique_sampled_items": statistics.fmean(uniq) if uniq else 0}  # fmt: skip


def flops_per_sample(towers: dict, batch_size: int, columns: float, unique_extra: float) -> dict:
    """Matmul FLOPs of one training example: forward = user MLP + item MLP (the positive, plus
    this example's share of the distinct sampled negatives) + scoring (2 D per dot product: the
    positive and the C negative columns); forward + backward ~ 3 x forward."""
    fu = towers["user_tower"]["forward_mlp_flops_per_vector"]
    fi = towers["item_tower"]["forward_mlp_flops_per_vector"]
    d = towers["user_tower"]["output_dim"]
    forward = fu + fi * (1 + unique_extra / batch_size) + 2 * d * (1 + columns)
    return {"forward": forward, "forward_backward": 3 * forward, "user_mlp": fu, "item_mlp": fi,
            "scoring": 2 * d * (1 + columns), "dim": d, "negative_columns": columns}  # fmt: skip


def prepare_train_config(ctx: Context, scale: str, name: str) -> dict:
    """A configuration's run (config, DataModule, template module) and its static facts,
    batch construction measured; :func:`train_repeat` then times it."""
    label, overrides = CONFIGS[name]
    args = ctx.args
    cfg, dm, template = make_run(ctx, scale, overrides)
    limit = epoch_batches(ctx, scale)
    info = {"label": label, "overrides": overrides, "batch_size": dm.batch_size, "train_examples": len(dm.train_examples.user),
            "num_users": dm.data.num_users, "num_items": dm.data.num_items, "batches_per_epoch": limit or len(dm.train_dataloader()),
            "towers": tower_info(template), "lr": float(cfg.model.optimizer.lr)}  # fmt: skip
    info["params"] = {side: info["towers"][side]["params"] for side in ("user_tower", "item_tower")}
    info["batch_construction"] = bench_batches(dm, args.repeats, limit)
    return {"name": name, "scale": scale, "cfg": cfg, "dm": dm, "template": template, "limit": limit, "info": info,
            "fits": [], "commands": [], "evals": {"val": [], "test": []}}  # fmt: skip


def train_repeat(ctx: Context, run: dict, rep: int) -> None:
    """One timed repetition of a prepared configuration: ``1 + --epochs`` epochs from a
    fresh copy of the template (the first is the warm-up), then (ML-100K) full ranking."""
    args, cfg, dm, info = ctx.args, run["cfg"], run["dm"], run["info"]
    progress(f"  train {run['scale']} {run['name']}: repeat {rep + 1}/{args.repeats} ({1 + args.epochs} epochs of "
             f"{info['batches_per_epoch']} batches)")  # fmt: skip
    module = fresh_copy(run["template"])
    timer = epoch_timer()
    fit = make_trainer(ctx, cfg, max_epochs=1 + args.epochs, limit_val_batches=0, callbacks=[timer],
                       limit_train_batches=run["limit"] or 1.0)  # fmt: skip
    fit.fit(module, datamodule=dm)
    run["fits"].append(summarize_epochs(timer.epochs[1:]))
    if args.command:
        run["commands"].append(command_repeat(ctx, run, rep))
    if run["scale"] == "ml100k":  # full ranking of the whole catalogue, as before (synthetic: see the eval section)
        ev = make_trainer(ctx, cfg)
        for split, evaluate in (("val", ev.validate), ("test", ev.test)):
            users = len(dm.data.eval_sets[split].users)
            start = time.perf_counter()
            evaluate(module, datamodule=dm, verbose=False)
            run["evals"][split].append({"seconds": time.perf_counter() - start, "users": users})


def command_repeat(ctx: Context, run: dict, rep: int) -> dict:
    """``--command``: the same configuration through the real command's ``twotower.train.train``
    (its callbacks, CSV logger, checkpoints, progress bar, validation after every epoch and the
    final test), ``1 + --epochs`` epochs; its steady-state steps. Its output goes to a directory
    of its own under the benchmark's temporary directory, its progress bar and tables to a buffer."""
    from twotower.config import compose_config
    from twotower.train import train

    args, name, scale = ctx.args, run["name"], run["scale"]
    limits = [] if run["limit"] is None else [f"trainer.limit_train_batches={run['limit']}", "trainer.limit_val_batches=1",
                                              "trainer.limit_test_batches=1"]  # fmt: skip
    overrides = COMMON + ctx.scale_overrides(scale) + CONFIGS[name][1] + limits + [
        f"trainer.max_epochs={1 + args.epochs}", "eval.patience=null"]  # fmt: skip
    cfg = compose_config(overrides, output_dir=os.path.join(ctx.out_dir, "command", f"{scale}_{name}_{rep}"))
    ctx.current_key, ctx.current_scale = data_key(cfg), scale  # the cached preparation of this scale
    timer = epoch_timer()
    with contextlib.redirect_stdout(io.StringIO()):
        train(cfg, callbacks=[timer])
    return summarize_epochs(timer.epochs[1:])


def summarize_train_config(ctx: Context, run: dict, peak: dict) -> dict:
    """Medians over the repetitions, the batch-construction ratio and the FLOP rate."""
    args, dm, info, fits, limit = ctx.args, run["dm"], run["info"], run["fits"], run["limit"]
    info["train"] = {k: median(f[k] for f in fits) for k in fits[0]}
    info["train"].update(timed_epochs=args.epochs, repeats=args.repeats, runs=fits)
    # Whole epochs (ML-100K, as earlier versions of this script); steady state where an epoch is cut short.
    info["train"]["basis"] = "epoch" if limit is None or fits[0]["steady_step_s"] is None else "steady"
    samples = info["train"]["samples_per_s"] if info["train"]["basis"] == "epoch" else info["train"]["steady_samples_per_s"]
    step_s = info["train"]["step_s"] if info["train"]["basis"] == "epoch" else info["train"]["steady_step_s"]
    info["train"]["reported_samples_per_s"] = samples
    info["train"]["reported_step_s"] = step_s
    bc = info["batch_construction"]
    info["build_over_train"] = (bc["pass_batches_per_s"] if info["train"]["basis"] == "epoch" else bc["batches_per_s"]) * step_s
    if run["commands"]:  # steady state on both sides: the command's epochs also hold their validation
        steady = median(c["steady_step_s"] for c in run["commands"])
        info["command"] = {"steady_step_s": steady, "steady_samples_per_s": median(c["steady_samples_per_s"] for c in run["commands"]),
                           "over_fit": steady / info["train"]["steady_step_s"], "runs": run["commands"]}  # fmt: skip
    for split, runs in run["evals"].items():
        if runs:
            sec = median(r["seconds"] for r in runs)
            info[split] = {"seconds": sec, "users": runs[0]["users"], "scores_per_s": runs[0]["users"] * info["num_items"] / sec}
    fl = flops_per_sample(info["towers"], dm.batch_size, bc["mean_negative_columns"], bc["mean_unique_sampled_items"])
    achieved = samples * fl["forward_backward"] / 1e9
    info["compute"] = {"flops_per_sample": fl, "achieved_gflops": achieved, "mm_peak_gflops": peak["best_gflops"],
                       "fraction_of_mm_peak": achieved / peak["best_gflops"]}  # fmt: skip
    progress(f"  train {run['scale']} {run['name']}: {samples:,.0f} samples/s, batch construction "
             f"{bc['batches_per_s']:,.1f} batches/s = {info['build_over_train']:.1f}x what training consumes")  # fmt: skip
    return info


def section_train(ctx: Context) -> dict:
    import torch

    peak = mm_peak(ctx.args.quick, ctx.args.repeats)
    progress(f"train: torch.mm {peak['n']}x{peak['n']} fp32: best {peak['best_gflops']:.1f} GFLOP/s "
             f"(median {peak['median_gflops']:.1f}), {torch.get_num_threads()} threads")  # fmt: skip
    out = {"mm_peak": peak, "scales": {}}
    for scale in ctx.args.scale:
        runs = [prepare_train_config(ctx, scale, name) for name in ctx.args.configs]
        # Repetitions interleaved across configurations, in reversed order every other round: this
        # machine drifts by 10-20 % within minutes, which back-to-back repeats would fold into the
        # differences between configurations.
        for rep in range(ctx.args.repeats):
            for run in runs if rep % 2 == 0 else runs[::-1]:
                train_repeat(ctx, run, rep)
        out["scales"][scale] = {}
        for run in runs:
            out["scales"][scale][run["name"]] = summarize_train_config(ctx, run, peak)
        ctx.results["train"] = out  # partial results survive a failure later on
    return out


def print_train(res: dict) -> None:
    for scale, configs in res["scales"].items():
        header = ["config", "batch", "user/item params", "build batch/s", "train samp/s", "ms/step", "epoch s",
                  "build/train x", "val s", "test s", "test scores/s"]  # fmt: skip
        rows = []
        for name, r in configs.items():
            bc, p, t = r["batch_construction"], r["params"], r["train"]
            build = bc["pass_batches_per_s"] if t["basis"] == "epoch" else bc["batches_per_s"]
            rows.append([f"{name}: {r['label']}", r["batch_size"], f"{p['user_tower']:,} / {p['item_tower']:,}",
                         fmt(build, ",.1f"), fmt(t["reported_samples_per_s"]), fmt(1000 * t["reported_step_s"], ",.2f"),
                         fmt(t["epoch_seconds"], ".3f"), fmt(r["build_over_train"], ".1f"),
                         fmt(r.get("val", {}).get("seconds"), ".3f"), fmt(r.get("test", {}).get("seconds"), ".3f"),
                         fmt(r.get("test", {}).get("scores_per_s"))])  # fmt: skip
        first = next(iter(configs.values()))
        basis = ("whole epochs (epoch start to end)" if first["train"]["basis"] == "epoch" else
                 f"steady state (step start to step start; epochs of {first['batches_per_epoch']} batches, whose "
                 "per-epoch permutation of all examples is left out)")  # fmt: skip
        print(table(f"train [{scale}]: Trainer.fit; {first['num_users']:,} users x {first['num_items']:,} items; "
                    f"{first['batches_per_epoch']} batches per epoch; rates over {basis}; build/train = batch construction "
                    f"rate / training's batch rate (target >= 10)", header, rows))  # fmt: skip
    rows = [[scale, name, fmt(1000 * r["train"]["steady_step_s"], ",.2f"), fmt(1000 * r["command"]["steady_step_s"], ",.2f"),
             fmt(r["command"]["steady_samples_per_s"]), fmt(r["command"]["over_fit"], ".2f")]
            for scale, configs in res["scales"].items() for name, r in configs.items() if "command" in r]  # fmt: skip
    if rows:
        print(table("train --command: the real command (twotower.train.train: callbacks, CSV logger, checkpoints, progress "
                    "bar, validation every epoch) against the bare Trainer.fit above; steady state, ms per step",
                    ["scale", "config", "Trainer.fit", "command", "command samp/s", "command / fit"], rows, left=2))  # fmt: skip
    peak = res["mm_peak"]
    rows = []
    for scale, configs in res["scales"].items():
        for name, r in configs.items():
            c, fl = r["compute"], r["compute"]["flops_per_sample"]
            rows.append([scale, name, fl["dim"], fmt(fl["negative_columns"], ",.0f"),
                         fmt(r["batch_construction"]["mean_unique_sampled_items"], ",.0f"), fmt(fl["forward"] / 1e3, ",.1f"),
                         fmt(fl["forward_backward"] / 1e3, ",.1f"), fmt(c["achieved_gflops"], ",.2f"),
                         fmt(100 * c["fraction_of_mm_peak"], ".2f")])  # fmt: skip
    print(table(f"train: matmul FLOPs per sample (fwd+bwd ~ 3 x fwd: towers' MLPs + 2D per scored column) against "
                f"torch.mm peak {peak['best_gflops']:.1f} GFLOP/s ({peak['n']}^2 fp32, best of runs)",
                ["scale", "config", "D", "neg cols C", "uniq sampled/batch", "fwd kFLOP/samp", "fwd+bwd kFLOP/samp",
                 "achieved GFLOP/s", "% of peak"], rows, left=2))  # fmt: skip
    ml = res["scales"].get("ml100k", {}).get("in_batch")
    if ml:
        lines = ["\n== train: the two-tower listwise in-batch ML-100K configuration"]
        for side in ("user_tower", "item_tower"):
            t = ml["towers"][side]
            mlp = " -> ".join([str(t["mlp"][0][0])] + [str(o) for _, o in t["mlp"]]) if t["mlp"] else "none"
            lines.append(f"{side}: inputs {', '.join(t['inputs'])}; MLP {mlp}; {t['params']:,} params "
                         f"({t['embedding_params']:,} in embeddings, {t['mlp_params']:,} in the MLP); "
                         f"{t['forward_mlp_flops_per_vector']:,} forward MLP FLOPs per vector")  # fmt: skip
        fl, c = ml["compute"]["flops_per_sample"], ml["compute"]
        lines.append(f"per sample at batch {ml['batch_size']}: forward {fl['forward']:,.0f} FLOPs (user MLP {fl['user_mlp']:,}, "
                     f"item MLP {fl['item_mlp']:,}, {ml['batch_size']} + 1 logits x 2D = {fl['scoring']:,.0f}); fwd+bwd "
                     f"~{fl['forward_backward']:,.0f}; at {ml['train']['reported_samples_per_s']:,.0f} samples/s = "
                     f"{c['achieved_gflops']:.2f} GFLOP/s = {100 * c['fraction_of_mm_peak']:.2f}% of the measured fp32 "
                     f"matmul peak ({c['mm_peak_gflops']:.1f} GFLOP/s)")  # fmt: skip
        print("\n".join(lines))


# ---------------------------------------------------------------------------------------------
# section: loop (Lightning against a hand-written loop)
# ---------------------------------------------------------------------------------------------
def hand_loss(model, loss_fn, batch):
    """One batch's loss, written out: towers, candidate scores, ScoredBatch, loss."""
    from twotower.candidates import score_candidates
    from twotower.losses import ScoredBatch

    if any(k in batch for k in ("hardest", "stream_items")) or batch.get("cross_device"):
        raise BenchmarkError("the hand-written loop covers neither online_hardest, logq=streaming nor DDP")
    users = model.encode_users(batch["user"])
    positives = model.encode_items(batch["pos"])
    extra = None
    if "extra" in batch:
        extra = model.encode_items(batch["extra"]).index_select(0, batch["extra_inverse"])
        if batch["extra_per_example"]:
            extra = extra.view(len(users), -1, extra.shape[-1])
    in_batch = positives if batch["in_batch"] else None
    pos, neg = score_candidates(users, positives, extra, in_batch, model.score_pairs, model.score_matrix)
    scored = ScoredBatch(pos=pos, neg=neg, neg_valid=batch.get("valid"), pos_logq=batch.get("pos_logq"),
                         neg_logq=batch.get("neg_logq"), rating=batch["rating"],
                         pos_column=batch.get("pos_column"))  # fmt: skip
    return loss_fn(scored)


def hand_epochs(model, loss_fn, optimizer, batches, steps: int, epochs: int) -> list[EpochRecord]:
    """``1 + epochs`` epochs of at most ``steps`` batches (a fresh iterator each, as Lightning
    does); returns the records of the timed epochs (the first is a warm-up)."""
    model.train()
    out = []
    for _ in range(1 + epochs):
        record = EpochRecord()
        for batch in itertools.islice(iter(batches), steps):
            record.step(len(batch["rating"]))
            optimizer.zero_grad(set_to_none=True)
            loss = hand_loss(model, loss_fn, batch)
            loss.backward()
            optimizer.step()
        record.end()
        out.append(record)
    return out[1:]


def bench_loop_config(ctx: Context, scale: str, name: str) -> dict:
    import torch

    args = ctx.args
    label, overrides = CONFIGS[name]
    cfg, dm, template = make_run(ctx, scale, overrides)
    opt_cfg = cfg.model.optimizer
    steps = epoch_batches(ctx, scale) or len(dm.train_dataloader())
    prebuilt = Prebuilt(list(itertools.islice(iter(dm.train_dataloader()), steps)))
    # The same loss for the same batch and weights (same random stream for the losses that draw).
    check = fresh_copy(template)
    torch.manual_seed(0)
    platform_loss = check.batch_loss(prebuilt.batches[0]).item()
    torch.manual_seed(0)
    written_loss = hand_loss(check.model, check.loss, prebuilt.batches[0]).item()
    res = {"label": label, "overrides": overrides, "steps_per_epoch": steps, "timed_epochs": args.epochs, "repeats": args.repeats,
           "batch_size": dm.batch_size, "lr": float(opt_cfg.lr),
           "loss_check": {"platform": platform_loss, "hand_written": written_loss,
                          "abs_diff": abs(platform_loss - written_loss)}}  # fmt: skip
    times = {"lightning_a": [], "hand_a": [], "lightning_b": [], "hand_b": []}
    for rep in range(args.repeats):
        progress(f"  loop {scale} {name}: repeat {rep + 1}/{args.repeats} (4 runs of {1 + args.epochs} x {steps} steps)")
        for variant in ("a", "b"):
            module = fresh_copy(template)
            timer = epoch_timer()
            fit = make_trainer(ctx, cfg, max_epochs=1 + args.epochs, limit_val_batches=0, callbacks=[timer],
                               limit_train_batches=steps)  # fmt: skip
            if variant == "a":
                fit.fit(module, datamodule=dm)
            else:
                fit.fit(module, train_dataloaders=prebuilt)
            times[f"lightning_{variant}"].append(summarize_epochs(timer.epochs[1:]))
            module = fresh_copy(template)
            # The config's own optimizer (class and every setting), so only the loop differs.
            optimizer = module.optimizer_factory(params=module.model.parameters())
            source = dm.train_dataloader() if variant == "a" else prebuilt
            times[f"hand_{variant}"].append(summarize_epochs(hand_epochs(module.model, module.loss, optimizer, source, steps, args.epochs)))
    for key, runs in times.items():
        res[f"{key}_step_ms"] = 1000 * median(r["steady_step_s"] for r in runs)
        res[f"{key}_epoch_step_ms"] = 1000 * median(r["step_s"] for r in runs)
        res[f"{key}_runs"] = runs
    for v in ("a", "b"):
        res[f"ratio_{v}"] = res[f"lightning_{v}_step_ms"] / res[f"hand_{v}_step_ms"]
        res[f"ratio_{v}_epoch"] = res[f"lightning_{v}_epoch_step_ms"] / res[f"hand_{v}_epoch_step_ms"]
    progress(f"  loop {scale} {name}: Lightning / hand-written = {res['ratio_a']:.2f} (with batch construction), "
             f"{res['ratio_b']:.2f} (pre-built batches)")  # fmt: skip
    return res


def section_loop(ctx: Context) -> dict:
    out = {}
    for scale in ctx.args.scale:
        out[scale] = {}
        for name in ctx.args.loop_configs:
            out[scale][name] = bench_loop_config(ctx, scale, name)
            ctx.results["loop"] = out
    return out


def print_loop(res: dict) -> None:
    rows = []
    for scale, configs in res.items():
        for name, r in configs.items():
            rows.append([scale, name, r["batch_size"], r["steps_per_epoch"], fmt(r["lightning_a_step_ms"], ".3f"),
                         fmt(r["hand_a_step_ms"], ".3f"), fmt(r["ratio_a"], ".2f"), fmt(r["ratio_a_epoch"], ".2f"),
                         fmt(r["lightning_b_step_ms"], ".3f"), fmt(r["hand_b_step_ms"], ".3f"), fmt(r["ratio_b"], ".2f"),
                         fmt(r["ratio_b_epoch"], ".2f"), fmt(r["loss_check"]["abs_diff"], ".1e")])  # fmt: skip
    print(table("loop: ms per training step, Lightning vs hand-written (same towers, loss object, batches, Adam, lr), "
                "steady state (step start to step start); (a) both build their batches (dm.train_dataloader()), (b) both "
                "iterate the same pre-built batches; ratio = Lightning / hand (target <= 1.25); 'epoch' ratios: whole "
                "epochs, per-epoch work (iterator set-up, epoch hooks) included",
                ["scale", "config", "batch", "steps/epoch", "(a) L ms", "(a) hand ms", "(a) ratio", "(a) epoch", "(b) L ms",
                 "(b) hand ms", "(b) ratio", "(b) epoch", "|loss diff|"], rows, left=2))  # fmt: skip


# ---------------------------------------------------------------------------------------------
# section: samplers
# ---------------------------------------------------------------------------------------------
def section_samplers(ctx: Context) -> dict:
    import torch

    from twotower.candidates import build_layout
    from twotower.config import build, compose_config
    from twotower.samplers import TrainingStats

    args = ctx.args
    out = {}
    for scale in args.scale:
        cfg, dm, _ = make_run(ctx, scale, [], with_module=False)
        data, train, ex = dm.data, dm.data.splits["train"], dm.train_examples
        stats = TrainingStats(data.item_counts, train.user, train.item, train.rating, data.num_users)
        generator = torch.Generator().manual_seed(0)
        order = torch.randperm(len(ex.user), generator=generator)
        limit = epoch_batches(ctx, scale) if scale == "ml100k" else args.sampler_batches
        num_batches = min(limit or len(order) // dm.batch_size, max(1, len(order) // dm.batch_size))
        batches = [(ex.user[order[i * dm.batch_size : (i + 1) * dm.batch_size]], ex.item[order[i * dm.batch_size : (i + 1) * dm.batch_size]])
                   for i in range(num_batches)]  # fmt: skip
        out[scale] = {}
        for name in args.samplers:
            scfg = compose_config(COMMON + ctx.scale_overrides(scale) + [f"sampler={name}"], output_dir=ctx.out_dir)
            sampler = build(scfg.sampler)(stats)
            note = None
            if name == "hard":
                sampler.epoch = sampler.warmup_epochs  # past the warm-up: hard negatives are drawn
                sampler.update(torch.randint(data.num_items, (data.num_users, sampler.window), generator=generator))
                note = f"random mined window of {sampler.window} items per user (ranks {sampler.lo}-{sampler.hi})"
            if name == "exposed_unclicked" and cfg.data.positive_threshold is None:
                note = ("every interaction is a positive in this data (positive_threshold null): the platform refuses this "
                        "sampler here; timed mechanically")  # fmt: skip

            def one_pass(batch_list):
                sample_s, cells, drawn = 0.0, 0, 0
                start = time.perf_counter()
                for users, items in batch_list:
                    t = time.perf_counter()
                    negatives = sampler.sample(users, items, generator)
                    sample_s += time.perf_counter() - t
                    layout = build_layout(users, items, negatives, data.is_train_positive)
                    cells += 0 if layout.valid is None else layout.valid.numel()
                    drawn += 0 if negatives.items is None else negatives.items.numel()
                return time.perf_counter() - start, sample_s, cells, drawn

            one_pass(batches[: min(5, len(batches))])  # warm-up
            runs = [one_pass(batches) for _ in range(args.repeats)]
            sec = median(r[0] for r in runs)
            cells, drawn = runs[0][2], runs[0][3]
            out[scale][name] = {"batches": len(batches), "batch_size": dm.batch_size, "seconds": sec,
                                "sample_seconds": median(r[1] for r in runs), "batches_per_s": len(batches) / sec,
                                "negatives_per_s": cells / sec, "negative_cells_per_batch": cells / len(batches),
                                "sampled_ids_per_s": drawn / sec, "note": note,
                                "config": {k: v for k, v in dict(scfg.sampler).items() if k not in ("_target_", "_partial_")}}  # fmt: skip
            progress(f"  samplers {scale} {name}: {cells / sec:,.0f} negatives/s, {len(batches) / sec:,.1f} batches/s")
            ctx.results["samplers"] = out
    return out


def print_samplers(res: dict) -> None:
    rows = []
    for scale, samplers in res.items():
        for name, r in samplers.items():
            rows.append([scale, name, r["batch_size"], r["batches"], fmt(r["negative_cells_per_batch"] / r["batch_size"], ",.0f"),
                         fmt(r["batches_per_s"], ",.1f"), fmt(r["negatives_per_s"]), fmt(r["sampled_ids_per_s"]),
                         fmt(100 * r["sample_seconds"] / r["seconds"], ".0f"), r["note"] or ""])  # fmt: skip
    print(table("samplers: sampler.sample + build_layout over real batches; negatives/s = [B, C] candidate cells given "
                "to the loss per second; sampled ids/s = ids the sampler drew",
                ["scale", "sampler", "batch", "batches", "C", "batches/s", "negatives/s", "sampled ids/s", "% in sample",
                 "note"], rows, left=2, last_left=True))  # fmt: skip


# ---------------------------------------------------------------------------------------------
# section: eval
# ---------------------------------------------------------------------------------------------
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


def bench_platform_test(ctx: Context, scale: str, backend: str) -> dict:
    cfg, dm, template = make_run(ctx, scale, [f"eval.backend={backend}"])
    users = len(dm.data.eval_sets["test"].users)
    times = []
    for rep in range(1 + ctx.args.repeats):  # the first is a warm-up
        module = fresh_copy(template)
        ev = make_trainer(ctx, cfg)
        start = time.perf_counter()
        ev.test(module, datamodule=dm, verbose=False)
        if rep:
            times.append(time.perf_counter() - start)
    sec = statistics.median(times)
    return {"backend": backend, "users": users, "items": dm.data.num_items, "seconds": sec,
            "scores_per_s": users * dm.data.num_items / sec, "seconds_all": times}  # fmt: skip


def section_eval(ctx: Context) -> dict:
    out = {}
    if "ml100k" in ctx.args.scale:
        out["ml100k"] = {}
        for backend in ("torch", "faiss"):
            progress(f"  eval ml100k: trainer.test, eval.backend={backend}")
            out["ml100k"][backend] = bench_platform_test(ctx, "ml100k", backend)
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


# ---------------------------------------------------------------------------------------------
# section: memory (fresh processes)
# ---------------------------------------------------------------------------------------------
def data_file(ctx: Context, scale: str) -> str:
    """The scale's PreparedData pickled for worker processes (prepared here once)."""
    import pickle

    if scale not in ctx.data_files:
        make_run(ctx, scale, [], with_module=False)
        path = os.path.join(ctx.out_dir, f"prepared_{scale}.pkl")
        with open(path, "wb") as f:
            pickle.dump(ctx.prepared[ctx.current_key], f, protocol=pickle.HIGHEST_PROTOCOL)
        ctx.data_files[scale] = path
    return ctx.data_files[scale]


def section_memory(ctx: Context) -> dict:
    args = ctx.args
    out = {}
    for scale in args.scale:
        out[scale] = {"train": {}, "eval": {}}
        path = data_file(ctx, scale)
        for name in args.memory_configs:
            steps = epoch_batches(ctx, scale) or args.steps
            progress(f"  memory {scale}: training {name} in a fresh process ({2 * steps} steps)")
            params = {"overrides": ctx.scale_overrides(scale) + CONFIGS[name][1], "data_file": path, "steps": steps,
                      "threads": args.threads_effective}  # fmt: skip
            out[scale]["train"][name] = run_worker(ctx, "train_memory", params, f"memory train {name}")
            ctx.results["memory"] = out
        chunks = None if scale == "ml100k" else args.mem_eval_chunks
        progress(f"  memory {scale}: trainer.test in a fresh process ({'all' if chunks is None else chunks} user chunks)")
        params = {"overrides": ctx.scale_overrides(scale), "data_file": path, "chunks": chunks, "threads": args.threads_effective}
        out[scale]["eval"]["trainer.test"] = run_worker(ctx, "eval_memory", params, "memory eval")
        ctx.results["memory"] = out
    if "synthetic" in args.scale and "eval" in ctx.results and "synthetic" in ctx.results["eval"]:
        for m, r in ctx.results["eval"]["synthetic"]["methods"].items():
            out["synthetic"]["eval"][f"vectors {m}"] = {"memory": r["memory"], "rss_data_mb": r["rss_data_mb"],
                                                       "lifetime_peak_mb": r["lifetime_peak_mb"], "from": "eval section"}  # fmt: skip
    return out


def print_memory(res: dict) -> None:
    rows = []
    for scale, kinds in res.items():
        for kind, entries in kinds.items():
            for name, r in entries.items():
                mem = r["memory"]
                what = r.get("what", "")
                rows.append([scale, kind, name, fmt(r.get("rss_data_mb"), ",.0f"), fmt(mem["peak_mb"], ",.0f"),
                             fmt(mem["peak_extra_mb"], ",.0f"), fmt(r.get("lifetime_peak_mb"), ",.0f"), what])  # fmt: skip
    print(table("memory: peak RSS in fresh processes; RSS data = after imports and loading the prepared data (vectors: "
                "after generating them); peak = VmHWM during the measured work; extra = peak - RSS data (includes "
                "modules Lightning imports on its first fit/test); process = the process's own peak (VmHWM)",
                ["scale", "kind", "measurement", "RSS data MB", "peak MB", "peak extra MB", "process MB", "what"],
                rows, left=3, last_left=True))  # fmt: skip


# ---------------------------------------------------------------------------------------------
# section: startup
# ---------------------------------------------------------------------------------------------
# Runs the real console entry (Hydra parses sys.argv) with one extra callback; the parent
# measures from Popen to the time stamps this writes. Nothing of the package is changed.
STARTUP_CHILD = r"""
import json, os, sys, time
stamps = {"child_code_start": time.time()}
out_path = sys.argv[1]
sys.argv = ["twotower-train", *sys.argv[2:]]
import lightning as L
import twotower.train as tt
stamps["imports_done"] = time.time()

class FirstStep(L.Callback):
    def on_fit_start(self, trainer, pl_module):
        stamps["fit_start"] = time.time()
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        stamps.setdefault("first_batch_start", time.time())
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        stamps["first_step_end"] = time.time()
        with open(out_path, "w") as f:
            json.dump(stamps, f)
        sys.stdout.flush(); sys.stderr.flush()
        os._exit(0)  # the measurement ends here: no test, no more steps

_train = tt.train
def train(cfg, callbacks=None):
    stamps["train_entered"] = time.time()
    return _train(cfg, callbacks=[FirstStep(), *(callbacks or [])])
tt.train = train
tt.main()
raise SystemExit("the run ended without a training step")
"""


def timed_command(ctx: Context, cmd: list[str], label: str) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=child_env(ctx), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise BenchmarkError(f"{label}: exit status {proc.returncode}: {proc.stderr[-2000:]}")
    return time.perf_counter() - start


def section_startup(ctx: Context) -> dict:
    args = ctx.args
    py = sys.executable
    out = {"method": "wall time from Popen (parent) to time stamps written by a callback registered through a wrapper "
                     "of twotower.train.train, in a process that runs twotower.train.main() (the console entry, Hydra "
                     "CLI overrides); the child exits at the end of the first step",
           "interpreter_s": [], "import_twotower_train_s": [], "scales": {}}  # fmt: skip
    for rep in range(args.repeats):
        progress(f"  startup: python -c pass / import twotower.train, repeat {rep + 1}/{args.repeats}")
        out["interpreter_s"].append(timed_command(ctx, [py, "-c", "pass"], "python -c pass"))
        out["import_twotower_train_s"].append(timed_command(ctx, [py, "-c", "import twotower.train"], "import twotower.train"))
    for scale in args.scale:
        runs = []
        repeats = args.repeats if scale == "ml100k" else 1  # synthetic: data preparation dominates; once
        for rep in range(repeats):
            progress(f"  startup {scale}: twotower.train.main() to the end of the first step, repeat {rep + 1}/{repeats}")
            stamp_path = os.path.join(ctx.out_dir, f"startup_{scale}_{rep}.json")
            overrides = ctx.scale_overrides(scale) + COMMON + [
                f"hydra.run.dir={os.path.join(ctx.out_dir, f'startup_run_{scale}_{rep}')}",
                "+trainer.max_steps=1", "trainer.enable_progress_bar=false", "trainer.accelerator=cpu"]  # fmt: skip
            start_wall = time.time()
            start = time.perf_counter()
            proc = subprocess.run([py, "-c", STARTUP_CHILD, stamp_path, *overrides], env=child_env(ctx),
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
            total = time.perf_counter() - start
            if proc.returncode != 0 or not os.path.exists(stamp_path):
                raise BenchmarkError(f"startup {scale}: exit status {proc.returncode}, no time stamps: {proc.stderr[-3000:]}")
            with open(stamp_path) as f:
                st = json.load(f)
            rel = {k: v - start_wall for k, v in st.items()}
            runs.append({"to_first_step_end_s": rel["first_step_end"], "to_first_batch_start_s": rel.get("first_batch_start"),
                         "process_exit_s": total, "stamps_s": rel,
                         "stages_s": {"python_start": rel["child_code_start"],
                                      "imports": rel["imports_done"] - rel["child_code_start"],
                                      "hydra_config": rel["train_entered"] - rel["imports_done"],
                                      "data+model+trainer": rel["fit_start"] - rel["train_entered"],
                                      "fit_setup+first_batch": rel["first_batch_start"] - rel["fit_start"],
                                      "first_step": rel["first_step_end"] - rel["first_batch_start"]}})  # fmt: skip
            progress(f"  startup {scale}: first step done {rel['first_step_end']:.1f} s after launch")
        stages = {k: median(r["stages_s"][k] for r in runs) for k in runs[0]["stages_s"]}
        out["scales"][scale] = {"overrides": overrides, "repeats": repeats, "runs": runs, "stages_s": stages,
                                "to_first_step_end_s": median(r["to_first_step_end_s"] for r in runs)}  # fmt: skip
        ctx.results["startup"] = out
    out["interpreter_median_s"] = median(out["interpreter_s"])
    out["import_median_s"] = median(out["import_twotower_train_s"])
    return out


def print_startup(res: dict) -> None:
    rows = [["python -c pass", "-", fmt(res["interpreter_median_s"], ".2f")],
            ["python -c 'import twotower.train'", "-", fmt(res["import_median_s"], ".2f")]]  # fmt: skip
    for scale, r in res["scales"].items():
        st = r["stages_s"]
        detail = ", ".join(f"{k} {v:.2f}" for k, v in st.items())
        rows.append([f"command -> end of first step (n={r['repeats']})", scale, fmt(r["to_first_step_end_s"], ".2f"), detail])
    for row in rows[:2]:
        row.append("")
    print(table("startup: seconds from launching the process (python start + imports + Hydra config + data preparation + "
                "model build + Trainer set-up + first step)", ["what", "scale", "seconds", "stages (s, medians)"], rows, left=2, last_left=True))  # fmt: skip


# ---------------------------------------------------------------------------------------------
# workers: this script re-invoked in a fresh process
# ---------------------------------------------------------------------------------------------
def child_env(ctx: Context) -> dict:
    env = dict(os.environ, WANDB_MODE="disabled")
    if ctx.args.threads:
        env["OMP_NUM_THREADS"] = str(ctx.args.threads)
    return env


def run_worker(ctx: Context, kind: str, params: dict, label: str) -> dict:
    """Run ``kind`` in a fresh process; returns its result and its wall time."""
    args_path = tempfile.mktemp(suffix=".json", dir=ctx.out_dir)
    out_path = tempfile.mktemp(suffix=".json", dir=ctx.out_dir)
    with open(args_path, "w") as f:
        json.dump(params, f)
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", kind, "--worker-args", args_path, "--worker-out", out_path]
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

    from twotower.candidates import dot_matrix
    from twotower.metrics import rank_and_match
    from twotower.topk import build_faiss_index, faiss_top_k, torch_top_k

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
           "rank_and_match": f"score_matrix + twotower.metrics.rank_and_match per chunk of {chunk} users (trainer.test, torch)",
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


# ---------------------------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------------------------
def choices_list(allowed):
    def parse(text: str) -> list[str]:
        items = [t.strip() for t in text.split(",") if t.strip()]
        if not items:
            raise argparse.ArgumentTypeError(f"empty list; choose from {','.join(allowed)}")
        if "all" in items:
            return list(allowed)
        bad = [t for t in items if t not in allowed]
        if bad:
            raise argparse.ArgumentTypeError(f"unknown {', '.join(map(repr, bad))}; choose from {','.join(allowed)} (or all)")
        return list(dict.fromkeys(items))

    return parse


def positive_int(text: str) -> int:
    try:
        value = int(text.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value}: expected >= 1")
    return value


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sections", type=choices_list(SECTIONS), default=list(SECTIONS), help=f"comma list of {','.join(SECTIONS)} (default all)")
    p.add_argument("--scale", type=choices_list(SCALES), default=list(SCALES), help="comma list of ml100k,synthetic (default both)")
    p.add_argument("--configs", type=choices_list(tuple(CONFIGS)), default=DEFAULT_CONFIGS, help=f"train configs: {','.join(CONFIGS)} (default {','.join(DEFAULT_CONFIGS)})")
    p.add_argument("--loop-configs", type=choices_list(tuple(CONFIGS)), default=["in_batch", "uniform"], help="configs of the loop section (default in_batch,uniform)")
    p.add_argument("--samplers", type=choices_list(SAMPLERS), default=list(SAMPLERS), help=f"samplers: {','.join(SAMPLERS)}")
    p.add_argument("--eval-methods", type=choices_list(EVAL_METHODS), default=list(EVAL_METHODS), help=f"synthetic ranking methods: {','.join(EVAL_METHODS)}")
    p.add_argument("--memory-configs", type=choices_list(tuple(CONFIGS)), default=None, help="configs trained in the memory section (default in_batch,uniform,mc; --quick: in_batch)")
    p.add_argument("--out", default="benchmark-results.json", help="JSON results path (rewritten after every section)")
    p.add_argument("--repeats", type=positive_int, default=3, help="repetitions; medians are reported (default 3)")
    p.add_argument("--epochs", type=positive_int, default=3, help="timed training epochs per repetition, after 1 warm-up (default 3)")
    p.add_argument("--steps", type=positive_int, default=None, help="batches per training epoch at the synthetic scale (default 10; --quick 5)")
    p.add_argument("--sampler-batches", type=positive_int, default=None, help="batches per sampler pass at the synthetic scale (default 50; --quick 10)")
    p.add_argument("--command", action="store_true", help="train: also time each config through the real command's train() (its callbacks, logger, checkpoints, progress bar, validation)")
    p.add_argument("--quick", action="store_true", help="smoke run of every section: 1 repeat, 1 timed epoch, small synthetic sizes")
    p.add_argument("--threads", type=positive_int, default=None, help="torch (and FAISS) threads, also for child processes (default: torch's choice)")
    g = p.add_argument_group("synthetic scale")
    g.add_argument("--synthetic-items", type=positive_int, default=None, help="data.source.num_items (default 1,000,000; --quick 20,000)")
    g.add_argument("--synthetic-users", type=positive_int, default=None, help="data.source.num_users (default 100,000; --quick 5,000)")
    g.add_argument("--synthetic-interactions", type=positive_int, default=None, help="data.source.num_interactions (default 10,000,000; --quick 100,000)")
    g.add_argument("--eval-items", type=positive_int, default=None, help="catalogue of the synthetic ranking benchmark (default --synthetic-items)")
    g.add_argument("--eval-total-users", type=positive_int, default=None, help="users with vectors (default 100,000; --quick 5,000)")
    g.add_argument("--eval-users", type=positive_int, default=None, help="users timed, a prefix of them (default 2,048; --quick 1,000)")
    g.add_argument("--eval-full", action="store_true", help="time all --eval-total-users users (the full 100k x 1M)")
    g.add_argument("--eval-dim", type=positive_int, default=64, help="vector dimension (default 64)")
    g.add_argument("--eval-seen", type=positive_int, default=100, help="mean seen (masked) items per user (default 100; --quick 20)")
    g.add_argument("--eval-k", type=positive_int, default=100, help="top K (default 100)")
    g.add_argument("--mem-eval-chunks", type=positive_int, default=None, help="user chunks of trainer.test in the synthetic memory worker (default 10; --quick 2)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--worker-args", help=argparse.SUPPRESS)
    p.add_argument("--worker-out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return args
    q = args.quick

    def default(name, full, quick):
        if getattr(args, name) is None:
            setattr(args, name, quick if q else full)

    if q:
        args.repeats, args.epochs = 1, 1
    default("steps", 10, 5)
    default("sampler_batches", 50, 10)
    default("synthetic_items", 1_000_000, 20_000)
    default("synthetic_users", 100_000, 5_000)
    default("synthetic_interactions", 10_000_000, 100_000)
    default("eval_items", args.synthetic_items, args.synthetic_items)
    default("eval_total_users", 100_000, 5_000)
    default("eval_users", 2_048, 1_000)
    default("mem_eval_chunks", 10, 2)
    default("memory_configs", ["in_batch", "uniform", "mc"], ["in_batch"])
    if q and args.eval_seen == 100:
        args.eval_seen = 20
    if args.eval_full:
        args.eval_users = args.eval_total_users
    if args.eval_users > args.eval_total_users:
        p.error(f"--eval-users {args.eval_users} exceeds --eval-total-users {args.eval_total_users}")
    if args.eval_k >= args.eval_items:
        p.error(f"--eval-k {args.eval_k} must be below the catalogue size --eval-items {args.eval_items}")
    if args.synthetic_interactions > args.synthetic_users * args.synthetic_items:
        p.error("--synthetic-interactions exceeds users x items")
    if args.synthetic_interactions < 5 * args.synthetic_users:
        p.error("--synthetic-interactions must be at least 5 x --synthetic-users (min_user_interactions)")
    out_dir = os.path.dirname(os.path.abspath(args.out))
    if not os.path.isdir(out_dir):
        p.error(f"--out {args.out}: directory {out_dir} does not exist")
    return args


PRINTERS = {"train": print_train, "loop": print_loop, "samplers": print_samplers, "eval": print_eval,
            "memory": print_memory, "startup": print_startup}  # fmt: skip
RUNNERS = {"train": section_train, "loop": section_loop, "samplers": section_samplers, "eval": section_eval,
           "memory": section_memory, "startup": section_startup}  # fmt: skip


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        worker_main(args)
        return 0
    quiet()
    progress("importing torch, lightning and twotower")
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    args.threads_effective = torch.get_num_threads()
    torch.set_float32_matmul_precision("high")  # as twotower-train does
    load_before = os.getloadavg()  # other processes on the machine skew every figure
    env = {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"), "cpu": cpu_model(),
           "cpu_count": os.cpu_count(), "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
           "mem_total_mb": mem_total_mb(), "torch_threads": torch.get_num_threads(),
           "torch_interop_threads": torch.get_num_interop_threads(), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
           "cuda_available": torch.cuda.is_available(), "platform": platform.platform(), "versions": versions(),
           "loadavg_before": list(load_before)}  # fmt: skip
    try:
        import faiss

        env["faiss_threads"] = faiss.omp_get_max_threads()
        env["faiss_distance_compute_blas_threshold"] = faiss.cvar.distance_compute_blas_threshold
    except ImportError:
        pass
    settings = {k: v for k, v in vars(args).items() if not k.startswith("worker")}
    settings["configs_overrides"] = {k: {"label": v[0], "overrides": v[1]} for k, v in CONFIGS.items()}
    settings["common_overrides"] = COMMON
    settings["accelerator"] = "cpu"
    out_dir = tempfile.mkdtemp(prefix="twotower_bench_")
    ctx = Context(args, out_dir)
    settings["scale_overrides"] = {s: ctx.scale_overrides(s) for s in args.scale}

    def write() -> None:
        env["loadavg_after"] = list(os.getloadavg())
        env["wall_s"] = time.perf_counter() - T0
        doc = {"environment": env, "settings": settings, "data": ctx.data_timing, "results": ctx.results, "errors": ctx.errors}
        with open(args.out, "w") as f:
            json.dump(doc, f, indent=1, default=str)

    progress(f"sections {','.join(args.sections)}; scales {','.join(args.scale)}; {args.repeats} repeat(s); "
             f"{env['torch_threads']} threads; load average {load_before[0]:.2f}{' (QUICK)' if args.quick else ''}")  # fmt: skip
    try:
        for section in args.sections:
            progress(f"section {section}")
            start = time.perf_counter()
            try:
                ctx.results[section] = RUNNERS[section](ctx)
                ctx.results[section + "_wall_s"] = time.perf_counter() - start
                PRINTERS[section](ctx.results[section])
            except Exception as err:  # noqa: BLE001 - one failing section does not lose the others
                ctx.errors[section] = {"error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()}
                progress(f"section {section} FAILED: {type(err).__name__}: {err}")
                traceback.print_exc()
            write()
            progress(f"section {section} done in {time.perf_counter() - start:.1f} s; results written to {args.out}")
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)
    write()
    data = "; ".join(f"{s}: load {fmt(t.get('load_s'), '.1f')} s, prepare {fmt(t.get('prepare_s'), '.1f')} s"
                     for s, t in ctx.data_timing.items())  # fmt: skip
    print(f"\n{env['cpu']}, {env['cpu_count']} CPUs, {env['torch_threads']} torch threads, torch {env['versions']['torch']}, "
          f"lightning {env['versions']['lightning']}, faiss {env['versions']['faiss']}, {env['date']}"
          f"{' (QUICK)' if args.quick else ''}; medians of {args.repeats}; load average before/after "
          f"{env['loadavg_before'][0]:.2f}/{env['loadavg_after'][0]:.2f}; data set-up: {data or '-'}; "
          f"whole run {env['wall_s']:.0f} s")  # fmt: skip
    if ctx.errors:
        print(f"FAILED sections: {', '.join(ctx.errors)} (tracebacks in {args.out})")
    print(f"wrote {args.out}")
    return 1 if ctx.errors else 0


if __name__ == "__main__":
    sys.exit(main())
