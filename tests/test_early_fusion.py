"""Early fusion: the non-factorizing model, its scoring contract, and the refusal to index it."""

import pytest
import torch

from twotower.config import compose_config
from twotower.models import EarlyFusionModel, PopularityModel, TwoTowerModel, require_factorized
from twotower.models.scoring import score_candidates
from twotower.training import train
from brute_force import assert_matches_brute_force

FITTED = {
    "user": [
        {"name": "user_id", "kind": "id", "cardinality": 11},
        {"name": "gender", "kind": "categorical", "cardinality": 3},
        {"name": "age", "kind": "continuous", "mean": 30.0, "std": 10.0},
    ],
    "item": [
        {"name": "item_id", "kind": "id", "cardinality": 21},
        {"name": "genres", "kind": "multi_categorical", "cardinality": 6},
    ],
}


def model(**kwargs) -> EarlyFusionModel:
    torch.manual_seed(0)
    return EarlyFusionModel(FITTED, embedding_dim=8, mlp=[16, 8], **kwargs).eval()


def users(n: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {
        "user_id": torch.randint(0, 11, (n,), generator=g),
        "gender": torch.randint(0, 3, (n,), generator=g),
        "age": torch.randn(n, generator=g),
    }


def items(n: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(2)
    return {"item_id": torch.randint(0, 21, (n,), generator=g), "genres": torch.randint(0, 6, (n, 3), generator=g)}


def test_encoders_return_the_concatenated_embeddings():
    m = model()
    u, i = m.encode_users(users(5)), m.encode_items(items(7))
    assert u.shape == (5, 2 * 8 + 1) and i.shape == (7, 2 * 8)
    assert (m.user_dim, m.item_dim) == (17, 16)
    assert m.factorizes is False and m.trainable is True
    # One joint MLP ending in a single logit: nothing is learned on one side alone.
    assert [layer.out_features for layer in m.mlp if isinstance(layer, torch.nn.Linear)] == [16, 8, 1]
    assert m.mlp[0].in_features == 17 + 16


def test_score_matrix_agrees_with_score_pairs_and_the_concatenated_mlp():
    m = model()
    with torch.no_grad():
        u, i = m.encode_users(users(5)), m.encode_items(items(7))
        matrix = m.score_matrix(u, i)
        assert matrix.shape == (5, 7)
        for b in range(5):
            for n in range(7):
                assert matrix[b, n] == pytest.approx(float(m.score_pairs(u[b], i[n])), abs=1e-5)
        reference = m.mlp(torch.cat([u[:, None, :].expand(-1, 7, -1), i[None].expand(5, -1, -1)], -1)).squeeze(-1)
        torch.testing.assert_close(matrix, reference, atol=1e-5, rtol=1e-5)
        # score_pairs broadcasts its leading dimensions.
        torch.testing.assert_close(m.score_pairs(u[:, None, :], i[None, :, :]), reference, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("max_pairs", [1, 3, 7, 8, 34, 35, 36])
def test_chunking_gives_the_same_scores(max_pairs):
    m = model()
    with torch.no_grad():
        u, i = m.encode_users(users(5)), m.encode_items(items(7))
        whole = m.score_matrix(u, i)
        m.max_pairs = max_pairs
        torch.testing.assert_close(m.score_matrix(u, i), whole, atol=1e-6, rtol=1e-6)


def test_chunked_scores_carry_gradients():
    m = model(dropout=0.0, max_pairs=4).train()
    u, i = m.encode_users(users(5)), m.encode_items(items(7))
    m.score_matrix(u, i).sum().backward()
    grads = {name: p.grad for name, p in m.named_parameters()}
    assert all(g is not None for g in grads.values())
    m2 = model().train()
    u2, i2 = m2.encode_users(users(5)), m2.encode_items(items(7))
    m2.score_pairs(u2[:, None, :], i2[None]).sum().backward()
    for name, p in m2.named_parameters():
        torch.testing.assert_close(p.grad, grads[name], atol=1e-5, rtol=1e-5)


def test_per_example_negatives_shapes():
    m = model()
    batch, n = 4, 3
    u = m.encode_users(users(batch))
    pos = m.encode_items(items(batch))
    extra = m.encode_items(items(batch * n)).view(batch, n, -1)  # [B, n, item_dim]
    assert m.score_pairs(u[:, None, :].expand(-1, n, -1), extra).shape == (batch, n)
    pos_scores, neg = score_candidates(u, pos, extra, pos, m.score_pairs, m.score_matrix)
    assert pos_scores.shape == (batch,) and neg.shape == (batch, batch + n)
    with torch.no_grad():
        assert neg[1, batch + 2] == pytest.approx(float(m.score_pairs(u[1], extra[1, 2])), abs=1e-5)
        assert neg[2, 0] == pytest.approx(float(m.score_pairs(u[2], pos[0])), abs=1e-5)
        # Shared negatives [M, item_dim] go through score_matrix.
        _, shared = score_candidates(u, pos, extra[0], None, m.score_pairs, m.score_matrix)
        assert shared.shape == (batch, n)


def test_require_factorized_refuses_early_fusion_with_the_reason():
    with pytest.raises(ValueError) as err:
        require_factorized(model())
    message = str(err.value)
    for phrase in ("EarlyFusionModel", "export to a nearest-neighbour index", "joined user and item features",
                   "once per (user, item) pair", "cannot be computed ahead of time", "rank a few hundred candidates",
                   "model=two_tower"):  # fmt: skip
        assert phrase in message
    with pytest.raises(ValueError, match="build the ANN index"):
        require_factorized(model(), purpose="build the ANN index")


def test_require_factorized_passes_factorizing_models():
    two_tower = TwoTowerModel(FITTED, embedding_dim=8, mlp=[16])
    assert require_factorized(two_tower) is two_tower
    popularity = PopularityModel(torch.arange(5))
    assert require_factorized(popularity) is popularity
    with pytest.raises(ValueError):
        require_factorized(torch.nn.Linear(2, 2))  # says nothing: refused


@pytest.mark.slow
@pytest.mark.parametrize("sampler", [None, "uniform"])
def test_tiny_early_fusion_run_end_to_end(tmp_path, tiny_overrides, sampler):
    overrides = tiny_overrides + ["model=early_fusion"] + ([f"sampler={sampler}"] if sampler else [])
    cfg = compose_config(overrides, output_dir=tmp_path)
    assert cfg.model.name == "early_fusion"
    metrics = train(cfg)
    assert_matches_brute_force(metrics, tmp_path)  # every pair scored by the network
    assert (tmp_path / "results.json").exists()
