"""Co-visitation scores: where a three-step walk from a user ends (P3; Cooper et al., WWW 2014).

The walk goes user ``u`` -> one of ``u``'s items ``i`` -> a user ``v`` who has ``i`` -> one of
``v``'s items ``j``, each step uniform, over the observed ``(user, item)`` pairs ``A`` (``d``:
degrees). It ends at ``j`` with probability

    p3(u, j) = 1/d_u sum_i A_ui / d_i sum_v A_vi A_vj / d_v  =  <q_u, r_j>

with the item vector ``r_j[v] = A_vj / sqrt(d_v)`` (the item's visitors) and the user vector
``q_u = 1/d_u sum_i A_ui r_i / d_i`` (the mean of the user's history's item vectors, each over
its degree): an inner product of two towers, in the space of the users (high-rank and sparse),
which a few hundred learned dimensions do not hold (check-ins are local: docs/RESULTS.md).
:class:`CoVisitation` adds it to a two-tower model's cosines, ``cos(u, j) + w p3(u, j) /
max_k p3(u, k)`` (the maximum is the user's own: the two parts on one scale for every user).
Pure tensors and scipy.sparse, no Lightning.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch


class CoVisitation:
    """P3 over the pairs ``users``, ``items`` ``[E]`` (duplicates count once) of a catalogue of
    ``num_users`` x ``num_items``. ``scores(users [U]) -> [U, num_items]`` float32, each row
    divided by its maximum (all zeros for a user without pairs)."""

    def __init__(self, users: torch.Tensor, items: torch.Tensor, num_users: int, num_items: int):
        pairs = sp.csr_matrix((np.ones(len(users), dtype=np.float32), (users.numpy(), items.numpy())),
                              shape=(num_users, num_items))  # fmt: skip
        pairs.data[:] = 1.0  # duplicates were summed
        user_step = sp.diags(_inverse(np.asarray(pairs.sum(1)).ravel())) @ pairs  # D_u^-1 A: user -> item
        item_step = sp.diags(_inverse(np.asarray(pairs.sum(0)).ravel())) @ pairs.T  # D_i^-1 A^T: item -> user
        self.user_step, self.item_step = user_step.tocsr(), item_step.tocsr()

    def scores(self, users: torch.Tensor) -> torch.Tensor:
        # Sparse products all the way: a user's walks reach a part of the catalogue (a third on
        # Gowalla), and its items and their visitors are few.
        first = self.user_step[users.numpy()]  # [U, items]
        ends = (first @ self.item_step @ self.user_step).toarray()  # [U, items]
        ends = torch.from_numpy(ends.astype(np.float32, copy=False))
        top = ends.max(dim=1, keepdim=True).values
        return ends / torch.where(top > 0, top, torch.ones(()))


def _inverse(degree: np.ndarray) -> np.ndarray:
    """``1 / d`` where ``d > 0``, else 0 (float32)."""
    return np.divide(1.0, degree, out=np.zeros(len(degree), dtype=np.float32), where=degree > 0)
