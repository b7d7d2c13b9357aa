"""Models that score (user, item) pairs through separate user and item vectors,
so item vectors can be computed ahead of time and indexed."""

from __future__ import annotations

import torch
from torch import nn

from twotower.models.history import HistoryPool
from twotower.models.scoring import dot_matrix, dot_pairs
from twotower.models.tower import Tower, select_features


def _blended_history(user_fitted: list[dict], weight: float | None) -> dict | None:
    """The history feature that ``history_weight`` blends into the user vector (``None``: no blend)."""
    if weight is None:
        return None
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0 < weight < 1:
        raise ValueError(f"model.net.history_weight={weight!r}: expected a share in (0, 1), or null for no blend")
    histories = [f for f in user_fitted if f["kind"] == "history"]
    if len(histories) != 1:
        raise ValueError(
            f"model.net.history_weight={weight} blends the user's history, but the user features have "
            f"{len(histories)} of kind history; expected one, e.g. {{name: history, kind: history}}"
        )
    return histories[0]


class InnerProductScorer:
    """The score of a factorizing model: ``<user_vec, item_vec>``, so item vectors
    can be computed once and put into a nearest-neighbour index."""

    factorizes = True

    @staticmethod
    def score_pairs(users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """``[..., D], [..., D] -> [...]``."""
        return dot_pairs(users, items)

    @staticmethod
    def score_matrix(users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """``[B, D], [N, D] -> [B, N]``."""
        return dot_matrix(users, items)


class TwoTowerModel(InnerProductScorer, nn.Module):
    """A user tower and an item tower; the score is ``<user_vec, item_vec>``,
    which is the cosine similarity when the towers normalize their outputs.

    ``feature_set="ids"`` keeps only the ID features (the matrix-completion
    baseline, and the ID-only two-tower model). ``torch_compile``: compile both
    towers with ``torch.compile`` (see docs/BENCHMARKS.md for where it pays off).
    ``sparse_embeddings``: embedding gradients of the batch's rows only (see :class:`Tower`).

    ``history_weight``: SimpleX's user vector, ``(1 - w) * user tower + w * pooled history``
    (:class:`~twotower.models.history.HistoryPool`), for the user's one ``history`` feature;
    ``share_history_embeddings``: pool the item tower's own ID embeddings (else a table of the
    history's own); ``history_projection``: a learned ``D x D`` map of the pooled history.
    ``None``: a history feature is one more input of the user tower's MLP."""

    trainable = True

    def __init__(
        self,
        fitted: dict[str, list[dict]],
        embedding_dim: int = 32,
        mlp: list[int] | tuple[int, ...] = (128, 64),
        dropout: float = 0.0,
        normalize: bool = True,
        feature_set: str = "all",
        history_dropout: float = 0.0,
        torch_compile: bool = False,
        sparse_embeddings: bool = False,
        history_weight: float | None = None,
        share_history_embeddings: bool = True,
        history_projection: bool = True,
        history_trains_items: bool = True,
        embedding_dropout: float = 0.0,
    ):
        super().__init__()
        fitted = select_features(fitted, feature_set)
        blended = _blended_history(fitted["user"], history_weight)
        self.normalize, self.history_weight = normalize, history_weight
        self.user_tower = Tower(
            [f for f in fitted["user"] if f is not blended], embedding_dim, mlp, dropout,
            normalize=normalize and blended is None, history_dropout=history_dropout, sparse=sparse_embeddings,
            embedding_dropout=embedding_dropout,
        )  # fmt: skip
        self.item_tower = Tower(fitted["item"], embedding_dim, mlp, dropout, normalize, sparse=sparse_embeddings,
                                embedding_dropout=embedding_dropout)  # fmt: skip
        self.history = None
        if blended is not None:
            self.history = HistoryPool(
                blended, fitted["item"], self.item_tower if share_history_embeddings else None, embedding_dim,
                self.user_tower.output_dim, history_projection, dropout, history_dropout, sparse_embeddings,
                trains_items=history_trains_items,
            )  # fmt: skip
        if torch_compile:
            # In place (nn.Module.compile): parameter names, checkpoints and export are unchanged.
            # Dynamic shapes: batches, negatives and evaluation chunks vary in size.
            self.user_tower.compile(dynamic=True)
            self.item_tower.compile(dynamic=True)

    @property
    def read_features(self) -> dict[str, list[str]]:
        """The features each tower reads (the data module gathers no others)."""
        history = [self.history.name] if self.history is not None else []
        return {"user": [*self.user_tower.input_names, *history], "item": self.item_tower.input_names}

    def encode_users(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        """``[B, D]`` user vectors."""
        if self.history is None:
            return self.user_tower(features)
        w = self.history_weight
        blend = (1 - w) * self.user_tower(features) + w * self.history(features[self.history.name])
        return nn.functional.normalize(blend, dim=-1) if self.normalize else blend

    def encode_items(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        """``[N, D]`` item vectors."""
        return self.item_tower(features)


class PopularityModel(InnerProductScorer, nn.Module):
    """Non-learned baseline: every user gets the most-clicked training items.

    Written as a one-dimensional two-tower model (user vector 1, item vector
    its training count) so it runs through the same evaluation."""

    trainable = False
    read_features = {"user": [], "item": []}  # the dense index alone

    def __init__(self, item_counts: torch.Tensor):
        super().__init__()
        self.register_buffer("item_counts", item_counts.float())

    def encode_users(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        index = features["index"]
        return torch.ones(len(index), 1, device=index.device)

    def encode_items(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.item_counts[features["index"]][:, None]
