"""One tower: an embedding per feature, concatenated, an MLP, optionally L2-normalized.

Used for both sides. The layout of its inputs comes from the fitted feature
artifacts (``features.json``), so a tower can be rebuilt from a run's files.
"""

from __future__ import annotations

import torch
from torch import nn

from twotower.data.features import BUCKET_SUFFIX


FEATURE_SETS = ("all", "ids")


def select_features(fitted: dict[str, list[dict]], feature_set: str) -> dict[str, list[dict]]:
    """Both towers' fitted features, all of them or (``"ids"``) only the ID features."""
    if feature_set not in FEATURE_SETS:
        raise ValueError(f"model.feature_set={feature_set!r}: expected one of {list(FEATURE_SETS)}")
    if feature_set == "all":
        return fitted
    return {side: [f for f in features if f["kind"] == "id"] for side, features in fitted.items()}


# A bag over a vocabulary this small is averaged as a dense [B, vocabulary] weight matrix times
# the table: a few small operations instead of EmbeddingBag's, whose backward pass sorts
# (0.1 ms against 0.4 ms a step for MovieLens genres on a CPU).
DENSE_BAG_MAX_ROWS = 256


def bag_mean(bag: nn.EmbeddingBag, codes: torch.Tensor) -> torch.Tensor:
    """``bag(codes)`` of a mean ``EmbeddingBag`` whose row 0 pads: ``[B, L]`` codes ->
    ``[B, D]``, the mean of each row's non-zero codes' embeddings (zeros for a row of padding)."""
    if bag.num_embeddings > DENSE_BAG_MAX_ROWS:
        return bag(codes)
    counts = torch.zeros(len(codes), bag.num_embeddings, device=codes.device)
    counts.scatter_add_(1, codes, torch.ones(codes.shape, device=codes.device))
    counts[:, 0] = 0  # padding
    return (counts / counts.sum(1, keepdim=True).clamp_min(1)) @ bag.weight


class Tower(nn.Module):
    """Features ``{name: tensor [B] or [B, L]}`` -> vectors ``[B, output_dim]``.

    ``fitted``: the tower's fitted features (each with ``name``, ``kind`` and
    ``cardinality`` where it has a table; the single-valued ones share ``table``, one
    block of rows each, multi-valued ones have an ``EmbeddingBag`` each). ``mlp``: hidden and output sizes;
    an empty list makes the tower output the concatenated embeddings (the
    matrix-completion baseline: one ID embedding, nothing else).
    ``embedding_dropout``: in training, dropout on the tower's input (its embeddings before the
    MLP; with ``mlp=[]`` the output before normalization): noise that keeps an ID tower from
    fitting each training pair exactly (MF-CCL's regularizer, Mao et al., CIKM 2021).
    ``history_dropout``: in training, the share of each user's history items
    hidden at random (as in denoising autoencoders for collaborative
    filtering), so the tower cannot lean on any single past item.
    ``sparse``: the tables' gradients hold only the batch's rows
    (``nn.Embedding(sparse=True)``), for catalogues of millions of rows; they need an
    optimizer that takes sparse gradients (:class:`twotower.optim.Adam`).
    """

    def __init__(
        self,
        fitted: list[dict],
        embedding_dim: int = 32,
        mlp: list[int] | tuple[int, ...] = (128, 64),
        dropout: float = 0.0,
        normalize: bool = True,
        init_std: float = 0.1,
        history_dropout: float = 0.0,
        sparse: bool = False,
        embedding_dropout: float = 0.0,
    ):
        super().__init__()
        if not 0.0 <= history_dropout < 1.0:
            raise ValueError(f"history_dropout={history_dropout}: expected a share in [0, 1)")
        if not 0.0 <= embedding_dropout < 1.0:
            raise ValueError(f"embedding_dropout={embedding_dropout}: expected a share in [0, 1)")
        self.embedding_dropout = embedding_dropout
        self.normalize = normalize
        self.history_dropout = history_dropout
        self.histories = [f["name"] for f in fitted if f["kind"] == "history"]
        # Every single-valued feature (ID, categorical, bucket) has a block of rows in one
        # table: one lookup and one gradient per step instead of one per feature.
        self.single_inputs: list[str] = []
        sizes: list[int] = []
        self.bags = nn.ModuleDict()
        self.dense_inputs: list[str] = []
        for f in fitted:
            name, kind = f["name"], f["kind"]
            if kind in ("id", "categorical"):
                self.single_inputs.append(name)
                sizes.append(f["cardinality"])
            elif kind in ("multi_categorical", "history"):
                # Row 0 pads and marks unknown values; it is left out of the mean.
                self.bags[name] = nn.EmbeddingBag(
                    f["cardinality"], embedding_dim, mode="mean", padding_idx=0, sparse=sparse
                )
            else:
                if "mean" in f:
                    self.dense_inputs.append(name)
                if "boundaries" in f:
                    self.single_inputs.append(name + BUCKET_SUFFIX)
                    sizes.append(f["cardinality"])
        # The first row of each feature's block: added to its codes.
        self.register_buffer("block_starts", torch.tensor([0, *sizes[:-1]]).cumsum(0), persistent=False)
        self.table = nn.Embedding(sum(sizes), embedding_dim, sparse=sparse) if sizes else None
        for table in [*([self.table] if sizes else []), *self.bags.values()]:
            nn.init.normal_(table.weight, std=init_std)
        width = embedding_dim * (len(self.single_inputs) + len(self.bags)) + len(self.dense_inputs)
        if width == 0:
            raise ValueError("a tower needs at least one feature")
        # Floats one row leaves in the tower (its input and each layer's output): a step's memory.
        self.row_floats = width + sum(mlp)
        layers: list[nn.Module] = []
        for i, size in enumerate(mlp):
            layers.append(nn.Linear(width, size))
            if i < len(mlp) - 1:  # no activation after the output layer
                layers += [nn.ReLU(), nn.Dropout(dropout)] if dropout > 0 else [nn.ReLU()]
            width = size
        self.mlp = nn.Sequential(*layers)
        self.output_dim = width

    @property
    def input_names(self) -> list[str]:
        """The feature tensors ``forward`` reads (a bucketized feature's is ``name + BUCKET_SUFFIX``)."""
        return [*self.single_inputs, *self.bags, *self.dense_inputs]

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        parts = []
        if len(self.single_inputs) == 1:  # an ID alone (matrix completion, ID towers): its block starts at 0
            parts.append(self.table(features[self.single_inputs[0]]))
        elif self.single_inputs:
            rows = torch.stack([features[name] for name in self.single_inputs], dim=1) + self.block_starts  # [B, F]
            parts.append(self.table(rows).flatten(1))  # [B, F * embedding_dim]
        parts += [bag_mean(bag, self._dropped(name, features[name])) for name, bag in self.bags.items()]
        parts += [features[name][:, None] for name in self.dense_inputs]
        # One part (an ID alone): no concatenation, whose copy and backward cost 2 % of a
        # matrix-completion step.
        x = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
        if self.embedding_dropout > 0:
            x = nn.functional.dropout(x, self.embedding_dropout, self.training)
        x = self.mlp(x)
        return nn.functional.normalize(x, dim=-1) if self.normalize else x

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Checkpoints written before the single-valued features shared one table hold one
        # table per feature (``embeddings.<name>.weight``): stack them into the shared one.
        old = [f"{prefix}embeddings.{name}.weight" for name in self.single_inputs]
        if old and all(key in state_dict for key in old):
            state_dict[f"{prefix}table.weight"] = torch.cat([state_dict.pop(key) for key in old])
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _dropped(self, name: str, codes: torch.Tensor) -> torch.Tensor:
        """``[B, L]`` codes with a random ``history_dropout`` share set to the padding code 0
        (history features, training only)."""
        if not (self.training and self.history_dropout > 0 and name in self.histories):
            return codes
        return codes.masked_fill(torch.rand(codes.shape, device=codes.device) < self.history_dropout, 0)
