"""Section ``startup``: wall time from launching the command to the end of its first training
step, by stage.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from benchmarks.common import BenchmarkError, COMMON, Context, fmt, median, progress, table
from benchmarks.workers import child_env


# Runs the real console entry (Hydra parses sys.argv) with one extra callback; the parent
STARTUP_CHILD = r"""
import json, os, sys, time
stamps = {"child_code_start": time.time()}
out_path = sys.argv[1]
sys.argv = ["twotower-train", *sys.argv[2:]]
import lightning as L
import twotower.train as tt
import twotower.training as recipe
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

_train = recipe.train
def train(cfg, callbacks=None):
    stamps["train_entered"] = time.time()
    return _train(cfg, callbacks=[FirstStep(), *(callbacks or [])])
recipe.train = train
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
                     "of twotower.training.train, in a process that runs twotower.train.main() (the console entry, Hydra "
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
