"""Artifacts are data. A checkpoint, a run folder or an export that a user gets from someone
else never runs code, and a corrupted one is refused, naming what is wrong.

The crafted checkpoints load under ``weights_only=True`` (plain containers only), so only
the config inside them can carry a payload: a ``_target_`` that Hydra's ``instantiate``
would call. Each payload would create a marker file if it ran (checked first, so the
refusal tests can fail); every command must refuse it with exit status 2 and one line,
and the marker must never appear. The SHA-256 record is written again after the edit,
as an attacker would: the refusal comes from the config check, not from the integrity check.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import torch
import yaml

from tiny_data import custom, tiny_interactions, write_csv
from twotower.artifacts import check_artifact_config
from twotower.config import compose_config
from twotower.errors import UnsafeArtifactError
from twotower.evaluate import evaluate_main
from twotower.export import export_main, retrieve_main
from twotower.integrity import folder_digests, seal_checkpoint
from twotower.runs import resumed_config
from twotower.train import run_task

TINY = ["debug=fast", "logger.wandb.mode=disabled", "trainer.enable_progress_bar=false", "trainer.accelerator=cpu"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}


class _Touch:
    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def payload(target: str, marker: Path) -> dict:
    """A node that creates ``marker`` when ``instantiate`` builds it."""
    if target == "torch.load":
        evil = marker.with_name("evil.pkl")
        torch.save(_Touch(str(marker)), evil)  # unpickling it (weights_only=False) creates the marker
        return {"_target_": "torch.load", "f": str(evil), "weights_only": False}
    return {
        "builtins.open": {"_target_": "builtins.open", "file": str(marker), "mode": "w"},
        "os.system": {"_target_": "os.system", "_args_": [f"touch {marker}"]},
        "subprocess.Popen": {"_target_": "subprocess.Popen", "args": ["touch", str(marker)]},
        "builtins.eval": {"_target_": "builtins.eval", "_args_": [f"open({str(marker)!r}, 'w')"]},
    }[target]


TARGETS = ["torch.load", "builtins.open", "os.system", "subprocess.Popen", "builtins.eval"]
NODES = ["loss", "model.net", "model.optimizer", "model.scheduler", "sampler", "data.source", "trainer.callbacks"]


def plant(config: dict, node: str, node_payload: dict) -> dict:
    """``config`` with ``node`` replaced by the payload (``trainer.callbacks``: a list holding it)."""
    *parents, last = node.split(".")
    holder = config
    for key in parents:
        holder = holder.setdefault(key, {})
    holder[last] = [node_payload] if last == "callbacks" else node_payload
    return config


def marker_appeared(marker: Path) -> bool:
    time.sleep(0.05)  # a spawned `touch` would have run by now
    return marker.exists()


def build_without_policy(node: dict):
    """What ``instantiate`` does with a node when nothing stops it (Hydra 1.3 releases before
    its own blocklist, which the package's ``hydra-core>=1.3`` admits): import, then call."""
    module, _, name = node["_target_"].rpartition(".")
    kwargs = {k: v for k, v in node.items() if not k.startswith("_")}
    return getattr(importlib.import_module(module), name)(*node.get("_args_", []), **kwargs)


@pytest.mark.parametrize("target", TARGETS)
def test_each_payload_runs_when_built(tmp_path, target):
    """The payloads are live: built, each creates its marker."""
    marker = tmp_path / "payload-ran"
    built = build_without_policy(payload(target, marker))
    if isinstance(built, subprocess.Popen):
        built.wait()
    elif hasattr(built, "close"):
        built.close()
    assert marker.exists()


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A real tiny run, stopped as if interrupted (so it may be resumed), and its export."""
    root = tmp_path_factory.mktemp("trained")
    run = root / "run"
    run_task(compose_config(TINY + custom(write_csv(root / "data", tiny_interactions())), output_dir=run))
    assert export_main([str(run)]) == 0
    status = json.loads((run / "status.json").read_text())
    (run / "status.json").write_text(json.dumps({**status, "status": "interrupted"}))
    return run


def crafted_checkpoint(trained: Path, folder: Path, node: str, node_payload: dict) -> Path:
    ckpt = torch.load(trained / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    plant(ckpt["twotower_config"], node, node_payload)
    path = folder / "crafted.ckpt"
    torch.save(seal_checkpoint(ckpt), path)
    torch.load(path, weights_only=True)  # loads as plain data: the payload is only in the config
    return path


def crafted_run(trained: Path, folder: Path, node: str, node_payload: dict) -> Path:
    run = folder / "run"
    shutil.copytree(trained, run, ignore=shutil.ignore_patterns("export"))
    config = yaml.safe_load((run / "config.yaml").read_text())
    (run / "config.yaml").write_text(yaml.safe_dump(plant(config, node, node_payload)))
    return run


@pytest.mark.parametrize("node", NODES)
@pytest.mark.parametrize("target", TARGETS)
def test_crafted_checkpoint_and_run_folder_are_refused_without_running_the_payload(trained, tmp_path, capsys, target, node):
    marker = tmp_path / "payload-ran"
    ckpt = crafted_checkpoint(trained, tmp_path, node, payload(target, marker))
    assert evaluate_main([str(ckpt)]) == 2
    assert export_main([str(ckpt), "--out", str(tmp_path / "export")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert [line.split(":")[0] for line in lines] == ["twotower-evaluate", "twotower-export"], lines
    assert all(f"{node}" in line and target in line and "is refused" in line for line in lines), lines
    run = crafted_run(trained, tmp_path, node, payload(target, marker))
    with pytest.raises(UnsafeArtifactError, match=f"{node}.*{target}"):
        resumed_config(run, [f"resume={run}"])
    assert not marker_appeared(marker)
    assert not (tmp_path / "export").exists()


def test_interpolations_and_foreign_download_urls_in_an_artifact_are_refused(trained):
    config = yaml.safe_load((trained / "config.yaml").read_text())
    check_artifact_config(config, "intact")  # the run's own config passes
    leak = {**config, "tags": ["${oc.env:HOME}"]}
    with pytest.raises(UnsafeArtifactError, match=r"tags\[0\]='\$\{oc.env:HOME\}' is an interpolation"):
        check_artifact_config(leak, "leak")
    elsewhere = json.loads(json.dumps(config))
    elsewhere["data"]["source"] = {"_target_": "twotower.data.movielens.load_ml1m", "data_dir": "/tmp", "url": "http://example.com/a.zip"}
    with pytest.raises(UnsafeArtifactError, match="data.source.url='http://example.com/a.zip' is refused"):
        check_artifact_config(elsewhere, "download")
    shipped = json.loads(json.dumps(elsewhere))
    shipped["data"]["source"]["url"] = "https://files.grouplens.org/datasets/movielens/ml-1m.zip"
    check_artifact_config(shipped, "download")  # a URL that conf/ names is a value like any other


@pytest.mark.parametrize("where", ["args", "fitted"])
def test_crafted_export_is_refused_without_running_the_payload(trained, tmp_path, capsys, where):
    marker = tmp_path / "payload-ran"
    export = tmp_path / "export"
    shutil.copytree(trained / "export", export)
    spec = json.loads((export / "user_tower.json").read_text())
    if where == "args":
        spec["args"] = payload("builtins.open", marker)
    else:
        spec["fitted"][0] = payload("os.system", marker)
    (export / "user_tower.json").write_text(json.dumps(spec))
    (export / "checksums.json").write_text(json.dumps({k: v for k, v in folder_digests(export).items() if k != "checksums.json"}))
    user = json.loads((export / "user_ids.json").read_text())[0]
    assert retrieve_main([str(export), "--user", str(user), "-k", "2"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("twotower-retrieve: error:") and "_target_ is refused" in line
    assert not marker_appeared(marker)


def run_command(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=180, env=ENV, cwd=cwd)


def assert_one_line_refusal(done: subprocess.CompletedProcess, prog: str, *parts: str) -> None:
    assert done.returncode == 2, done.stderr[-3000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: error:"), done.stderr[-3000:]
    assert all(part in lines[0] for part in parts), lines[0]


@pytest.mark.slow
def test_console_scripts_refuse_crafted_artifacts(trained, tmp_path):
    """The same refusals through the installed commands, as a user would meet them."""
    marker = tmp_path / "payload-ran"
    ckpt = crafted_checkpoint(trained, tmp_path, "loss", payload("torch.load", marker))
    assert_one_line_refusal(run_command(["twotower.export", str(ckpt), "--out", str(tmp_path / "x")], tmp_path),
                            "twotower-export", "loss._target_='torch.load'")  # fmt: skip
    evaluate = [sys.executable, "-c", "import sys; from twotower.evaluate import evaluate_main; sys.exit(evaluate_main())", str(ckpt)]
    done = subprocess.run(evaluate, capture_output=True, text=True, timeout=180, env=ENV, cwd=tmp_path)
    assert_one_line_refusal(done, "twotower-evaluate", "loss._target_='torch.load'")
    run = crafted_run(trained, tmp_path, "model.optimizer", payload("subprocess.Popen", marker))
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert_one_line_refusal(run_command(["twotower.train", f"resume={run}"], tmp_path),
                            "twotower-train", "model.optimizer._target_='subprocess.Popen'")  # fmt: skip
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before  # not even train.log
    assert not marker_appeared(marker)


# ----------------------------------------------------------------------------- integrity


def flip_bytes_inside_a_tensor(path: Path, count: int = 2000) -> str:
    """Flip ``count`` bytes in the middle of the largest tensor stored in a ``torch.save`` file
    (its zip entries are stored uncompressed); returns that tensor's path in the checkpoint."""
    from twotower.integrity import iter_tensors

    original = dict(iter_tensors(torch.load(path, map_location="cpu", weights_only=True)))
    with zipfile.ZipFile(path) as archive:
        entry = max((i for i in archive.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    data = bytearray(path.read_bytes())
    name_len, extra_len = int.from_bytes(data[entry.header_offset + 26 : entry.header_offset + 28], "little"), int.from_bytes(
        data[entry.header_offset + 28 : entry.header_offset + 30], "little"
    )
    start = entry.header_offset + 30 + name_len + extra_len + entry.file_size // 2 - count // 2
    for i in range(start, start + min(count, entry.file_size)):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))
    changed = dict(iter_tensors(torch.load(path, map_location="cpu", weights_only=True)))
    (name,) = [k for k in original if not torch.equal(original[k], changed[k])]
    return name


def test_flipped_bytes_in_a_weight_tensor_are_refused_naming_it(trained, tmp_path, capsys):
    ckpt = tmp_path / "best.ckpt"
    shutil.copy(trained / "checkpoints" / "best.ckpt", ckpt)
    tensor = flip_bytes_inside_a_tensor(ckpt)
    assert tensor.startswith("state_dict/model.")
    assert export_main([str(ckpt), "--out", str(tmp_path / "export")]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert f"its content does not match its SHA-256 record: changed {tensor}" in line, line
    assert not (tmp_path / "export").exists()


@pytest.mark.parametrize("name", ["item_vectors.npy", "user_tower.pt", "index/index.faiss"])
def test_a_corrupted_export_file_is_refused_naming_it(trained, tmp_path, capsys, name):
    export = tmp_path / "export"
    shutil.copytree(trained / "export", export)
    data = bytearray((export / name).read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit
    (export / name).write_bytes(bytes(data))
    user = json.loads((export / "user_ids.json").read_text())[0]
    assert retrieve_main([str(trained / "export"), "--user", str(user), "-k", "2"]) == 0
    capsys.readouterr()
    assert retrieve_main([str(export), "--user", str(user), "-k", "2"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert f"{export / name}: its SHA-256 does not match checksums.json" in line, line


def test_a_checkpoint_without_its_integrity_record_is_refused(trained, tmp_path):
    from twotower.artifacts import read_checkpoint
    from twotower.errors import CheckpointError

    ckpt = torch.load(trained / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    del ckpt["twotower_integrity"]
    torch.save(ckpt, tmp_path / "bare.ckpt")
    with pytest.raises(CheckpointError, match="no integrity record"):
        read_checkpoint(tmp_path / "bare.ckpt")
