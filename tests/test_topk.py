"""Exact top-K with seen items excluded: both backends against a brute-force ranking."""

import random

import pytest
import torch

from twotower.topk import build_faiss_index, faiss_top_k, match_targets, torch_top_k

NUM_USERS, NUM_ITEMS, DIM, K = 30, 200, 8, 10


def problem(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    rng = random.Random(seed)
    users = torch.randn(NUM_USERS, DIM, generator=gen)
    items = torch.randn(NUM_ITEMS, DIM, generator=gen)
    scores = users @ items.T
    # Each user has seen some of its own best items (the hard case: they would win unmasked).
    seen = {u: set(scores[u].topk(rng.randint(0, 40)).indices.tolist()) for u in range(NUM_USERS)}
    rows = torch.tensor([u for u in seen for _ in seen[u]], dtype=torch.long)
    cols = torch.tensor([i for u in seen for i in sorted(seen[u])], dtype=torch.long)
    expected = [[i for i in scores[u].argsort(descending=True).tolist() if i not in seen[u]][:K] for u in range(NUM_USERS)]
    return users, items, rows, cols, expected


@pytest.mark.parametrize("backend", ["torch", "faiss"])
def test_top_k_excludes_seen_and_equals_brute_force(backend):
    users, items, rows, cols, expected = problem()
    if backend == "torch":
        got = torch_top_k(users, items, rows, cols, K)
    else:
        got = faiss_top_k(users, build_faiss_index(items), rows, cols, K, NUM_ITEMS)
    assert got.tolist() == expected


def test_faiss_fills_k_when_a_user_has_seen_almost_everything():
    users, items, _, _, _ = problem()
    rows = torch.zeros(NUM_ITEMS - 3, dtype=torch.long)  # user 0 has seen all but items 0, 1, 2
    cols = torch.arange(3, NUM_ITEMS)
    got = faiss_top_k(users[:1], build_faiss_index(items), rows, cols, 5, NUM_ITEMS)
    assert sorted(got[0, :3].tolist()) == [0, 1, 2]  # the unseen ones first; seen ones only pad the tail
    assert got.shape == (1, 5)


def test_match_targets_by_hand():
    topk = torch.tensor([[5, 3, 9], [1, 2, 4]])
    hits, n = match_targets(topk, torch.tensor([0, 0, 1]), torch.tensor([9, 7, 1]), num_items=10)
    assert hits.tolist() == [[False, False, True], [True, False, False]]
    assert n.tolist() == [2, 1]
    hits, n = match_targets(topk, torch.tensor([], dtype=torch.long), torch.tensor([], dtype=torch.long), 10)
    assert not hits.any() and n.tolist() == [0, 0]


def test_choose_backend():
    from twotower.topk import choose_backend

    assert choose_backend("auto", True, 1_000_000, on_gpu=False) == "faiss"
    assert choose_backend("auto", True, 1_000_000, on_gpu=True) == "torch"
    assert choose_backend("auto", True, 1_682, on_gpu=False) == "torch"
    assert choose_backend("faiss", False, 1_000_000, on_gpu=False) == "torch"  # a network scores pairs
    with pytest.raises(ValueError, match="expected auto, torch or faiss"):
        choose_backend("fast", True, 10, on_gpu=False)


def test_faiss_groups_give_the_same_ranking_as_one_search():
    users, items, rows, cols, expected = problem(seed=4)
    index = build_faiss_index(items)
    for group_size in (1, 7, 256):
        assert faiss_top_k(users, index, rows, cols, K, NUM_ITEMS, group_size=group_size).tolist() == expected


@pytest.mark.slow
def test_training_run_with_the_faiss_backend_matches_torch(tmp_path, tiny_overrides):
    from twotower.config import compose_config
    from twotower.training import train

    runs = {b: train(compose_config(tiny_overrides + [f"eval.backend={b}"], output_dir=tmp_path / b)) for b in ("torch", "faiss")}
    for name, value in runs["torch"].items():
        if name.startswith("test/"):
            assert runs["faiss"][name] == pytest.approx(value, abs=1e-6), name
