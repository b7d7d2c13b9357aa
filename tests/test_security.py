"""Nothing listens on a network port: a full run (W&B offline included) opens no TCP/UDP
listening socket. W&B's helper process talks to the run over Unix domain sockets only."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

LISTEN_STATES = {"tcp": "0A", "tcp6": "0A", "udp": "07", "udp6": "07"}  # TCP LISTEN; UDP bound, unconnected


def listening_inodes() -> set[str]:
    inodes = set()
    for name, state in LISTEN_STATES.items():
        path = Path("/proc/net") / name
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == state:
                inodes.add(fields[9])
    return inodes


def socket_inodes(pid: int) -> set[str]:
    """Inodes of the sockets held by ``pid`` and its descendants."""
    pids, inodes = {pid}, set()
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                stat = (proc / "stat").read_text()
                if int(stat.rsplit(")", 1)[1].split()[1]) in pids:
                    pids.add(int(proc.name))
            except (OSError, ValueError, IndexError):
                continue
    for p in pids:
        try:
            for fd in (Path("/proc") / str(p) / "fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        except OSError:
            continue
    return inodes


@pytest.mark.slow
def test_a_run_with_wandb_offline_listens_on_no_network_port(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TWOTOWER_LOG_DIR": str(tmp_path), "WANDB_DIR": str(tmp_path)}
    env.pop("WANDB_MODE", None)
    command = [
        sys.executable, "-m", "twotower.train", "debug=fast", "logger.wandb.mode=offline",
        "trainer.max_epochs=1", "trainer.limit_train_batches=10", "trainer.enable_progress_bar=false",
    ]  # fmt: skip
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    listening, polls = set(), 0
    deadline = time.time() + 240
    while proc.poll() is None and time.time() < deadline:
        listening |= socket_inodes(proc.pid) & listening_inodes()
        polls += 1
        time.sleep(0.2)
    if proc.poll() is None:
        proc.kill()
    stderr = proc.communicate()[1]
    assert proc.returncode == 0, stderr[-2000:]
    assert polls > 5  # the run was watched while it ran
    assert list(tmp_path.rglob("offline-run-*")), "W&B ran offline (its helper process was watched too)"
    assert not listening, f"listening sockets opened by the run: {listening}"


def test_the_watch_sees_a_listening_socket():
    """The detector itself: a child that listens on a TCP port is caught."""
    code = "import socket, time; s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen(); print('up', flush=True); time.sleep(30)"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "up"
        assert socket_inodes(proc.pid) & listening_inodes()
    finally:
        proc.kill()
        proc.wait()
