"""Export, retrieve and evaluate a tiny trained run; every file under tmp_path."""

import json
import shutil

import numpy as np
import pytest
import torch

from twotower.config import compose_config
from twotower.evaluate import evaluate_main
from twotower.export import export_main, retrieve_main
from twotower.index import ItemIndex
from twotower.restore import load_run
from twotower.retrieval import load_user_tower
from twotower.training import train
from brute_force import independent_log_prior, independent_p3

TINY = [
    "debug=fast",
    "logger.wandb.mode=disabled",
    "trainer.enable_progress_bar=false",
    "trainer.accelerator=cpu",
    "trainer.limit_test_batches=1.0",
]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "run"
    train(compose_config(TINY, output_dir=out))
    return out


@pytest.fixture(scope="module")
def export_dir(run_dir):
    assert export_main([str(run_dir)]) == 0
    return run_dir / "export"


@pytest.mark.slow
def test_export_writes_every_file(export_dir):
    for name in ("item_vectors.npy", "item_ids.json", "item_titles.json", "user_tower.pt", "user_tower.json",
                 "user_features.pt", "user_ids.json", "features.json", "ann_quality.json", "index/manifest.json"):  # fmt: skip
        assert (export_dir / name).is_file(), name
    vectors = np.load(export_dir / "item_vectors.npy")
    assert vectors.dtype == np.float32 and vectors.shape[0] == len(json.loads((export_dir / "item_ids.json").read_text()))
    quality = json.loads((export_dir / "ann_quality.json").read_text())
    # Exact against exact: FAISS and torch sum in different orders, so two near-tied items at
    # the 100th place may swap (one miss in 94,300 is 0.99999).
    assert quality["recall@k"] > 0.9999 and quality["k"] == min(100, len(vectors)) and quality["qps"] > 0
    manifest = json.loads((export_dir / "index" / "manifest.json").read_text())
    assert manifest["source"]["model"] == "two_tower" and manifest["source"]["checkpoint"].endswith("best.ckpt")
    assert not [p for p in export_dir.parent.iterdir() if p.name.startswith(".export.tmp")]


def test_exported_user_tower_matches_training_model(run_dir, export_dir):
    _, run, _ = load_run(run_dir)
    dm, model = run.datamodule, run.model
    tower = load_user_tower(export_dir)
    features = torch.load(export_dir / "user_features.pt", weights_only=True)
    rows = torch.arange(0, dm.data.num_users, 7)
    with torch.no_grad():
        expected = model.user_tower({k: v[rows] for k, v in dm.data.user_features.items()})
        got = tower({k: v[rows] for k, v in features.items()})
    assert torch.allclose(got, expected, atol=1e-6)
    assert json.loads((export_dir / "user_ids.json").read_text()) == dm.data.user_ids.tolist()


def test_exact_index_equals_brute_force(run_dir, export_dir):
    """The index ranks by the model's score plus its popularity prior (recounted here)."""
    tower = load_user_tower(export_dir)
    features = torch.load(export_dir / "user_features.pt", weights_only=True)
    with torch.no_grad():
        users = tower({k: v[:50] for k, v in features.items()}).numpy()
    items = np.load(export_dir / "item_vectors.npy")
    _, run, _ = load_run(run_dir)
    prior = run.module.popularity_prior
    assert json.loads((export_dir / "popularity_prior.json").read_text()) == {
        "warm_weight": prior.warm_weight, "cold_weight": prior.cold_weight, "half_life_days": prior.half_life_days}  # fmt: skip
    warm = np.load(export_dir / "user_warm.npy")[:50]
    assert warm.tolist() == [u in set(run.data.splits["train"].user.tolist()) for u in range(50)]
    weights = np.where(warm, prior.warm_weight, prior.cold_weight).astype(np.float32)
    log_prior = independent_log_prior(run.data, prior.half_life_days).astype(np.float32)
    index = ItemIndex.load(export_dir / "index")
    scores, _, positions = index.search(np.concatenate([users, weights[:, None]], axis=1), 10)
    brute = torch.topk(torch.from_numpy(users @ items.T + weights[:, None] * log_prior[None, :]), 10, dim=1)
    np.testing.assert_allclose(scores, brute.values.numpy(), rtol=1e-5, atol=1e-6)
    assert np.array_equal(positions, brute.indices.numpy())


def test_co_visitation_is_merged_with_the_index_and_the_prior(run_dir, export_dir, tmp_path):
    """An export with a co-visitation weight (set here in ``covisit.json``, as a run with
    ``model.covisit_weight`` would write it) ranks known users by inner product + prior +
    ``w * p3`` over their positives seen, recomputed here, their training items left out."""
    from test_bad_input import rehash
    from twotower.retrieval import Retriever

    edited = tmp_path / "edited"
    shutil.copytree(export_dir, edited)
    assert json.loads((edited / "covisit.json").read_text()) == {"weight": 0.0}
    (edited / "covisit.json").write_text('{"weight": 0.5}')
    rehash(edited)
    retriever = Retriever(edited)
    assert retriever.metadata()["covisit_weight"] == 0.5
    _, run, _ = load_run(run_dir)
    data, prior = run.data, run.module.popularity_prior
    observed = [data.splits[name].positives() for name in ("train", "val")]
    pair_users, pair_items = (np.concatenate([getattr(p, side).numpy() for p in observed]) for side in ("user", "item"))
    rows = np.arange(0, data.num_users, 9)
    with torch.no_grad():
        users = run.model.encode_users(run.datamodule.packed("user").gather(torch.as_tensor(rows))).double().numpy()
        items = run.model.encode_items(run.datamodule.packed("item").gather(torch.arange(data.num_items))).double().numpy()
    warm = np.isin(rows, data.splits["train"].user.numpy())
    scores = (users @ items.T + np.where(warm, prior.warm_weight, prior.cold_weight)[:, None] * independent_log_prior(data, prior.half_life_days)
              + 0.5 * independent_p3(pair_users, pair_items, data.num_users, data.num_items, rows))  # fmt: skip
    answers = retriever.recommend([str(data.user_ids[u]) for u in rows], k=10)
    plain = Retriever(export_dir).recommend([str(data.user_ids[u]) for u in rows], k=10)
    assert sum(a != b for a, b in zip(answers, plain)) > len(rows) // 2  # the walks moved most users' answers
    # In one request with a known user, a new user (no history, no walks) gets the towers' answer.
    new_user = {"age": "30", "gender": "F"}
    mixed = retriever.recommend([str(data.user_ids[rows[1]])], [new_user], k=10)
    assert mixed == [answers[1], Retriever(export_dir).recommend([], [new_user], k=10)[0]]
    row_of = {str(i): r for r, i in enumerate(data.item_ids.tolist())}
    seen_users, seen_items = (torch.cat([getattr(data.splits[n], side) for n in ("train", "val")]).numpy() for side in ("user", "item"))
    assert len(seen_items) > len(pair_items)  # low ratings: seen and left out, but no walk goes through them
    for r, (user, answer) in enumerate(zip(rows, answers)):
        scores[r, seen_items[seen_users == user]] = -np.inf
        got = [row_of[str(item["id"])] for item in answer]
        np.testing.assert_allclose([item["score"] for item in answer], np.sort(scores[r])[::-1][:10], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(scores[r, got], [item["score"] for item in answer], rtol=1e-5, atol=1e-5)


def test_evaluate_reproduces_results(run_dir, capsys):
    assert evaluate_main([str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "recall@10" in out and "largest absolute difference from results.json: 0 " in out


@pytest.mark.slow
def test_a_bf16_mixed_run_is_ranked_in_full_precision(tmp_path, capsys):
    """`trainer.precision=bf16-mixed` trains its MLP towers under autocast; its recorded test
    metrics are those of its weights ranked again in float32."""
    out = tmp_path / "run"
    train(compose_config([*TINY, "trainer.precision=bf16-mixed"], output_dir=out))
    assert any(isinstance(m, torch.nn.Linear) for m in load_run(out, "best")[1].model.modules())
    assert evaluate_main([str(out)]) == 0
    assert "largest absolute difference from results.json: 0 " in capsys.readouterr().out


def test_retrieve_prints_k_lines_per_user(export_dir, capsys):
    users = [str(u) for u in json.loads((export_dir / "user_ids.json").read_text())[:2]]
    assert retrieve_main([str(export_dir), "--user", users[0], "--user", users[1], "-k", "5"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"user {users[0]}:" and lines[6] == f"user {users[1]}:"
    ranked = [line for line in lines if not line.startswith("user ")]
    assert len(ranked) == 10 and ranked[0].split()[0] == "1" and ranked[4].split()[0] == "5"


def test_retrieve_refuses_unknown_user(export_dir, capsys):
    assert retrieve_main([str(export_dir), "--user", "no-such-user"]) == 2
    err = capsys.readouterr().err
    assert "unknown user id" in err and "no-such-user" in err and "known ids include" in err


def test_incomplete_export_is_refused(export_dir, tmp_path, capsys):
    broken = tmp_path / "broken"
    shutil.copytree(export_dir, broken)
    (broken / "user_features.pt").unlink()
    users = json.loads((broken / "user_ids.json").read_text())
    assert retrieve_main([str(broken), "--user", str(users[0])]) == 2
    assert "user_features.pt" in capsys.readouterr().err


def test_existing_export_is_not_replaced_without_overwrite(run_dir, export_dir, capsys):
    assert export_main([str(run_dir)]) == 2
    assert "exists" in capsys.readouterr().err


@pytest.mark.slow
def test_early_fusion_export_is_refused(tmp_path, capsys):
    run = tmp_path / "ef"
    train(compose_config(TINY + ["model=early_fusion"], output_dir=run))
    assert export_main([str(run)]) == 2
    err = capsys.readouterr().err
    assert "EarlyFusionModel" in err and "does not factorize" in err
    assert not (run / "export").exists()


def test_new_user_is_encoded_from_raw_features_like_a_known_user_without_id(export_dir):
    """A new user with user 1's raw features gets user 1's encoding with the unknown ID row."""
    from twotower.retrieval import encode_new_users

    spec = json.loads((export_dir / "user_tower.json").read_text())
    features = torch.load(export_dir / "user_features.pt", weights_only=True)
    user_ids = json.loads((export_dir / "user_ids.json").read_text())
    row = [str(u) for u in user_ids].index("1")
    # MovieLens-100K user 1: 24 years old, M, technician, zip 85711
    new = encode_new_users(spec, [{"age": "24", "gender": "M", "occupation": "technician", "zip_prefix": "85"}])
    known = {name: t[row : row + 1].clone() for name, t in features.items()}
    known["user_id"][:] = 0  # the unknown row: a new user has no ID embedding of its own
    for name in known:
        assert torch.equal(new[name], known[name]), name
    with pytest.raises(ValueError, match="height"):
        encode_new_users(spec, [{"height": "180"}])


def test_retrieve_serves_a_new_user(export_dir, capsys):
    assert retrieve_main([str(export_dir), "--new-user", "age=30,gender=F", "-k", "4"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("user (new:") and len(lines) == 5
