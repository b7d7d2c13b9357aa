"""Shared by every section: the configurations, small utilities (progress lines, medians, tables,
peak memory, machine facts), the benchmark's context, and runs built with the package's own
:func:`twotower.wiring.build_run` (the data of a scale prepared once per process).
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import platform
import resource
import statistics
import time
import warnings


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
    """``(cfg, datamodule, module)`` as ``train()`` builds them (:func:`twotower.wiring.build_run`),
    the data prepared once per scale and process; the module is never attached to a Trainer:
    callers ``copy.deepcopy`` it per measurement. ``with_module=False``: the data alone."""
    import lightning as L

    from twotower.config import build, compose_config
    from twotower.wiring import build_datamodule, build_run

    install_prepare_cache(ctx)
    quiet()  # after Lightning's import, which sets its own log level
    cfg = compose_config(COMMON + ctx.scale_overrides(scale) + overrides, output_dir=ctx.out_dir)
    ctx.current_key, ctx.current_scale = data_key(cfg), scale
    if ctx.fixed_data is not None or ctx.current_key in ctx.prepared:
        source = lambda: None  # noqa: E731 - the cached preparation ignores it
    else:
        generate = build(cfg.data.source, _partial_=True)
        progress(f"  preparing the {scale} data (first use in this process)")

        def source():
            with PeakMemory() as mem:
                start = time.perf_counter()
                data = generate()
            ctx.data_timing.setdefault(scale, {}).update(
                load_s=time.perf_counter() - start, load_peak_extra_mb=mem.as_dict()["peak_extra_mb"]
            )
            return data

    if with_module:
        run = build_run(cfg, source=source)
        dm, module = run.datamodule, run.module
    else:
        L.seed_everything(cfg.seed, workers=True, verbose=False)
        dm, module = build_datamodule(cfg, train_on=build(cfg.loss).trains_on, source=source), None
        dm.setup("fit")
    if ctx.current_scale in ctx.data_timing and "num_items" not in ctx.data_timing[scale]:
        t = ctx.data_timing[scale]
        t.update(num_users=dm.data.num_users, num_items=dm.data.num_items,
                 train_positives=len(dm.data.splits["train"].positives().user))  # fmt: skip
        progress(f"  {scale} data ready: load/generate {fmt(t.get('load_s'), '.1f')} s, prepare "
                 f"{fmt(t.get('prepare_s'), '.1f')} s, {t['num_users']:,} users x {t['num_items']:,} items")  # fmt: skip
    return cfg, dm, module


def fresh_copy(module):
    """A deep copy of a template module. A tower compiled in place (``torch_compile``) keeps a
    compiled call bound to the original module: compile the copy's own towers again."""
    copied = copy.deepcopy(module)
    for tower in (getattr(copied.model, "user_tower", None), getattr(copied.model, "item_tower", None)):
        if getattr(tower, "_compiled_call_impl", None) is not None:
            tower.compile(dynamic=True)
    return copied


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
            self.epochs[-1].step(len(batch))

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
