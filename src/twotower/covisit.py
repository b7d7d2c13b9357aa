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
max_k p3(u, k)`` (the maximum is the user's own: the two parts on one scale for every user);
:func:`top_k_with_walks` ranks by the same sum from an index's candidates, when an export serves
it. Pure tensors, numpy and scipy.sparse, no Lightning.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch


class CoVisitation:
    """P3 over the pairs ``users``, ``items`` ``[E]`` (duplicates count once) of a catalogue of
    ``num_users`` x ``num_items``. ``scores(users [U]) -> [U, num_items]`` float32, each row
    divided by its maximum (all zeros for a user without pairs)."""

    def __init__(self, users: torch.Tensor | np.ndarray, items: torch.Tensor | np.ndarray, num_users: int, num_items: int):
        pairs = sp.csr_matrix((np.ones(len(users), dtype=np.float32), (np.asarray(users), np.asarray(items))),
                              shape=(num_users, num_items))  # fmt: skip
        pairs.data[:] = 1.0  # duplicates were summed
        user_step = sp.diags(_inverse(np.asarray(pairs.sum(1)).ravel())) @ pairs  # D_u^-1 A: user -> item
        item_step = sp.diags(_inverse(np.asarray(pairs.sum(0)).ravel())) @ pairs.T  # D_i^-1 A^T: item -> user
        self.user_step, self.item_step = user_step.tocsr(), item_step.tocsr()

    def scores(self, users: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.sparse_scores(users.numpy()).toarray())

    def sparse_scores(self, users: np.ndarray) -> sp.csr_matrix:
        """``[U, num_items]`` float32 CSR, the rows of :meth:`scores` with only the items a walk
        reaches (what serving merges with the index's candidates)."""
        # Sparse products all the way: a user's walks reach a part of the catalogue (a third on
        # Gowalla), and its items and their visitors are few.
        ends = (self.user_step[users] @ self.item_step @ self.user_step).tocsr().astype(np.float32)  # [U, items]
        top = ends.max(axis=1).toarray().ravel()
        return sp.diags(_inverse(top)) @ ends


def is_weight(value) -> bool:
    """``value`` is a co-visitation weight: a finite number >= 0 (not a bool)."""
    return not isinstance(value, bool) and isinstance(value, (int, float)) and np.isfinite(value) and value >= 0


def _inverse(degree: np.ndarray) -> np.ndarray:
    """``1 / d`` where ``d > 0``, else 0 (float32)."""
    return np.divide(1.0, degree, out=np.zeros(len(degree), dtype=np.float32), where=degree > 0)


def top_k_with_walks(query: np.ndarray, indexed: np.ndarray, candidates: np.ndarray, bound: float, walk_items: np.ndarray,
                     walk_scores: np.ndarray, weight: float, exclude: np.ndarray, k: int, first: int = 256) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """One user's top ``k`` by ``indexed @ query + weight * walk`` (``weight >= 0``), ``exclude``
    left out; ``indexed [N, D]``, ``query [D]``. Returns ``(item rows [<= k], scores)``, best first.

    Two lists are merged as in Fagin's threshold algorithm: ``candidates [m]``, the items an index
    found by inner product (``-1``: none), every one of the others scoring at most ``bound``;
    and the items the walks reach (``walk_items [S]``, ascending, ``walk_scores [S]``), taken
    best first, ``first`` of them, then four times as many, until the k-th best score of the
    items scored reaches what an item outside both could score (``bound + weight *`` the best
    walk score left), or every walk item is in. Exact when ``candidates`` are the exact top
    ``k + len(exclude)`` and ``bound`` their lowest inner product (``-inf`` when they are the
    whole catalogue): an item outside both lists cannot beat the k-th. With an approximate
    index, as good as its candidates."""
    found = candidates[candidates >= 0]
    at = np.searchsorted(walk_items, found).clip(max=max(len(walk_items) - 1, 0))
    found_walk = np.where(walk_items[at] == found, walk_scores[at], 0) if len(walk_items) else np.zeros(len(found))
    taken = min(first, len(walk_items))
    while True:
        if taken < len(walk_items):  # the best `taken` walk items, and the best score of those left
            part = np.argpartition(-walk_scores, taken)
            best, left = part[:taken], float(walk_scores[part[taken]])
        else:
            best, left = np.arange(len(walk_items)), 0.0
        rows, first_at = np.unique(np.concatenate([found, walk_items[best]]), return_index=True)
        walk = np.concatenate([found_walk, walk_scores[best]]).astype(np.float32)[first_at]
        keep = ~np.isin(rows, exclude)
        rows, scores = rows[keep], indexed[rows[keep]] @ query + np.float32(weight) * walk[keep]
        order = np.argsort(-scores, kind="stable")[:k]
        if taken == len(walk_items) or (len(order) == k and scores[order[-1]] >= bound + weight * left):
            return rows[order], scores[order]
        taken = min(4 * taken, len(walk_items))
