"""The user's history as part of the user vector, as SimpleX does it (Mao et al., CIKM 2021):
``user = (1 - w) * own + w * P(mean of the history items' embeddings)``, then normalized.

``own`` is the user tower's output (its ID and any other user features); the history is
pooled from the *item* tower's ID embeddings when ``shared`` (so every step that trains an
item's vector also moves the users who visited it, and a user's vector follows their items),
else from a table of its own; ``P`` is an optional learned ``D x D`` map. The positive of a
training example is hidden from its user's history by the DataModule, so the tower cannot
learn a lookup.
"""

from __future__ import annotations

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from twotower.models.tower import Tower


class HistoryPool(nn.Module):
    """``[B, L]`` history codes (0 pads) -> ``[B, out_dim]``: the mean of the items' embeddings,
    optionally projected. ``history``: the fitted history feature; ``item_tower``: the tower
    whose ``item_id`` rows the history shares, or ``None`` for a table of its own."""

    def __init__(
        self,
        history: dict,
        item_fitted: list[dict],
        item_tower: Tower | None,
        embedding_dim: int,
        out_dim: int,
        projection: bool = True,
        dropout: float = 0.0,
        history_dropout: float = 0.0,
        sparse: bool = False,
        init_std: float = 0.1,
        trains_items: bool = True,
    ):
        super().__init__()
        self.name = history["name"]
        self.trains_items = trains_items
        self.history_dropout = history_dropout
        if item_tower is not None:
            ids = [f for f in item_fitted if f["kind"] == "id" and "vocab" in f]
            if len(ids) != 1 or ids[0]["name"] not in item_tower.single_inputs:
                raise ValueError(
                    "model.net.share_history_embeddings=true needs the item tower's one (unhashed) id feature; "
                    f"the item features have {len(ids)}"
                )
            start = int(item_tower.block_starts[item_tower.single_inputs.index(ids[0]["name"])])
            # History code h (1-based in its vocabulary) -> the item table's row of that item id.
            rows = pd.Index(ids[0]["vocab"]).get_indexer(history["vocab"]) + 1
            if (rows == 0).any():
                raise ValueError("a history item is missing from the item id vocabulary; expected histories of training items")
            self.register_buffer("item_rows", torch.as_tensor([0, *rows], dtype=torch.long) + start, persistent=False)
            self.item_tower = [item_tower]  # a list: the tower is the model's, not this module's, submodule
            self.table = None
        else:
            self.table = nn.Embedding(history["cardinality"], embedding_dim, sparse=sparse)
            nn.init.normal_(self.table.weight, std=init_std)
            self.item_tower = None
        if not projection and embedding_dim != out_dim:
            raise ValueError(
                f"model.net.history_projection=false needs the pooled history ({embedding_dim}) and the user "
                f"tower's output ({out_dim}) of one size; expected history_projection=true or mlp=[]"
            )
        self.projection = nn.Linear(embedding_dim, out_dim, bias=False) if projection else nn.Identity()
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        if self.training and self.history_dropout > 0:
            codes = codes.masked_fill(torch.rand(codes.shape, device=codes.device) < self.history_dropout, 0)
        table = self.item_tower[0].table if self.item_tower is not None else self.table
        # The items alone, one bag per row (offsets), not the padded [B, L]: histories are long-tailed
        # (Gowalla: mean 27, max 811), and a sparse gradient would carry a row per padding entry.
        present = codes != 0
        items = codes[present]
        counts = present.sum(dim=1)
        offsets = counts.cumsum(0) - counts
        rows = self.item_rows[items] if self.item_tower is not None else items
        weight = table.weight if self.trains_items or self.item_tower is None else table.weight.detach()
        pooled = F.embedding_bag(rows, weight, offsets, mode="mean", sparse=table.sparse)  # a row of padding gives 0
        return self.projection(self.dropout(pooled))
