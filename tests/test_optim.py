"""twotower.optim.Adam: torch's Adam on dense gradients, SparseAdam's lazy rule on sparse ones."""

import csv
import math

import pytest
import torch
from torch import nn

from twotower.config import ConfigError, compose_config
from twotower.models.tower import Tower
from twotower.optim import Adam, lazy_adam_rows_
from twotower.training import train


def _embedding_and_linear(sparse: bool) -> tuple[nn.Embedding, nn.Linear]:
    torch.manual_seed(0)
    return nn.Embedding(40, 4, sparse=sparse), nn.Linear(4, 1)


def _train(embedding, linear, optimizers, steps: int = 6) -> None:
    ids = torch.Generator().manual_seed(1)
    for _ in range(steps):
        rows = torch.randint(0, 40, (12,), generator=ids)  # repeated rows included
        for opt in optimizers:
            opt.zero_grad()
        linear(embedding(rows)).pow(2).mean().backward()
        for opt in optimizers:
            opt.step()


@pytest.mark.parametrize("fused", [True, False])
def test_dense_gradients_get_exactly_torchs_adam(fused):
    ours, theirs = _embedding_and_linear(False), _embedding_and_linear(False)
    kw = dict(lr=0.01, weight_decay=0.001, fused=fused)
    _train(*ours, [Adam([*ours[0].parameters(), *ours[1].parameters()], **kw)])
    _train(*theirs, [torch.optim.Adam([*theirs[0].parameters(), *theirs[1].parameters()], **kw)])
    for a, b in zip([*ours[0].parameters(), *ours[1].parameters()], [*theirs[0].parameters(), *theirs[1].parameters()]):
        assert torch.equal(a, b)


def test_sparse_gradients_get_sparse_adams_rule_and_the_rest_torchs_adam():
    ours, theirs = _embedding_and_linear(True), _embedding_and_linear(True)
    _train(*ours, [Adam([*ours[0].parameters(), *ours[1].parameters()], lr=0.01, fused=True)])
    _train(*theirs, [torch.optim.SparseAdam(theirs[0].parameters(), lr=0.01), torch.optim.Adam(theirs[1].parameters(), lr=0.01)])
    torch.testing.assert_close(ours[0].weight, theirs[0].weight, rtol=0, atol=1e-6)
    assert torch.equal(ours[1].weight, theirs[1].weight)


def test_lazy_rows_by_hand_untouched_rows_and_their_moments_stay():
    weight = torch.tensor([[1.0, -2.0], [0.5, 0.5], [3.0, 1.0]])
    exp_avg, exp_avg_sq = torch.zeros(3, 2), torch.zeros(3, 2)
    grad = torch.tensor([[0.2, -0.4]])
    lr, b1, b2, eps, wd = 0.1, 0.9, 0.999, 1e-8, 0.5
    lazy_adam_rows_(weight, torch.tensor([2]), grad, exp_avg, exp_avg_sq, 1, lr, b1, b2, eps, wd)
    g = grad[0] + wd * torch.tensor([3.0, 1.0])  # weight decay on the touched row: [1.7, 0.1]
    m, v = (1 - b1) * g, (1 - b2) * g * g
    step_size = lr * math.sqrt(1 - b2) / (1 - b1)
    expected_row = torch.tensor([3.0, 1.0]) - step_size * m / (v.sqrt() + eps)
    torch.testing.assert_close(weight[2], expected_row)
    torch.testing.assert_close(weight[2], torch.tensor([2.9, 0.9]), atol=1e-5, rtol=0)  # a first Adam step moves lr
    torch.testing.assert_close(exp_avg[2], m)
    torch.testing.assert_close(exp_avg_sq[2], v)
    assert torch.equal(weight[:2], torch.tensor([[1.0, -2.0], [0.5, 0.5]]))  # no decay, no move
    assert not exp_avg[:2].any() and not exp_avg_sq[:2].any()


def test_rows_touched_once_do_not_move_again_unlike_dense_adam():
    """Lazy: a row's momentum carries it only on steps whose batch touches it."""
    moved = {}
    for sparse in (True, False):
        table, head = _embedding_and_linear(sparse)
        opt = Adam([*table.parameters(), *head.parameters()], lr=0.01)
        for rows in ([0, 1], [2, 3]):
            before = table.weight.detach().clone()
            opt.zero_grad()
            head(table(torch.tensor(rows))).pow(2).mean().backward()
            opt.step()
        moved[sparse] = (table.weight.detach() != before).any(1)[:2].tolist()  # rows 0, 1 in the second step
    assert moved[True] == [False, False]
    assert moved[False] == [True, True]


def test_state_dict_round_trip_continues_exactly():
    def run(reload: bool) -> torch.Tensor:
        table, head = _embedding_and_linear(True)
        params = [*table.parameters(), *head.parameters()]
        opt = Adam(params, lr=0.01)
        _train(table, head, [opt], steps=3)
        if reload:
            state = opt.state_dict()
            opt = Adam(params, lr=0.01)
            opt.load_state_dict(state)
        _train(table, head, [opt], steps=2)
        return table.weight.detach()

    assert torch.equal(run(reload=True), run(reload=False))


def test_options_the_lazy_rule_lacks_are_refused():
    table, head = _embedding_and_linear(True)
    opt = Adam([*table.parameters(), *head.parameters()], lr=0.01, amsgrad=True)
    head(table(torch.tensor([1]))).sum().backward()
    with pytest.raises(ValueError, match="amsgrad"):
        opt.step()


def test_sparse_tower_gradients_hold_the_batchs_rows_only():
    fitted = [{"name": "user_id", "kind": "id", "cardinality": 1000}, {"name": "age", "kind": "categorical", "cardinality": 7}]
    tower = Tower(fitted, embedding_dim=4, mlp=[3], sparse=True)
    tower({"user_id": torch.tensor([5, 9, 5]), "age": torch.tensor([1, 2, 1])}).sum().backward()
    grad = tower.table.weight.grad
    assert grad.is_sparse
    assert sorted(set(grad.coalesce().indices()[0].tolist())) == [5, 9, 1000 + 1, 1000 + 2]


def test_sparse_embeddings_with_an_optimizer_that_refuses_them_is_refused_before_any_output(tmp_path, tiny_overrides):
    overrides = tiny_overrides + ["model.net.sparse_embeddings=true", "model.optimizer._target_=torch.optim.Adam"]
    with pytest.raises(ConfigError, match=r"sparse_embeddings=true with model.optimizer._target_=torch.optim.Adam.*"
                                          r"expected model.optimizer._target_=twotower.optim.Adam"):  # fmt: skip
        train(compose_config(overrides, output_dir=tmp_path))
    assert not any(tmp_path.iterdir())


def test_sparse_embeddings_on_several_devices_are_refused_before_any_output(tmp_path, tiny_overrides):
    overrides = tiny_overrides + ["model.net.sparse_embeddings=true", "trainer=ddp_cpu"]
    with pytest.raises(ConfigError, match="supported on one device only"):
        train(compose_config(overrides, output_dir=tmp_path))
    assert not any(tmp_path.iterdir())


@pytest.mark.slow
def test_a_run_with_sparse_embeddings_learns_and_checkpoints_its_lazy_state(tmp_path, tiny_overrides):
    overrides = tiny_overrides + ["model=two_tower_ids", "model.net.sparse_embeddings=true", "trainer.max_epochs=3",
                                  "trainer.limit_train_batches=30", "model.optimizer.lr=0.01", "seed=0"]  # fmt: skip
    train(compose_config(overrides, output_dir=tmp_path))
    with open(tmp_path / "csv" / "metrics.csv") as f:
        losses = [float(row["train/loss"]) for row in csv.DictReader(f) if row.get("train/loss")]
    assert len(losses) == 3 and losses[0] > losses[1] > losses[2]
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    states = ckpt["optimizer_states"][0]["state"]
    assert len(states) == 2 and all(s["step"] == 90 and s["exp_avg"].abs().sum() > 0 for s in states.values())
