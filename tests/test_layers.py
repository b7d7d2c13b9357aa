"""The package's layers: a module imports only from its own layer or lower ones (also inside
functions), so the math never depends on Lightning's wiring and the wiring exists once."""

import ast
import subprocess
import sys
from pathlib import Path

import twotower

# Lowest first. 0: no torch, Lightning or pandas at import (the command line answers at once);
# 1-2: pure math, configs and run records; 3: data; 4: models; 5-6: what trains them;
# 7: the one build path; 8-9: recipes and commands.
LAYERS = {
    0: {"twotower", "errors", "launch", "fsutil", "integrity", "cli", "wandb_runs", "metric_names"},
    1: {"frequency", "metrics", "topk", "step_memory", "optim", "distributed", "index", "artifacts", "config", "report", "compare",
        "per_user", "significance", "compare_significance", "prior", "example_weights", "graph_walk", "covisit"},
    2: {"samplers", "losses", "checkpoints", "loggers", "runs"},
    3: {"data"},
    4: {"models"},
    5: {"hard_negatives", "callbacks", "retrieval"},
    6: {"module"},
    7: {"wiring"},
    8: {"training", "restore", "rerank"},
    9: {"train", "evaluate", "export", "serve"},
}
LAYER_OF = {name: layer for layer, names in LAYERS.items() for name in names}
PACKAGE = Path(twotower.__file__).parent


def layer(module: str) -> int | None:
    parts = module.split(".")
    if parts[0] != "twotower":
        return None
    return LAYER_OF[parts[1] if len(parts) > 1 else "twotower"]


def imports(path: Path) -> list[tuple[str, int]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.append((node.module, node.lineno))
        elif isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
    return found


def test_every_module_has_a_layer():
    top = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__"} | {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    assert top - set(LAYER_OF) == set(), "add the new module to LAYERS"


def test_no_module_imports_a_higher_layer():
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
        for imported, line in imports(path):
            if layer(imported) is not None and layer(imported) > layer(module):
                upward.append(f"{module} (layer {layer(module)}) imports {imported} (layer {layer(imported)}), line {line}")
    assert upward == []


def test_the_train_command_imports_no_torch_until_a_run_starts():
    """``twotower-train --help`` and a refused config answer without Torch or Lightning."""
    code = "import sys, twotower.train; print(sorted({'torch', 'lightning', 'pandas', 'wandb'} & set(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
