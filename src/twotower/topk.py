"""Exact top-K retrieval, the one home of exact ranking (evaluation, the reference of ANN
indexes): each user's K highest-scoring items by inner
product, items the user has already seen excluded. Two interchangeable backends with
the same result (up to ties): torch (a matmul and ``topk`` per chunk of users; the one
for GPUs and small catalogues) and FAISS ``IndexFlatIP`` (BLAS over blocks of items with
a heap per query; on CPU it never materializes the ``[U, N]`` score matrix). Pure functions
of tensors; memory is bounded by the chunk, never by users x items.
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import torch

BACKENDS = ("torch", "faiss")


def unseen_top_k(scores: torch.Tensor, seen_rows: torch.Tensor, seen_items: torch.Tensor, k: int) -> torch.Tensor:
    """``scores`` ``[U, N]`` (modified in place), seen pairs as COO (row, item) -> each row's
    ``min(k, N)`` best unseen items ``[U, k]``, best first."""
    scores[seen_rows, seen_items] = float("-inf")  # a masked item can never be retrieved
    return scores.topk(min(k, scores.shape[1]), dim=1).indices


def torch_top_k(
    user_vecs: torch.Tensor, item_vecs: torch.Tensor, seen_rows: torch.Tensor, seen_items: torch.Tensor, k: int
) -> torch.Tensor:
    """``user_vecs`` ``[U, D]``, ``item_vecs`` ``[N, D]``, seen pairs as COO (row in
    ``user_vecs``, item) -> ``[U, min(k, N)]`` item ids, best first. Holds ``U x N`` scores."""
    return unseen_top_k(user_vecs @ item_vecs.T, seen_rows, seen_items, k)


def chunked_top_k(queries: torch.Tensor, items: torch.Tensor, k: int, chunk_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scores [Q, k], positions [Q, k])`` of the ``k <= N`` best items by inner product,
    best first, nothing excluded; ``queries [Q, D]``, ``items [N, D]`` float32. Chunks of
    ``chunk_size`` queries bound the ``[chunk, N]`` score matrix (one buffer, reused)."""
    scores = torch.empty(len(queries), k, dtype=torch.float32)
    positions = torch.empty(len(queries), k, dtype=torch.long)
    buf = None
    for start in range(0, len(queries), chunk_size):
        chunk = queries[start : start + chunk_size]
        if buf is None or len(buf) != len(chunk):
            buf = torch.empty(len(chunk), len(items), dtype=torch.float32)
        torch.matmul(chunk, items.T, out=buf)
        top = torch.topk(buf, k, dim=1)
        scores[start : start + len(chunk)] = top.values
        positions[start : start + len(chunk)] = top.indices
    return scores, positions


def faiss_top_k(
    user_vecs: torch.Tensor,
    index,
    seen_rows: torch.Tensor,
    seen_items: torch.Tensor,
    k: int,
    num_items: int,
    group_size: int = 256,
) -> torch.Tensor:
    """As :func:`torch_top_k`, searching a FAISS inner-product ``index`` over the
    catalogue. Each user needs ``k`` plus its number of seen items from the search (the
    seen ones are dropped afterwards), and FAISS's cost grows with the number asked
    for: users are searched in groups of ``group_size`` with similar counts, each
    group asking for ``k`` plus its own largest count. Returns a CPU tensor."""
    k = min(k, num_items)
    seen_rows, seen_items = seen_rows.cpu(), seen_items.cpu()
    seen_per_user = torch.bincount(seen_rows, minlength=len(user_vecs))
    queries = np.ascontiguousarray(user_vecs.detach().float().cpu().numpy())
    seen_keys = torch.sort(seen_rows * num_items + seen_items).values
    out = torch.empty(len(user_vecs), k, dtype=torch.long)
    order = torch.argsort(seen_per_user, stable=True)
    for start in range(0, len(order), group_size):
        group = order[start : start + group_size]
        wanted = min(num_items, k + int(seen_per_user[group].max()))
        with blas_search():
            scores, items = index.search(queries[group.numpy()], wanted)
        scores, items = torch.from_numpy(scores), torch.from_numpy(items)
        if len(seen_keys):
            keys = group[:, None] * num_items + items.clamp_min(0)
            at = torch.searchsorted(seen_keys, keys).clamp_max(len(seen_keys) - 1)
            scores = scores.masked_fill(seen_keys[at] == keys, float("-inf"))
        scores = scores.masked_fill(items < 0, float("-inf"))  # FAISS pads with -1 when it runs out
        # Results come sorted by score; a stable sort keeps that order among the unseen ones.
        best = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :k]
        out[group] = items.gather(1, best).long()
    return out


@contextmanager
def blas_search():
    """FAISS scores a batch of queries with BLAS only above ``distance_compute_blas_threshold``
    queries (128,000 in faiss-cpu 1.15) and one query at a time below it, 10x slower for
    chunks of users. Force BLAS for the search and restore the setting after it, so other
    FAISS users (the serving index) see no change."""
    import faiss

    previous = faiss.cvar.distance_compute_blas_threshold
    faiss.cvar.distance_compute_blas_threshold = 1
    try:
        yield
    finally:
        faiss.cvar.distance_compute_blas_threshold = previous


def choose_backend(requested: str, factorizes: bool, num_items: int, on_gpu: bool, min_items: int = 100_000) -> str:
    """``auto``: FAISS for an inner-product model on CPU with a large catalogue (there it
    is faster than a matmul and ``topk``: docs/BENCHMARKS.md), torch otherwise (GPUs;
    small catalogues, where both take milliseconds). A model that scores pairs with a
    network always uses torch."""
    if requested not in BACKENDS + ("auto",):
        raise ValueError(f"eval.backend={requested!r}: expected auto, torch or faiss")
    if not factorizes:
        return "torch"
    if requested == "auto":
        return "faiss" if not on_gpu and num_items >= min_items else "torch"
    return requested


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


def rank_and_match(
    scores: torch.Tensor,
    seen_rows: torch.Tensor,
    seen_items: torch.Tensor,
    target_rows: torch.Tensor,
    target_items: torch.Tensor,
    k_max: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mask already-seen items, take the top ``k_max`` and mark the hits.

    ``scores``: ``[U, N]`` (modified in place); ``seen_rows/seen_items`` and
    ``target_rows/target_items``: COO pairs (row in this chunk, item).
    Returns ``topk_items [U, k_max]``, ``hits [U, k_max]`` bool and
    ``num_targets [U]``."""
    topk_items = unseen_top_k(scores, seen_rows, seen_items, k_max)
    hits, num_targets = match_targets(topk_items, target_rows, target_items, scores.shape[1])
    return topk_items, hits, num_targets
