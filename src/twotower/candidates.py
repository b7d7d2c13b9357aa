"""Candidates of a training batch: which columns each user is scored against,
which of them are valid negatives, and their logQ corrections.

Convention (as in TensorFlow Recommenders' retrieval task): user ``b`` is
scored against its positive and against ``C`` negative columns. With in-batch
negatives the first ``B`` columns are the batch's positives (column ``b``, the
user's own positive, is never a negative); sampled negatives follow, shared by
every user (``[M]``) or one row per user (``[B, n]``). Pure tensor functions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from twotower.samplers import Negatives


def mask_value(dtype: torch.dtype) -> float:
    """A large finite negative for masked logits: ``-inf`` would make a row
    whose every candidate is masked produce NaN in a softmax."""
    return torch.finfo(dtype).min / 100


def distinct_ids(ids: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.unique(ids, return_inverse=True)`` for ids in ``[0, size)``: the sorted
    distinct ids ``[m]`` and each id's position among them (``ids``' shape).

    When the id range is at most 8 times the number of ids, by marking the ids present
    (linear time: 4x faster than sorting 16k negatives drawn from 1,682 items); beyond
    that, clearing a mark per possible id costs more than sorting, so it sorts."""
    flat = ids.reshape(-1)
    if size > 8 * len(flat):
        unique, inverse = torch.unique(flat, return_inverse=True)
        return unique, inverse.view(ids.shape)
    present = torch.zeros(size, dtype=torch.bool)
    present[flat] = True
    unique = present.nonzero().squeeze(1)
    position = torch.empty(size, dtype=torch.long)
    position[unique] = torch.arange(len(unique))
    return unique, position[flat].view(ids.shape)


class PositiveLookup:
    """Answers "is (user, item) a training positive?" for ``[B, C]`` candidates.

    A dense bitmap of users x items when it fits in ``max_dense`` entries (one
    byte each: a gather per candidate). Otherwise each user's positives, sorted
    (CSR): per-example candidates are found by binary search over all keys, and
    columns shared by the batch (in-batch, shared negatives) by matching the batch
    users' own positives against the sorted columns, which costs their number of
    positives, not ``B x C`` searches (ten times faster at 1M items).
    """

    def __init__(self, users: torch.Tensor, items: torch.Tensor, num_users: int, num_items: int, max_dense: int = 1 << 27):
        self.num_items = num_items
        keys = users.long() * num_items + items.long()
        self.dense = self.keys = None
        if num_users * num_items <= min(max_dense, 2**31 - 1):  # int32 keys address the bitmap
            self.dense = torch.zeros(num_users * num_items, dtype=torch.bool)
            self.dense[keys] = True
        else:
            self.keys = torch.unique(keys)  # sorted: by user, then item
            counts = torch.bincount(self.keys // num_items, minlength=num_users)
            # int32 where the sizes allow: :meth:`shared` makes several passes over ~100
            # positions per batch row, and half the bytes make them about 20 % faster.
            position = torch.int32 if len(self.keys) < 2**31 else torch.long
            self.ptr = torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)]).to(position)
            self.items = (self.keys % num_items).to(torch.int32 if num_items < 2**31 else torch.long)

    def __call__(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """``users``: ``[B]``; ``items``: ``[B, C]`` -> bool ``[B, C]``."""
        if self.dense is not None:
            # index_select of the flattened keys: 2x faster than advanced indexing here; int32
            # keys (the bitmap is small) move half the bytes of int64 ones: 20 % faster at [B, C].
            keys = users.int()[:, None] * self.num_items + items.int()
            return self.dense.index_select(0, keys.reshape(-1)).view(keys.shape)
        keys = users[:, None] * self.num_items + items  # [B, C], or [B, C] broadcast from [1, C]
        if len(self.keys) == 0:
            return torch.zeros(items.shape, dtype=torch.bool)
        pos = torch.searchsorted(self.keys, keys).clamp_max(len(self.keys) - 1)
        return self.keys[pos] == keys

    def shared(self, users: torch.Tensor, columns: torch.Tensor, row_items: torch.Tensor | None = None) -> torch.Tensor:
        """``users``: ``[B]``; ``columns``: ``[C]`` item ids shared by every row -> bool ``[B, C]``.
        ``row_items``: ``[B]``, each row's own item (its positive), which counts as a hit too
        (in-batch columns: the row's own column and other rows' copies of its item)."""
        if self.dense is not None:
            hits = self(users, columns[None, :])
            if row_items is not None:
                hits |= columns[None, :] == row_items[:, None]
            return hits
        # Every (batch row, positive item) pair of the batch's users, in row order: a pair's
        # position in ``items`` is its rank in its row shifted by the row's start.
        starts = self.ptr.index_select(0, users)
        lengths = self.ptr.index_select(0, users + 1) - starts
        ends = lengths.cumsum(0, dtype=lengths.dtype)
        total = int(lengths.sum())
        shift = starts - (ends - lengths)
        position = torch.repeat_interleave(shift, lengths, output_size=total).add_(torch.arange(total, dtype=shift.dtype))
        item = self.items.index_select(0, position)
        # Which pairs' items are columns: a byte per catalogue item, kept between calls and
        # marked for this call only (half the time of looking every pair's column up in an
        # int32 table, which stays less in cache); then only those pairs, about a tenth at
        # a million items, look up their column. A repeated item keeps the column of one of
        # its copies, its representative, whose marks its other columns copy.
        marks, table = self._scratch()
        slots = torch.arange(len(columns), dtype=table.dtype)
        marks[columns] = 1
        table[columns] = slots
        pair = marks.index_select(0, item).nonzero().squeeze(1)
        slot = table.index_select(0, item.index_select(0, pair))
        representative = table.index_select(0, columns)
        own = None if row_items is None else table.index_select(0, row_items)
        marks[columns] = 0
        table[columns] = -1
        mask = torch.zeros(len(users), len(columns), dtype=torch.bool)
        row = torch.searchsorted(ends.long(), pair, right=True)  # the batch row of each pair
        mask[row, slot.long()] = True
        if own is not None:  # a row's own item is a hit where it is a column
            mine = (own >= 0).nonzero().squeeze(1)
            mask[mine, own.index_select(0, mine).long()] = True
        repeats = (representative != slots).nonzero().squeeze(1)
        if len(repeats):  # a repeated item's columns take its representative's marks
            mask[:, repeats] = mask[:, representative.index_select(0, repeats).long()]
        return mask

    def _scratch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``[num_items]`` uint8 marks, 0 everywhere, and ``[num_items]`` int32 columns, -1
        everywhere, between calls of :meth:`shared` (allocated at its first call)."""
        if getattr(self, "_marks", None) is None:
            self._marks = torch.zeros(self.num_items, dtype=torch.uint8)
            self._slot_table = torch.full((self.num_items,), -1, dtype=torch.int32)
        return self._marks, self._slot_table


@dataclass
class CandidateLayout:
    """Everything about a batch's negative columns that depends on ids, not vectors.

    ``extra_items``: ids of sampled negatives, ``[M]`` (shared) or ``[B, n]``
    (per example), or ``None``; ``valid``: ``[B, C]`` bool, False for a user's
    own positive and for accidental hits; ``neg_logq``: ``[B, C]`` or ``None``;
    ``pos_logq``: ``[B]`` or ``None``; ``pos_column``: ``[B]`` the column holding each
    user's own positive (in-batch), or ``None``.
    """

    in_batch: bool
    extra_items: torch.Tensor | None
    valid: torch.Tensor | None
    neg_logq: torch.Tensor | None
    pos_logq: torch.Tensor | None
    pos_column: torch.Tensor | None = None


def logit_bias(
    valid: torch.Tensor | None, neg_logq: torch.Tensor | None, pos_column: torch.Tensor | None = None
) -> torch.Tensor | None:
    """What is added to each negative column's logit, ``[B, C]``: ``-log q`` (0 without a logQ
    correction) where the column is a valid negative, :func:`mask_value` where it is not,
    except each user's own positive's column ``pos_column`` ``[B]`` (in-batch), which keeps
    its ``-log q`` so that a softmax can take it as the label. One pass over ``[B, C]``
    where a subtraction and a masking pass, and their gradients, were.
    ``None`` when there is neither a mask nor a correction."""
    if valid is None and neg_logq is None:
        return None
    if neg_logq is None:
        correction = 0.0
    elif neg_logq.dim() == 2 and neg_logq.stride(0) == 0:
        correction = -neg_logq[:1]  # one row expanded to all (in-batch): negate it once, broadcast
    else:
        correction = -neg_logq
    if valid is None:
        return correction.expand(neg_logq.shape).contiguous()
    if pos_column is not None:
        valid = valid.clone()
        valid[torch.arange(len(valid), device=valid.device), pos_column] = True
    return torch.where(valid, correction, mask_value(torch.float32))


def build_layout(
    users: torch.Tensor, positives: torch.Tensor, negatives: Negatives, is_positive: PositiveLookup
) -> CandidateLayout:
    """Assemble the ``[B, C]`` candidate columns of a batch and mask accidental hits
    (a negative that is in fact one of that user's training positives)."""
    batch = len(users)
    # Per block of columns (in-batch, then sampled): its valid cells [B, c] and logQ (or None).
    # Columns shared by the batch are matched against the users' positives once, not per row.
    valids, logqs = [], []
    if negatives.in_batch:
        # The user's own positive is never its negative (nor another row's copy of it).
        valids.append(is_positive.shared(users, positives, row_items=positives).logical_not_())
        logqs.append(None if negatives.positives_logq is None else negatives.positives_logq.expand(batch, batch))
    if negatives.items is not None:
        extra = negatives.items
        shared = extra.dim() == 1
        if shared:
            hit = is_positive.shared(users, extra, row_items=positives)
        else:
            hit = is_positive(users, extra)
            hit |= extra == positives[:, None]
        valid = hit.logical_not_()
        if negatives.items_valid is not None:
            valid &= negatives.items_valid
        valids.append(valid)
        q = negatives.items_logq
        logqs.append(None if q is None else q.expand(batch, -1))
    if not valids:
        return CandidateLayout(False, None, None, None, None)
    valid = torch.cat(valids, dim=1) if len(valids) > 1 else valids[0]
    neg_logq = None
    if len(logqs) == 1:
        neg_logq = logqs[0]  # in-batch alone: an expanded view of the positives' [B]
    elif any(q is not None for q in logqs):
        neg_logq = torch.cat([torch.zeros(v.shape) if q is None else q for v, q in zip(valids, logqs)], dim=1)
    pos_logq = negatives.positives_logq if negatives.in_batch else None
    # In-batch: user b's positive is column b (of the batch the columns are laid out for).
    pos_column = torch.arange(batch) if negatives.in_batch else None
    return CandidateLayout(negatives.in_batch, negatives.items, valid, neg_logq, pos_logq, pos_column)


def keep_hardest(scores: torch.Tensor, valid: torch.Tensor, k: int) -> torch.Tensor:
    """Online hard-negative mining: of each row's valid negatives keep the ``k``
    highest-scoring ones. ``scores``, ``valid``: ``[B, C]`` -> ``valid`` ``[B, C]``
    with at most ``k`` True per row (fewer where a row has fewer valid ones)."""
    if k >= scores.shape[1]:
        return valid
    ranked = scores.detach().masked_fill(~valid, float("-inf"))
    top = ranked.topk(k, dim=1).indices
    keep = torch.zeros_like(valid)
    keep.scatter_(1, top, True)
    return keep & valid


def dot_pairs(users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
    """Row-wise inner products: ``[..., D], [..., D] -> [...]`` (broadcasting)."""
    return (users * items).sum(-1)


def dot_matrix(users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
    """All inner products: ``[B, D], [C, D] -> [B, C]``."""
    return users @ items.T


def score_candidates(
    user_vecs: torch.Tensor,
    pos_vecs: torch.Tensor,
    extra_vecs: torch.Tensor | None,
    in_batch_vecs: torch.Tensor | None,
    score_pairs=dot_pairs,
    score_matrix=dot_matrix,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Scores of each user with its positive and its negative columns.

    ``user_vecs``, ``pos_vecs``: ``[B, D]``; ``extra_vecs``: ``[M, D]`` shared,
    ``[B, n, D]`` per example, or ``None``; ``in_batch_vecs``: the in-batch columns
    ``[B', D]`` (the batch's positives, or under DDP every rank's) or ``None``. Returns ``pos [B]`` and
    ``neg [B, C]`` (``None`` when there are no negatives). The score is the
    inner product unless a model gives its own ``score_pairs`` / ``score_matrix``
    (a model that cannot factorize scores every pair with a network).
    """
    pos = score_pairs(user_vecs, pos_vecs)
    parts = []
    if in_batch_vecs is not None:
        parts.append(score_matrix(user_vecs, in_batch_vecs))
    if extra_vecs is not None:
        if extra_vecs.dim() == user_vecs.dim():  # shared by the batch
            parts.append(score_matrix(user_vecs, extra_vecs))
        else:  # one row of negatives per example
            parts.append(score_pairs(user_vecs[:, None, :].expand(-1, extra_vecs.shape[1], -1), extra_vecs))
    return pos, (torch.cat(parts, dim=1) if parts else None)
