"""Hard negatives mined from the model's own ranking: the rank window, the exclusion of
known positives, the hard/easy split, the mining schedule in a real run, and refusals."""

import logging

import numpy as np
import pytest
import torch

from twotower import wiring
from twotower.config import compose_config
from twotower.data.positives import PositiveLookup
from twotower.hard_negatives import HardNegativeSampler, hard_sampler, mine_rank_window
from twotower.samplers import TrainingStats
from twotower.training import train
from brute_force import assert_matches_brute_force


def _random_case(num_users=7, num_items=60, dim=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    user_vecs = torch.randn(num_users, dim, generator=g)
    item_vecs = torch.randn(num_items, dim, generator=g)
    pos_users = torch.randint(num_users, (40,), generator=g)
    pos_items = torch.randint(num_items, (40,), generator=g)
    lookup = PositiveLookup(pos_users, pos_items, num_users, num_items)
    positives = {u: set() for u in range(num_users)}
    for u, i in zip(pos_users.tolist(), pos_items.tolist()):
        positives[u].add(i)
    return user_vecs, item_vecs, lookup, positives


@pytest.mark.parametrize("lo,hi,chunk", [(1, 1, 1024), (3, 10, 2), (5, 30, 3)])
def test_rank_window_matches_brute_force(lo, hi, chunk):
    user_vecs, item_vecs, lookup, positives = _random_case()
    users = torch.arange(len(user_vecs))
    mined = mine_rank_window(user_vecs, item_vecs, users, lookup, lo, hi, chunk=chunk)
    assert mined.shape == (len(users), hi - lo + 1)
    scores = user_vecs.numpy() @ item_vecs.numpy().T
    for u in range(len(users)):
        order = [int(i) for i in np.argsort(-scores[u], kind="stable") if int(i) not in positives[u]]
        rank = {item: r + 1 for r, item in enumerate(order)}  # 1-based among non-positives
        assert all(lo <= rank[int(i)] <= hi for i in mined[u]), f"user {u}"
        assert mined[u].tolist() == order[lo - 1 : hi]


def test_known_positives_are_never_mined():
    user_vecs, item_vecs, lookup, positives = _random_case(seed=1)
    # Make every positive the user's best-scored item: it would take rank 1 if not dropped.
    for u, items in positives.items():
        for i in items:
            item_vecs[i] = user_vecs[u] * 100
    users = torch.arange(len(user_vecs))
    mined = mine_rank_window(user_vecs, item_vecs, users, lookup, 1, 20)
    for u in range(len(users)):
        assert not set(mined[u].tolist()) & positives[u]
    assert not lookup(users, mined).any()


def test_rank_window_is_validated():
    user_vecs, item_vecs, lookup, _ = _random_case()
    users = torch.arange(len(user_vecs))
    with pytest.raises(ValueError, match=r"sampler.lo=10 > sampler.hi=5"):
        mine_rank_window(user_vecs, item_vecs, users, lookup, 10, 5)
    with pytest.raises(ValueError, match=r"sampler.lo=0"):
        mine_rank_window(user_vecs, item_vecs, users, lookup, 0, 5)
    with pytest.raises(ValueError, match=r"sampler.hi=60"):
        mine_rank_window(user_vecs, item_vecs, users, lookup, 1, 60)
    stats = TrainingStats(torch.ones(100), num_users=3)
    with pytest.raises(ValueError, match=r"sampler.lo=10 > sampler.hi=5"):
        hard_sampler(stats, lo=10, hi=5)


def test_hard_fraction_split():
    num_users, num_items, n = 4, 50, 8
    counts = torch.ones(num_items)
    counts[:20] = 0  # with easy=popularity no easy negative comes from items 0..19
    stats = TrainingStats(counts, num_users=num_users)
    sampler = HardNegativeSampler(stats, n, lo=1, hi=5, hard_fraction=0.25, easy="popularity", warmup_epochs=1)
    users = torch.tensor([0, 1, 2, 3, 0, 2])
    positives = torch.full((len(users),), 49)
    g = torch.Generator().manual_seed(0)
    before = sampler.sample(users, positives, g).items
    assert before.shape == (len(users), n) and (before >= 20).all()  # all easy before mining
    window = torch.arange(num_users * 5).view(num_users, 5) % 20  # every window item is in 0..19
    sampler.epoch = 1
    sampler.update(window)
    items = sampler.sample(users, positives, g).items
    assert items.shape == (len(users), n)
    h = round(n * 0.25)
    for row, u in enumerate(users.tolist()):
        assert set(items[row, :h].tolist()) <= set(window[u].tolist())
        assert (items[row, h:] >= 20).all()
    assert ((items < 20).sum(1) == h).all()


def test_window_is_clipped_to_a_small_catalogue(caplog):
    stats = TrainingStats(torch.ones(30), users=torch.tensor([0, 0, 0, 1]), items=torch.tensor([1, 2, 3, 4]), num_users=2)
    with caplog.at_level(logging.WARNING, logger="twotower"):
        sampler = hard_sampler(stats, lo=101, hi=500)
    assert sampler.hi == 30 - 1 - 3 and 1 <= sampler.lo <= sampler.hi
    assert "clipped to hi=26" in caplog.text


def test_mining_schedule():
    sampler = hard_sampler(TrainingStats(torch.ones(200), num_users=2), warmup_epochs=1, refresh_every=2)
    assert [e for e in range(8) if sampler.is_mining_due(e)] == [1, 3, 5, 7]


@pytest.mark.slow
def test_mining_refreshes_on_schedule_in_a_real_run(tmp_path, monkeypatch):
    built = {}
    original = wiring.build_datamodule

    def spy(cfg, train_on, source=None):
        built["dm"] = original(cfg, train_on, source)
        return built["dm"]

    monkeypatch.setattr(wiring, "build_datamodule", spy)
    cfg = compose_config(
        ["sampler=hard", "debug=fast", "trainer.max_epochs=4", "logger.wandb.mode=disabled",
         "trainer.enable_progress_bar=false", "trainer.accelerator=cpu", "sampler.refresh_every=2"],
        output_dir=tmp_path,
    )  # fmt: skip
    metrics = train(cfg)
    sampler = built["dm"].sampler
    assert sampler.mined_at_epochs == [1, 3]
    assert sampler.mined is not None and sampler.mined.shape[1] == sampler.hi - sampler.lo + 1
    data = built["dm"].data
    mined_users = torch.nonzero(sampler.mined_rows).squeeze(1)
    assert len(mined_users) > 0
    assert not data.is_train_positive(mined_users, sampler.mined[mined_users]).any()
    assert_matches_brute_force(metrics, tmp_path)
