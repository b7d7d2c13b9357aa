"""SimpleX's user vector: (1 - w) * the user tower's output + w * P(mean of the history items'
embeddings), checked against values computed by hand on tiny tables."""

from __future__ import annotations

import pytest
import torch

from twotower.models.two_tower import TwoTowerModel

# Users u1, u2; items i1, i2, i3; the history vocabulary holds the items seen in training histories
# (i1, i3), so history code 1 is i1 and code 2 is i3, while the item id codes are i1=1, i2=2, i3=3.
FITTED = {
    "user": [
        {"name": "user_id", "kind": "id", "vocab": ["u1", "u2"], "cardinality": 3},
        {"name": "history", "kind": "history", "vocab": ["i1", "i3"], "cardinality": 3, "max_len": 2},
    ],
    "item": [{"name": "item_id", "kind": "id", "vocab": ["i1", "i2", "i3"], "cardinality": 4}],
}


def model(**kwargs) -> TwoTowerModel:
    m = TwoTowerModel(FITTED, embedding_dim=2, mlp=[], normalize=False, **kwargs)
    with torch.no_grad():
        m.user_tower.table.weight.copy_(torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]))  # unknown, u1, u2
        m.item_tower.table.weight.copy_(torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 5.0], [0.0, 4.0]]))  # unknown, i1..i3
    return m


USERS = {"user_id": torch.tensor([1, 2]), "history": torch.tensor([[1, 2], [2, 0]])}  # u1: i1, i3; u2: i3 (then padding)


def test_the_blend_pools_the_item_towers_own_embeddings():
    m = model(history_weight=0.25, history_projection=False)
    # u1: 0.75 * [1, 0] + 0.25 * mean([2, 0], [0, 4]) = [0.75, 0] + [0.25, 0.5] = [1.0, 0.5]
    # u2: 0.75 * [0, 1] + 0.25 * [0, 4] (padding left out of the mean) = [0, 1.75]
    torch.testing.assert_close(m.encode_users(USERS), torch.tensor([[1.0, 0.5], [0.0, 1.75]]))
    assert m.read_features["user"] == ["user_id", "history"]


def test_the_blend_is_normalized_to_a_cosine_and_projected():
    m = TwoTowerModel(FITTED, embedding_dim=2, mlp=[], normalize=True, history_weight=0.5, history_projection=True)
    with torch.no_grad():
        m.user_tower.table.weight.copy_(torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]))
        m.item_tower.table.weight.copy_(torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 5.0], [0.0, 4.0]]))
        m.history.projection.weight.copy_(torch.tensor([[0.0, 1.0], [1.0, 0.0]]))  # swaps the two coordinates
    # u1: 0.5 * [1, 0] + 0.5 * swap([1, 2]) = [0.5, 0] + [1, 0.5] = [1.5, 0.5] -> / sqrt(2.5)
    expected = torch.tensor([1.5, 0.5]) / torch.tensor(2.5).sqrt()
    torch.testing.assert_close(m.encode_users(USERS)[0], expected)


def test_a_shared_history_trains_the_item_embeddings_and_an_own_one_does_not():
    shared = model(history_weight=0.5, history_projection=False)
    shared.encode_users(USERS)[0].sum().backward()  # u1 only: d/d(row) of 0.5 * mean over 2 items
    torch.testing.assert_close(shared.item_tower.table.weight.grad, torch.tensor([[0.0, 0.0], [0.25, 0.25], [0.0, 0.0], [0.25, 0.25]]))
    own = model(history_weight=0.5, history_projection=False, share_history_embeddings=False)
    own.encode_users(USERS)[0].sum().backward()
    assert own.item_tower.table.weight.grad is None and own.history.table.weight.grad.abs().sum() > 0


def test_history_dropout_hides_history_items_in_training_only():
    m = model(history_weight=0.5, history_projection=False, history_dropout=0.999)
    torch.manual_seed(0)
    m.train()
    # Every history item hidden: the pooled part is 0, so u1 is 0.5 * [1, 0].
    torch.testing.assert_close(m.encode_users(USERS)[0], torch.tensor([0.5, 0.0]))
    m.eval()
    torch.testing.assert_close(m.encode_users(USERS)[0], torch.tensor([1.0, 1.0]))  # 0.5 * [1, 0] + 0.5 * [1, 2]


@pytest.mark.parametrize("kwargs,message", [
    ({"history_weight": 1.0}, "model.net.history_weight=1.0: expected a share in \\(0, 1\\)"),
    ({"history_weight": 0.5, "feature_set": "ids"}, "the user features have 0 of kind history"),
    ({"history_weight": 0.5, "mlp": [3], "history_projection": False}, "history_projection=false needs"),
])  # fmt: skip
def test_the_blend_refuses_what_cannot_work(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TwoTowerModel(FITTED, embedding_dim=2, **{"mlp": [], **kwargs})
