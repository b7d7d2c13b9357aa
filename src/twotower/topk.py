"""Exact top-K retrieval for evaluation: each user's K highest-scoring items by inner
product, items the user has already seen excluded. Two interchangeable backends with
the same result (up to ties): torch (a matmul and ``topk`` per chunk of users; the one
for GPUs and small catalogues) and FAISS ``IndexFlatIP`` (blocked matmul with a heap
per query; on CPU it avoids materializing the ``[U, N]`` score matrix). Pure functions
of tensors; memory is bounded by the chunk, never by users x items.
"""

from __future__ import annotations

import numpy as np
import torch

BACKENDS = ("torch", "faiss")


def torch_top_k(
    user_vecs: torch.Tensor, item_vecs: torch.Tensor, seen_rows: torch.Tensor, seen_items: torch.Tensor, k: int
) -> torch.Tensor:
    """``user_vecs`` ``[U, D]``, ``item_vecs`` ``[N, D]``, seen pairs as COO (row in
    ``user_vecs``, item) -> ``[U, min(k, N)]`` item ids, best first. Holds ``U x N`` scores."""
    scores = user_vecs @ item_vecs.T
    scores[seen_rows, seen_items] = float("-inf")
    return scores.topk(min(k, scores.shape[1]), dim=1).indices


def faiss_top_k(
    user_vecs: torch.Tensor, index, seen_rows: torch.Tensor, seen_items: torch.Tensor, k: int, num_items: int
) -> torch.Tensor:
    """As :func:`torch_top_k`, searching a FAISS inner-product ``index`` over the
    catalogue: asks for ``k`` plus the chunk's largest number of seen items, drops
    the seen ones and keeps the first ``k`` left (so every user gets ``k`` unseen
    items whenever the catalogue has them). Returns a CPU tensor."""
    k = min(k, num_items)
    seen_per_user = torch.bincount(seen_rows, minlength=len(user_vecs))
    wanted = min(num_items, k + int(seen_per_user.max()) if len(seen_rows) else k)
    queries = np.ascontiguousarray(user_vecs.detach().float().cpu().numpy())
    scores, items = index.search(queries, wanted)
    scores, items = torch.from_numpy(scores), torch.from_numpy(items)
    if len(seen_rows):
        seen_keys = torch.sort(seen_rows.cpu() * num_items + seen_items.cpu()).values
        keys = torch.arange(len(items))[:, None] * num_items + items.clamp_min(0)
        at = torch.searchsorted(seen_keys, keys).clamp_max(len(seen_keys) - 1)
        scores = scores.masked_fill(seen_keys[at] == keys, float("-inf"))
    scores = scores.masked_fill(items < 0, float("-inf"))  # FAISS pads with -1 when it runs out
    # Results come sorted by score; a stable sort keeps that order among the unseen ones.
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :k]
    return items.gather(1, order).long()


def build_faiss_index(item_vecs: torch.Tensor):
    """An exact inner-product FAISS index over ``[N, D]`` item vectors."""
    import faiss

    vectors = np.ascontiguousarray(item_vecs.detach().float().cpu().numpy())
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    return index


def match_targets(
    topk_items: torch.Tensor, target_rows: torch.Tensor, target_items: torch.Tensor, num_items: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``topk_items`` ``[U, K]`` against held-out pairs (COO) -> ``hits`` bool ``[U, K]``
    and ``num_targets`` ``[U]``, without a ``[U, N]`` matrix (sorted keys, binary search)."""
    device = topk_items.device
    target_rows, target_items = target_rows.to(device), target_items.to(device)
    num_targets = torch.bincount(target_rows, minlength=len(topk_items))
    if len(target_rows) == 0:
        return torch.zeros(topk_items.shape, dtype=torch.bool, device=device), num_targets
    target_keys = torch.sort(target_rows * num_items + target_items).values
    keys = torch.arange(len(topk_items), device=device)[:, None] * num_items + topk_items
    at = torch.searchsorted(target_keys, keys).clamp_max(len(target_keys) - 1)
    return target_keys[at] == keys, num_targets
