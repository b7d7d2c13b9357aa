"""Benchmark suite: training throughput, Lightning against a hand-written loop, negative
samplers, exact full-ranking evaluation, peak memory and start-up time, on MovieLens-100K
and on the synthetic data set at 1M items. CPU only (the Trainer gets accelerator=cpu).
Run from the repository root (one file per section in ``benchmarks/``):

    .venv/bin/python -m benchmarks --out benchmark-results.json           # everything (about 30-45 min)
    .venv/bin/python -m benchmarks --quick --out /tmp/quick.json          # smoke run of every section
    .venv/bin/python -m benchmarks --sections train,loop --scale ml100k   # a part
    .venv/bin/python -m benchmarks --sections eval --scale synthetic --eval-full --repeats 1   # 100k x 1M

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
          command's ``twotower.training.train`` (the platform's callbacks, CSV logger, checkpoints,
          progress bar, validation after every epoch, the final test; at the synthetic scale
          one validation and one test batch) and compares its steady-state step with the bare
          ``Trainer.fit``'s.
loop      Time per step of Lightning against a hand-written loop (no Lightning, no Hydra: the
          same ``module.model`` towers, the same ``module.loss`` object, the same batches, the
          config's optimizer and settings; the forward through ``models.scoring.score_batch`` and
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
          command-line overrides) after wrapping ``twotower.training.train`` so that it passes one
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
import datetime
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback

from benchmarks.common import COMMON, CONFIGS, Context, DEFAULT_CONFIGS, EVAL_METHODS, SAMPLERS, SCALES, SECTIONS, T0, cpu_model, fmt, mem_total_mb, progress, quiet, versions
from benchmarks.evaluation import print_eval, section_eval
from benchmarks.loop import print_loop, section_loop
from benchmarks.memory import print_memory, section_memory
from benchmarks.samplers import print_samplers, section_samplers
from benchmarks.startup import print_startup, section_startup
from benchmarks.train import print_train, section_train
from benchmarks.workers import worker_main

os.environ.setdefault("WANDB_MODE", "disabled")


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
