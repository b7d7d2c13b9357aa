"""Per-example loss weights from how many training examples each user has.

A batch's mean loss counts each training pair once, so a user with 800 pairs pulls the
model 100 times as hard as one with 8, while Recall@20 and NDCG@20 average over users,
each once. Weighting each pair by its user's count to the power ``-a`` moves training
toward that average (``a = 1``: every user counts equally; ``a = 0``: every pair does).
UltraGCN (Mao et al., CIKM 2021) weights each pair of its loss by a similar degree term,
``(1 / d_u) sqrt((d_u + 1) / (d_i + 1))``, derived from graph convolution.
"""

from __future__ import annotations

import torch


def user_count_weights(users: torch.Tensor, num_users: int, exponent: float) -> torch.Tensor:
    """``[N]`` user index of each training example -> ``[N]`` float32 weights
    ``count(user) ** -exponent``, ``count`` being the user's number of examples in ``users``."""
    counts = torch.bincount(users, minlength=num_users).to(torch.float64)
    return counts[users].pow(-exponent).to(torch.float32)


def weighted_mean(terms: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    """``sum_b w_b t_b / sum_b w_b`` of ``[B]`` per-example terms (the plain mean when
    ``weight`` is ``None``): the weights' scale does not change the loss's."""
    if weight is None:
        return terms.mean()
    return (terms * weight).sum() / weight.sum()
