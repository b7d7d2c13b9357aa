"""twotower-serve as a user runs it: a real server process on a free loopback port, called
with a real HTTP client. Expected answers come from the trained model itself (rebuilt from
its checkpoint) scoring every item exactly, not from the service's own code."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from twotower.config import compose_config
from twotower.export import export_main
from twotower.restore import load_run
from twotower.training import train
from brute_force import independent_log_prior
from conftest import TINY

pytestmark = pytest.mark.slow

K = 10


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(export_dir: Path, *flags: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "twotower.serve", str(export_dir), "--port", str(port), *flags]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the server exited with {proc.returncode}: {proc.stderr.read()[-2000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    raise AssertionError("the server did not answer /health within 60 s")


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("serve") / "run"
    train(compose_config(list(TINY) + ["seed=5"], output_dir=run_dir))
    assert export_main([str(run_dir)]) == 0
    return run_dir


@pytest.fixture(scope="module")
def server(trained):
    proc, url = start_server(trained / "export", "--max-batch", "3", "--max-body-bytes", "4096")
    yield url
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def reference(trained):
    """The trained model's exact answers: its user and item vectors, every item scored."""
    _, run, _ = load_run(trained)
    data, dm = run.data, run.datamodule
    with torch.no_grad():
        items = run.model.encode_items(dm.packed("item").gather(torch.arange(data.num_items))).numpy()
    seen: dict[str, set] = {}
    for split in ("train", "val"):  # every interaction, as the test ranking masks them, not the positives only
        part = data.splits[split]
        for u, i in zip(part.user.tolist(), part.item.tolist()):
            seen.setdefault(str(data.user_ids[u]), set()).add(i)

    def user_vector(user_id: str) -> np.ndarray:
        row = int(np.flatnonzero(np.asarray(data.user_ids).astype(str) == user_id)[0])
        with torch.no_grad():
            return run.model.encode_users(dm.packed("user").gather(torch.tensor([row]))).numpy()[0]

    # The popularity prior, recounted here: known users with training data get its warm weight,
    # the others (and new users) its cold one.
    prior = run.module.popularity_prior
    log_prior = independent_log_prior(data, prior.half_life_days) if prior is not None else np.zeros(data.num_items)
    warm = {str(data.user_ids[u]) for u in data.splits["train"].user.tolist()}

    def weight(user_id: str | None) -> float:
        return 0.0 if prior is None else (prior.warm_weight if user_id in warm else prior.cold_weight)

    def top(vector: np.ndarray, k: int, exclude: set, weight: float = 0.0) -> list:
        scores = items.astype(np.float64) @ vector + weight * log_prior
        order = [i for i in np.argsort(-scores, kind="stable").tolist() if i not in exclude]
        return [data.item_ids[i].item() for i in order[:k]]

    cold = next(str(u) for u in data.user_ids if str(u) not in warm)
    return {"items": items, "seen": seen, "user_vector": user_vector, "top": top, "data": data, "run": run,
            "weight": weight, "cold_user": cold}  # fmt: skip


def post(url: str, path: str, body) -> httpx.Response:
    return httpx.post(f"{url}{path}", json=body, timeout=30)


def ids(response: httpx.Response) -> list:
    assert response.status_code == 200, response.text
    return [item["id"] for item in response.json()["items"]]


def test_recommend_is_the_exact_top_k_without_the_users_training_items(server, reference):
    assert reference["run"].module.popularity_prior is not None  # the default model ranks with its prior
    for user in ("1", "13", "405", reference["cold_user"]):
        weight = reference["weight"](user)
        expected = reference["top"](reference["user_vector"](user), K, reference["seen"].get(user, set()), weight)
        assert ids(post(server, "/recommend", {"user_id": user, "k": K})) == expected
        # The same user as a number, and with its training items kept.
        assert ids(post(server, "/recommend", {"user_id": int(user), "k": K})) == expected
        kept = reference["top"](reference["user_vector"](user), K, set(), weight)
        assert ids(post(server, "/recommend", {"user_id": user, "k": K, "exclude_seen": False})) == kept


def test_seen_items_are_left_out_and_k_items_remain(server, reference):
    user = "13"  # 600+ ratings in ML-100K: many training items among the first 200
    item_row = {item.item() if hasattr(item, "item") else item: r for r, item in enumerate(reference["data"].item_ids)}
    seen = reference["seen"][user]
    kept = ids(post(server, "/recommend", {"user_id": user, "k": 200, "exclude_seen": False}))
    assert sum(item_row[i] in seen for i in kept) > 20
    filtered = ids(post(server, "/recommend", {"user_id": user, "k": 200}))
    assert len(filtered) == 200 and not any(item_row[i] in seen for i in filtered)


def test_a_new_user_is_encoded_from_the_features_given(server, reference):
    """User 1's raw features (24, M, technician, zip 85711) with the unknown ID row."""
    run = reference["run"]
    data = reference["data"]
    row = int(np.flatnonzero(np.asarray(data.user_ids).astype(str) == "1")[0])
    features = run.datamodule.packed("user").gather(torch.tensor([row]))
    features["user_id"] = torch.zeros_like(features["user_id"])  # a new user has no ID row of its own
    with torch.no_grad():
        vector = run.model.encode_users(features).numpy()[0]
    body = {"features": {"age": 24, "gender": "M", "occupation": "technician", "zip_prefix": "85"}, "k": K}
    response = post(server, "/recommend", body)
    assert ids(response) == reference["top"](vector, K, set(), reference["weight"](None)) and response.json()["new_user"] is True
    # An unknown id with features is a new user too.
    assert ids(post(server, "/recommend", {**body, "user_id": "somebody-new"})) == ids(response)


def test_batch_answers_as_the_single_requests(server):
    users = [{"user_id": "1"}, {"features": {"age": 30, "gender": "F"}}, {"user_id": 2}]
    response = post(server, "/recommend/batch", {"users": users, "k": 5})
    assert response.status_code == 200, response.text
    singles = [post(server, "/recommend", {**u, "k": 5}).json() for u in users]
    for batched, single in zip(response.json()["results"], singles):
        assert [i["id"] for i in batched["items"]] == [i["id"] for i in single["items"]]
        assert [i["score"] for i in batched["items"]] == pytest.approx([i["score"] for i in single["items"]], abs=1e-6)
        assert (batched["user_id"], batched["new_user"]) == (single["user_id"], single["new_user"])


def test_similar_items_are_the_nearest_item_vectors(server, reference):
    items, data = reference["items"], reference["data"]
    row = int(np.flatnonzero(np.asarray(data.item_ids).astype(str) == "50")[0])
    order = [i for i in np.argsort(-(items @ items[row]), kind="stable").tolist() if i != row][:K]
    response = httpx.get(f"{server}/similar/50", params={"k": K}, timeout=30)
    assert ids(response) == [data.item_ids[i].item() for i in order]


def test_health_and_metadata(server, trained):
    assert httpx.get(f"{server}/health").json() == {"status": "ok"}
    meta = httpx.get(f"{server}/metadata").json()
    assert meta["model"] == "two_tower" and meta["index"]["kind"] == "exact"
    assert (meta["users"], meta["items"], meta["index"]["count"]) == (943, 1682, 1682)
    assert meta["limits"] == {"max_k": 1000, "max_batch": 3, "max_body_bytes": 4096}
    manifest = json.loads((trained / "export" / "index" / "manifest.json").read_text())
    assert meta["exported"] == manifest["created"] and meta["package_version"] == "0.1.0"


@pytest.mark.parametrize(
    "request_args,status,error",
    [
        (("POST", "/recommend", {"user_id": "nobody"}), 404, "unknown user_id 'nobody'"),
        (("GET", "/similar/no-such-item", None), 404, "unknown item id 'no-such-item'"),
        (("POST", "/recommend", {"user_id": "1", "k": 1001}), 422, "k: Input should be less than or equal to 1000"),
        (("POST", "/recommend", {"user_id": "1", "k": 0}), 422, "k: Input should be greater than or equal to 1"),
        (("POST", "/recommend", {"user_id": "1", "k": "ten"}), 422, "k: Input should be a valid integer"),
        (("POST", "/recommend", {"user_id": "1", "exclude_seen": "no"}), 422, "exclude_seen: Input should be a valid boolean"),
        (("POST", "/recommend", {"user_id": "1", "limit": 3}), 422, "limit: Extra inputs are not permitted"),
        (("POST", "/recommend", {}), 422, "a user needs a user_id or features"),
        (("POST", "/recommend", [1, 2]), 422, "body: expected a JSON object"),
        (("POST", "/recommend", {"features": {"height": 180}}), 422, "new user features ['height'] are not features"),
        (("POST", "/recommend/batch", {"users": [{"user_id": "1"}] * 4}), 422, "users: List should have at most 3 items"),
        (("POST", "/recommend/batch", {"users": []}), 422, "users: List should have at least 1 item"),
        (("GET", "/similar/50?k=5000", None), 422, "k: Input should be less than or equal to 1000"),
    ],
)
def test_bad_requests_get_one_json_error(server, request_args, status, error):
    method, path, body = request_args
    response = httpx.request(method, f"{server}{path}", json=body, timeout=30)
    assert response.status_code == status, response.text
    assert response.json()["error"].startswith(error) or error in response.json()["error"], response.json()


def test_malformed_json_oversized_and_non_json_bodies(server):
    headers = {"content-type": "application/json"}
    malformed = httpx.post(f"{server}/recommend", content=b'{"user_id": ', headers=headers)
    assert malformed.status_code == 400 and malformed.json()["error"].startswith("malformed JSON")
    big = httpx.post(f"{server}/recommend", content=b'{"user_id": "1", "pad": "' + b"x" * 5000 + b'"}', headers=headers)
    assert big.status_code == 413 and big.json() == {"error": "request body over 4096 bytes"}
    form = httpx.post(f"{server}/recommend", content=b"user_id=1", headers={"content-type": "application/x-www-form-urlencoded"})
    assert form.status_code == 415 and "application/json" in form.json()["error"]


def test_a_broken_export_is_refused_at_start_with_one_line(trained, tmp_path):
    import shutil

    broken = tmp_path / "export"
    shutil.copytree(trained / "export", broken)
    (broken / "seen_ptr.npy").write_bytes(b"\x93NUMPY-cut")
    done = subprocess.run([sys.executable, "-m", "twotower.serve", str(broken), "--port", str(free_port())],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert lines == [f"twotower-serve: error: {broken / 'seen_ptr.npy'}: its SHA-256 does not match checksums.json: the file is corrupted (export again)"]


def test_sigterm_shuts_the_server_down_gracefully(trained):
    proc, url = start_server(trained / "export")
    assert httpx.get(f"{url}/health").status_code == 200
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    assert proc.stderr.read().strip().splitlines()[-1] == "twotower-serve: stopped"
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{url}/health", timeout=2)


def test_the_retrieve_command_leaves_seen_items_out_unless_asked(trained, reference, capsys):
    from twotower.export import retrieve_main

    item_row = {item.item() if hasattr(item, "item") else item: r for r, item in enumerate(reference["data"].item_ids)}
    seen = reference["seen"]["13"]

    def printed_ids(*flags: str) -> list[int]:
        assert retrieve_main([str(trained / "export"), "--user", "13", "-k", "100", *flags]) == 0
        return [int(line.split()[1]) for line in capsys.readouterr().out.splitlines()[1:]]

    default, kept = printed_ids(), printed_ids("--include-seen")
    assert len(default) == 100 and not any(item_row[i] in seen for i in default)
    assert sum(item_row[i] in seen for i in kept) > 10
    assert default == reference["top"](reference["user_vector"]("13"), 100, seen, reference["weight"]("13"))
