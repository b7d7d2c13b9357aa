"""Which (user, item) pairs are training positives: the lookup that masks accidental hits
(a sampled negative that is one of the user's own training items) and that the miner
uses to skip a user's positives. Pure tensors."""

from __future__ import annotations

import torch


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
