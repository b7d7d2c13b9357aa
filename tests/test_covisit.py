"""The co-visitation score (P3) against a hand-computed walk and every path of the walk enumerated, and a
run ranking with it: its test metrics against an independent evaluation, and the same as
``twotower-evaluate --covisit-weight`` on a run trained without it. Every output under tmp_path."""

import numpy as np
import pytest
import torch

from brute_force import brute_force_test_metrics, independent_p3
from twotower.config import compose_config
from twotower.covisit import CoVisitation
from twotower.evaluate import evaluate_main, rank_by_covisit_weight
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


TINY = ["debug=fast", "model=two_tower_ids", "model.popularity_prior=null", "eval.monitor=null", "eval.patience=null",
        "logger.wandb.mode=disabled", "trainer.enable_progress_bar=false", "trainer.accelerator=cpu",
        "trainer.limit_test_batches=1.0"]  # fmt: skip


@pytest.mark.slow
def test_a_run_ranks_with_it_as_evaluate_does(tmp_path, capsys):
    """Trained alike (the weight changes ranking only), the run with ``model.covisit_weight=0.5``
    tests as an independent evaluation does and as ``twotower-evaluate`` ranks the run without it."""
    plain, mixed = tmp_path / "plain", tmp_path / "mixed"
    train(compose_config(TINY, output_dir=plain))
    results = train(compose_config(TINY + ["model.covisit_weight=0.5"], output_dir=mixed))
    for name, value in brute_force_test_metrics(mixed, 10).items():
        assert results[name] == pytest.approx(value, abs=1e-6), name
    capsys.readouterr()
    assert export_main([str(mixed)]) == 2  # serving would rank without it: refused, nothing written
    assert "model.covisit_weight=0.5" in capsys.readouterr().err and not (mixed / "export").exists()
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
