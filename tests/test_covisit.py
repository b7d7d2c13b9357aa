"""The co-visitation score (P3) against a hand-computed walk and every path of the walk enumerated;
its merge with an index's candidates at serving against a brute-force ranking; a run ranking
with it: its test metrics against an independent evaluation, the same as ``twotower-evaluate
--covisit-weight`` on a run trained without it and as its export serves; the weight a run's
``eval.covisit_search`` reports. Every output under tmp_path."""

import numpy as np
import pytest
import torch

from brute_force import brute_force_test_metrics, independent_p3
from twotower.config import compose_config
from twotower.covisit import CoVisitation, top_k_with_walks
from twotower.evaluate import evaluate_main, served
from twotower.rerank import rank_by_covisit_weight
from twotower.export import export_main
from twotower.restore import load_run
from twotower.retrieval import read_json
from twotower.training import train


def test_walk_ends_as_computed_by_hand():
    # user 0: items 0, 1; user 1: items 1, 2. From user 0: item 0 (1/2) -> user 0 -> items 0, 1
    # (1/4 each); item 1 (1/2) -> user 0 or 1 (1/4 each) -> items 0, 1 or 1, 2 (1/8 each):
    # p3 = [3/8, 1/2, 1/8], over its maximum [3/4, 1, 1/4]. Item 3 has no pairs; user 2 neither.
    walks = CoVisitation(torch.tensor([0, 0, 1, 1, 0]), torch.tensor([0, 1, 1, 2, 1]), num_users=3, num_items=4)
    scores = walks.scores(torch.tensor([0, 1, 2]))
    assert scores.dtype == torch.float32 and scores.shape == (3, 4)
    torch.testing.assert_close(scores[0], torch.tensor([0.75, 1.0, 0.25, 0.0]))
    torch.testing.assert_close(scores[1], torch.tensor([0.25, 1.0, 0.75, 0.0]))  # the mirror image
    assert not scores[2].any()  # a user without pairs: no co-visitation score


def test_scores_match_every_path_of_the_walk_enumerated():
    rng = np.random.default_rng(0)
    users, items = rng.integers(0, 30, 400), rng.integers(0, 50, 400)  # duplicates included
    chosen = torch.tensor([5, 0, 31, 17])  # 31: no pairs
    expected = independent_p3(users, items, 32, 50, chosen.numpy())
    walks = CoVisitation(torch.from_numpy(users), torch.from_numpy(items), 32, 50)
    torch.testing.assert_close(walks.scores(chosen).double(), torch.from_numpy(expected), rtol=1e-5, atol=1e-6)


def test_sparse_rows_are_the_scores_where_walks_end():
    walks = CoVisitation(np.array([0, 0, 1, 1, 0]), np.array([0, 1, 1, 2, 1]), num_users=3, num_items=4)  # numpy too
    rows = walks.sparse_scores(np.array([1, 2]))
    assert rows.shape == (2, 4) and rows.dtype == np.float32
    assert sorted(rows.indices[rows.indptr[0] : rows.indptr[1]].tolist()) == [0, 1, 2] and rows.indptr[2] == rows.indptr[1]
    np.testing.assert_allclose(rows.toarray()[0], [0.25, 1.0, 0.75, 0.0])


def test_merge_with_walks_as_computed_by_hand():
    # Inner products [0.9, 0.8, 0.7, 0.1, 0.0] (first column of the items, query [1, 0]); the index
    # found items 0, 1 (k + one excluded; the others score at most 0.8); walks reach 1 (0.5) and
    # 3 (1.0), weight 0.3; item 0 is excluded: 1 scores 0.8 + 0.15 = 0.95, 3 scores 0.1 + 0.3 = 0.4.
    # With the best walk item only (first=1), the second best, 0.4, is below 0.8 + 0.3 * 0.5, what
    # an item in neither list could score (item 2 scores 0.7 + 0.3 * its walk, if it had one): the
    # walks are taken further, to the end here, which shows that none has.
    items = np.array([[0.9, 1], [0.8, 1], [0.7, 1], [0.1, 1], [0.0, 1]], dtype=np.float32)
    query = np.array([1.0, 0.0], dtype=np.float32)
    for first in (1, 256):
        rows, scores = top_k_with_walks(query, items, np.array([0, 1, -1]), 0.8, np.array([1, 3]),
                                        np.array([0.5, 1.0], dtype=np.float32), 0.3, np.array([0]), 2, first)  # fmt: skip
        assert rows.tolist() == [1, 3]
        np.testing.assert_allclose(scores, [0.95, 0.4], rtol=1e-6)


@pytest.mark.parametrize("first", [1, 4, 256])
def test_merge_with_walks_is_exact_given_the_exact_candidates(first):
    """The top k over the index's exact top k + |exclude| and the walks' items taken best first
    is the top k of every item's score: 200 random users against a brute-force ranking of the
    whole catalogue, with the walks taken in one round or several."""
    rng = np.random.default_rng(first)
    items = rng.normal(size=(300, 8)).astype(np.float32)
    for _ in range(200):
        query = rng.normal(size=8).astype(np.float32)
        walk_items = np.sort(rng.choice(300, size=rng.integers(1, 120), replace=False))
        walk_scores = (rng.random(len(walk_items)) ** 3).astype(np.float32)  # a few strong, many weak
        exclude, k, weight = rng.choice(300, size=rng.integers(0, 15), replace=False), int(rng.integers(1, 30)), 5 * rng.random()
        dense = items @ query
        candidates = np.argsort(-dense)[: k + len(exclude)]
        rows, scores = top_k_with_walks(query, items, candidates, float(dense[candidates].min()), walk_items, walk_scores,
                                        weight, exclude, k, first)  # fmt: skip
        full = dense.astype(np.float64)
        full[walk_items] += weight * walk_scores
        full[exclude] = -np.inf
        np.testing.assert_allclose(scores, np.sort(full)[::-1][:k], rtol=1e-5, atol=1e-5)  # the k best values
        np.testing.assert_allclose(full[rows], scores, rtol=1e-5, atol=1e-5)  # each row's own score
        assert len(set(rows.tolist())) == k and not set(rows.tolist()) & set(exclude.tolist())


TINY = ["debug=fast", "model=two_tower_ids", "model.popularity_prior=null", "eval.monitor=null", "eval.patience=null",
        "logger.wandb.mode=disabled", "trainer.enable_progress_bar=false", "trainer.accelerator=cpu",
        "trainer.limit_test_batches=1.0"]  # fmt: skip


@pytest.mark.slow
def test_a_run_ranks_with_it_as_evaluate_does(tmp_path, capsys):
    """Trained alike (the weight changes ranking only), the run with ``model.covisit_weight=0.5``
    tests as an independent evaluation does, as ``twotower-evaluate`` ranks the run without it,
    and as its export serves the test users."""
    plain, mixed = tmp_path / "plain", tmp_path / "mixed"
    train(compose_config(TINY, output_dir=plain))
    results = train(compose_config(TINY + ["model.covisit_weight=0.5"], output_dir=mixed))
    for name, value in brute_force_test_metrics(mixed, 10).items():
        assert results[name] == pytest.approx(value, abs=1e-6), name
    capsys.readouterr()
    assert export_main([str(mixed), "--ckpt", "last"]) == 0
    assert "co-visitation weight 0.5 merged at retrieval" in capsys.readouterr().out
    assert evaluate_main([str(mixed), "--ckpt", "last", "--export"]) == 0  # the export answers as the run tested
    out = capsys.readouterr().out
    assert f"answered by {mixed / 'export'}: " in out and "largest absolute difference from results.json: " in out
    served_metrics, _, _ = served(load_run(mixed, "last")[1], mixed / "export")
    for name in ("test/recall@10", "test/ndcg@10", "test/recall@20"):  # no near-ties this high up in this run's rankings
        assert served_metrics[name] == pytest.approx(results[name], abs=1e-6), name
    _, run, _ = load_run(plain, "last")
    ranked = rank_by_covisit_weight(run, "test", [0.0, 0.5])
    assert ranked[0.0]["test/recall@10"] == pytest.approx(read_json(plain / "results.json")["test/recall@10"], abs=1e-7)
    for name in ("test/recall@10", "test/ndcg@10", "test/recall@20"):
        assert ranked[0.5][name] == pytest.approx(results[name], abs=1e-7), name
    assert ranked[0.5]["test/recall@20"] != ranked[0.0]["test/recall@20"]  # the score moved the ranking
    capsys.readouterr()
    assert evaluate_main([str(plain), "--ckpt", "last", "--split", "val", "--covisit-weight", "0.5", "0", "--metric", "ndcg@10"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1].split()[:3] == ["covisit_weight", "recall@10", "recall@20"] and [r.split()[0] for r in out[2:4]] == ["0", "0.5"]
    assert out[-1].startswith("best val ndcg@10: covisit_weight=")


@pytest.mark.slow
def test_a_run_reports_the_weight_validation_chooses(tmp_path, capsys):
    """``eval.covisit_search``: the best checkpoint ranks the validation users once per weight, as
    ``twotower-evaluate --split val --covisit-weight`` does; the best on the monitor is reported,
    and the run still tests with its own ``model.covisit_weight`` (0 here)."""
    monitored = [o for o in TINY if not o.startswith(("eval.monitor", "eval.patience"))] + ["eval.monitor=val/recall@20"]
    plain, searched = tmp_path / "plain", tmp_path / "searched"
    expected = train(compose_config(monitored, output_dir=plain))
    results = train(compose_config(monitored + ["eval.covisit_search=[0.5,0,2]"], output_dir=searched))
    out = capsys.readouterr().out
    report = read_json(searched / "covisit_search.json")
    ranked = rank_by_covisit_weight(load_run(searched, "best")[1], "val", [0.0, 0.5, 2.0])
    assert report["monitor"] == "val/recall@20" and list(report["metrics"]) == ["0", "0.5", "2"]
    for weight, metrics in ranked.items():
        assert report["metrics"][f"{weight:g}"]["val/recall@20"] == pytest.approx(metrics["val/recall@20"], abs=1e-7)
    best = max(ranked, key=lambda w: ranked[w]["val/recall@20"])
    assert report["best_weight"] == best == results["val/covisit/best_weight"]
    assert len({m["val/recall@20"] for m in ranked.values()}) > 1  # the weights rank differently
    assert f"best val/recall@20: covisit_weight={best:g} (the model.covisit_weight for the final run)" in out
    assert results["test/recall@20"] == expected["test/recall@20"]  # tested as without the search
