"""Early fusion: one network over the joined user and item features.

The model every retrieval text warns about (reference section 1): it may rank
well, but its score is not ``<f(u), g(i)>``, so it must run once per
(user, item) pair and cannot be indexed. The platform carries it to measure
that difference (``scripts/bench_early_fusion.py``), and
:func:`require_factorized` refuses it wherever item vectors must be computed
ahead of time (a nearest-neighbour index, an export).
"""

from __future__ import annotations

import torch
from torch import nn

from twotower.models.tower import Tower, select_features

DEFAULT_MAX_PAIRS = 1 << 22


class EarlyFusionModel(nn.Module):
    """Score = MLP(concat(user embeddings, item embeddings)) -> one logit.

    ``encode_users`` / ``encode_items`` return each side's concatenated
    feature embeddings (a :class:`Tower` with ``mlp=[]`` and no
    normalization, so features are embedded exactly as in the two-tower
    model); nothing is learned on one side alone. ``mlp`` lists the hidden
    sizes (ReLU after each); an output layer of size 1 always follows. Scores
    are logits on an arbitrary scale (not cosines).

    ``max_pairs`` bounds the (user, item) pairs that go through the MLP at
    once in :meth:`score_matrix` (memory: about ``max_pairs * (h1 + h2) * 4``
    bytes of activations in float32).
    """

    trainable = True
    factorizes = False

    def __init__(
        self,
        fitted: dict[str, list[dict]],
        embedding_dim: int = 32,
        mlp: list[int] | tuple[int, ...] = (128, 64),
        dropout: float = 0.0,
        feature_set: str = "all",
        max_pairs: int = DEFAULT_MAX_PAIRS,
    ):
        super().__init__()
        if max_pairs < 1:
            raise ValueError(f"model.max_pairs={max_pairs}: expected a positive integer")
        fitted = select_features(fitted, feature_set)
        self.user_tower = Tower(fitted["user"], embedding_dim, [], 0.0, normalize=False)
        self.item_tower = Tower(fitted["item"], embedding_dim, [], 0.0, normalize=False)
        self.user_dim = self.user_tower.output_dim
        self.item_dim = self.item_tower.output_dim
        self.max_pairs = int(max_pairs)
        layers: list[nn.Module] = []
        width = self.user_dim + self.item_dim
        for size in mlp:
            # In place: every ReLU follows a fresh tensor (a Linear, or the sum in score_matrix).
            layers += [nn.Linear(width, size), nn.ReLU(inplace=True)]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = size
        layers.append(nn.Linear(width, 1))
        self.mlp = nn.Sequential(*layers)

    def encode_users(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        """``[B, user_dim]``: the user's concatenated feature embeddings."""
        return self.user_tower(features)

    def encode_items(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        """``[N, item_dim]``: the item's concatenated feature embeddings."""
        return self.item_tower(features)

    def score_pairs(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """``[..., user_dim], [..., item_dim] -> [...]``: leading dimensions
        broadcast; the two sides are concatenated, then the MLP."""
        lead = torch.broadcast_shapes(users.shape[:-1], items.shape[:-1])
        joined = torch.cat([users.expand(*lead, -1), items.expand(*lead, -1)], dim=-1)
        return self.mlp(joined).squeeze(-1)

    def score_matrix(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """``[B, user_dim], [N, item_dim] -> [B, N]``: every pair through the MLP.

        Memory bounded: at most ``max_pairs`` (default 2**22) pairs go through
        the MLP at once (blocks of users x items). The first layer is linear,
        so ``W [u; i] + b = W_u u + W_i i + b``: each side's part is computed
        once and summed per pair (the same function as concatenating, without
        materializing ``[B, N, user_dim + item_dim]``; the best case for early
        fusion). Every hidden layer after it still runs once per pair, which is
        the cost that makes this model unfit for retrieval.
        """
        first, rest = self.mlp[0], self.mlp[1:]
        user_part = users @ first.weight[:, : self.user_dim].T + first.bias  # [B, h1]
        item_part = items @ first.weight[:, self.user_dim :].T  # [N, h1]
        num_users, num_items = len(users), len(items)
        user_block = max(1, min(num_users, self.max_pairs))
        item_block = max(1, self.max_pairs // user_block)
        rows = []
        for u0 in range(0, num_users, user_block):
            up = user_part[u0 : u0 + user_block, None, :]
            cols = [
                rest(up + item_part[None, n0 : n0 + item_block, :]).squeeze(-1)
                for n0 in range(0, num_items, item_block)
            ]
            rows.append(torch.cat(cols, dim=1) if cols else user_part.new_zeros(len(up), 0))
        return torch.cat(rows, dim=0) if rows else user_part.new_zeros(0, num_items)


def require_factorized(model: nn.Module, purpose: str = "export to a nearest-neighbour index") -> nn.Module:
    """Return ``model`` if its score factorizes as ``<f(u), g(i)>``; else raise ``ValueError``.

    Called wherever item vectors must be computed ahead of time (an ANN index,
    an export). A model without a ``factorizes`` attribute is refused too.
    """
    if getattr(model, "factorizes", False) is True:
        return model
    name = type(model).__name__
    raise ValueError(
        f"{name} cannot be used for {purpose}: its score does not factorize as <f(user), g(item)>. "
        "It is a network over the joined user and item features (early fusion), so it must run once "
        "per (user, item) pair: item vectors cannot be computed ahead of time and put into a "
        "nearest-neighbour index. Use it to rank a few hundred candidates retrieved by another model, "
        "or train model=two_tower for retrieval."
    )
