"""Two-step random walks on the training graph: item -> a user who interacted with it -> an
item of that user's, each step uniform.

Started from an example's positive ``i``, the walk ends at ``j`` with probability
``P(j | i) = sum_u [u has i] / d_i * [u has j] / d_u`` (``d``: degrees), the item-to-item
transition of P3 (Cooper et al., WWW 2014; RP3beta: Paudel et al., TiiS 2016), a strong
neighbourhood recommender on check-in data. The listwise loss takes the walk's end as a second,
softer label of the example (``loss.walk_label_weight``), so item-item co-occurrence reaches
the towers while serving stays one inner product. Pure tensors, no Lightning.
"""

from __future__ import annotations

import torch


def _csr(keys: torch.Tensor, values: torch.Tensor, num_keys: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ptr [num_keys + 1], values sorted by key)``: key ``k``'s values are ``values[ptr[k]:ptr[k + 1]]``."""
    order = torch.argsort(keys, stable=True)
    ptr = torch.zeros(num_keys + 1, dtype=torch.long)
    ptr[1:] = torch.bincount(keys, minlength=num_keys).cumsum(0)
    return ptr, values[order]


def _uniform_member(ptr: torch.Tensor, members: torch.Tensor, keys: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One member of each key's list ``[B]``, uniformly at random (every key has one at least).
    In float32 ``u * size`` can round up to ``size`` itself for ``u`` just below 1: clamped."""
    start, size = ptr[keys], ptr[keys + 1] - ptr[keys]
    offset = (torch.rand(len(keys), generator=generator) * size).long()
    return members[start + torch.minimum(offset, size - 1)]


class TwoStepWalk:
    """Walks over the ``(user, item)`` training pairs ``users``, ``items`` ``[E]``.
    ``sample(starts [B], generator) -> ends [B]``: one walk from each start item, which must
    have a training pair (a positive has)."""

    def __init__(self, users: torch.Tensor, items: torch.Tensor, num_users: int, num_items: int):
        self.item_ptr, self.item_users = _csr(items, users, num_items)
        self.user_ptr, self.user_items = _csr(users, items, num_users)

    def sample(self, starts: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        via = _uniform_member(self.item_ptr, self.item_users, starts, generator)
        return _uniform_member(self.user_ptr, self.user_items, via, generator)
