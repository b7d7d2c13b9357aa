"""Models that score (user, item) pairs through separate user and item vectors,
so item vectors can be computed ahead of time and indexed."""

from __future__ import annotations

import torch
from torch import nn

from twotower.candidates import dot_matrix, dot_pairs
from twotower.models.tower import Tower, select_features


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
    ``sparse_embeddings``: embedding gradients of the batch's rows only (see :class:`Tower`)."""

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
    ):
        super().__init__()
        fitted = select_features(fitted, feature_set)
        self.user_tower = Tower(
            fitted["user"], embedding_dim, mlp, dropout, normalize, history_dropout=history_dropout, sparse=sparse_embeddings
        )
        self.item_tower = Tower(fitted["item"], embedding_dim, mlp, dropout, normalize, sparse=sparse_embeddings)
        if torch_compile:
            # In place (nn.Module.compile): parameter names, checkpoints and export are unchanged.
            # Dynamic shapes: batches, negatives and evaluation chunks vary in size.
            self.user_tower.compile(dynamic=True)
            self.item_tower.compile(dynamic=True)

    @property
    def read_features(self) -> dict[str, list[str]]:
        """The features each tower reads (the data module gathers no others)."""
        return {"user": self.user_tower.input_names, "item": self.item_tower.input_names}

    def encode_users(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        """``[B, D]`` user vectors."""
        return self.user_tower(features)

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
