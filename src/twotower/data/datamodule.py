"""The DataModule: loads a data source, prepares tensors (``prepare``), and
builds batches by indexing those tensors; the configured negative sampler runs
here, while a batch is assembled. It only wires the pure pieces together."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import lightning as L
import pandas as pd
import torch
from torch.utils.data import DataLoader, IterableDataset

from twotower.data.batches import EvalBatch, TrainingBatch, build_layout, distinct_ids
from twotower.data.features import parse_feature_specs
from twotower.data.prepare import EvalSet, PreparedData, SplitArrays, prepare
from twotower.data.schema import InteractionData
from twotower.errors import ConfigError, DataError
from twotower.example_weights import user_count_weights
from twotower.graph_walk import TwoStepWalk
from twotower.launch import split_evenly
from twotower.samplers import TrainingStats


class PackedFeatures:
    """One side's feature tensors ``{name: [N] or [N, L]}`` packed for gathering rows: the
    one-column features of each dtype are the columns of one ``[N, k]`` matrix, so a batch
    takes one ``index_select`` per dtype instead of one per feature (each costs tens of
    microseconds on a CPU: a third of building an ML-100K batch was these calls)."""

    def __init__(self, features: dict[str, torch.Tensor]):
        by_dtype: dict[torch.dtype, list[str]] = {}
        self.others: dict[str, torch.Tensor] = {}
        for name, tensor in features.items():
            if tensor.dim() == 1:
                by_dtype.setdefault(tensor.dtype, []).append(name)
            else:
                self.others[name] = tensor
        self.matrices = [(names, torch.stack([features[n] for n in names], dim=1)) for names in by_dtype.values()]

    def gather(self, index: torch.Tensor) -> dict[str, torch.Tensor]:
        """Rows ``index`` of every feature (the one-column ones as column views of one gathered
        matrix), and the dense ``index`` itself. ``index_select``, not ``t[index]``: advanced
        indexing of a 2-D tensor is 2-3x slower, far slower on a busy machine."""
        out = {}
        for names, matrix in self.matrices:
            out.update(zip(names, matrix.index_select(0, index).unbind(1)))
        out.update((name, tensor.index_select(0, index)) for name, tensor in self.others.items())
        out["index"] = index
        return out


def _csr_slice(ptr: torch.Tensor, values: torch.Tensor, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
    """COO (row - start, value) pairs of CSR rows ``start:stop``."""
    lengths = ptr[start + 1 : stop + 1] - ptr[start:stop]
    rows = torch.repeat_interleave(torch.arange(stop - start), lengths)
    return rows, values[ptr[start] : ptr[stop]]


class TrainBatches(IterableDataset):
    """Shuffled training batches; one permutation per epoch, seeded by the seed and the
    Trainer's epoch, so an epoch's batches are the same whether the run went through the
    epochs before it in this process or resumed from a checkpoint.

    ``data.batch_size`` is the global batch. Under DDP every rank draws the same
    permutation and takes its share of each global batch, so ``W`` ranks see exactly
    the batches one device would; a last global batch too small to share is dropped."""

    def __init__(self, dm: "RetrievalDataModule"):
        self.dm = dm

    def __len__(self) -> int:
        n = len(self.dm.train_examples.user)
        if self.dm.world()[0] > 1:
            return n // self.dm.batch_size
        return (n + self.dm.batch_size - 1) // self.dm.batch_size

    def __iter__(self) -> Iterator[TrainingBatch]:
        dm = self.dm
        epoch = dm.trainer.current_epoch if dm.trainer is not None else dm.epoch
        generator = torch.Generator().manual_seed(dm.seed * 1_000_003 + epoch)
        dm.epoch = epoch + 1  # without a Trainer (scripts, tests): the next iteration is the next epoch
        order = torch.randperm(len(dm.train_examples.user), generator=generator)
        for start in range(0, len(self) * dm.batch_size, dm.batch_size):
            yield dm.train_batch(order[start : start + dm.batch_size], generator)


# At most this many (user, item) scores are held at once during evaluation (256 MB of float32).
MAX_EVAL_SCORES = 1 << 26


class EvalBatches(IterableDataset):
    """Chunks of evaluation users with the items to mask and to find. A chunk
    holds at most ``eval_batch_size`` users and ``MAX_EVAL_SCORES`` scores, so
    memory is bounded by the chunk, not by users x catalogue."""

    def __init__(self, dm: "RetrievalDataModule", split: str):
        self.dm, self.split = dm, split
        bound = dm.eval_batch_size if dm.max_eval_scores is None else dm.max_eval_scores // max(1, dm.data.num_items)
        self.chunk = max(1, min(dm.eval_batch_size, bound))

    def __len__(self) -> int:
        n = len(self.dm.data.eval_sets[self.split].users)
        return (n + self.chunk - 1) // self.chunk

    def __iter__(self) -> Iterator[EvalBatch]:
        es: EvalSet = self.dm.data.eval_sets[self.split]
        for start in range(0, len(es.users), self.chunk):
            stop = min(start + self.chunk, len(es.users))
            seen_rows, seen_items = _csr_slice(es.seen_ptr, es.seen_items, start, stop)
            target_rows, target_items = _csr_slice(es.target_ptr, es.target_items, start, stop)
            yield EvalBatch(
                self.dm.packed("user").gather(es.users[start:stop]), seen_rows, seen_items, target_rows, target_items,
                es.warm[start:stop],
            )  # fmt: skip


class RetrievalDataModule(L.LightningDataModule):
    """``source``: a callable returning an :class:`InteractionData` (a loader
    from ``conf/data/*.yaml``). ``sampler``: a callable ``(TrainingStats) ->
    sampler`` (from ``conf/sampler/*.yaml``). ``train_on``: ``"positives"``
    (clicks) or ``"ratings"`` (every rated interaction, for ``mse``).
    ``user_weight_exponent``: each training example's batch carries the weight
    ``count(user) ** -exponent`` (:func:`~twotower.example_weights.user_count_weights`; 0: none).
    ``walk_labels``: each example also carries where a two-step walk on the training pairs from
    its positive ended (:class:`~twotower.graph_walk.TwoStepWalk`; ``loss.walk_label_weight``)."""

    def __init__(
        self,
        source: Callable[[], InteractionData],
        sampler: Callable,
        user_features: list[dict],
        item_features: list[dict],
        positive_threshold: float | None = 4,
        split: dict | None = None,
        batch_size: int = 1024,
        eval_batch_size: int = 1024,
        train_on: str = "positives",
        seed: int = 0,
        cross_device_negatives: bool = True,
        user_weight_exponent: float = 0.0,
        walk_labels: bool = False,
    ):
        super().__init__()
        if batch_size < 1 or eval_batch_size < 1:
            raise ValueError(f"batch_size={batch_size}, eval_batch_size={eval_batch_size}: expected >= 1")
        if train_on not in ("positives", "ratings"):
            raise ValueError(f"train_on={train_on!r}: expected 'positives' or 'ratings'")
        self.source = source
        self.sampler_factory = sampler
        self.user_specs = parse_feature_specs(user_features, "user", "user_id")
        self.item_specs = parse_feature_specs(item_features, "item", "item_id")
        self.positive_threshold = positive_threshold
        self.split = dict(split or {"kind": "temporal"})
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.train_on = train_on
        self.seed = seed
        self.cross_device_negatives = cross_device_negatives
        self.user_weight_exponent = user_weight_exponent
        self.example_weights: torch.Tensor | None = None  # [N] per training example, set up with the data
        self.walk_labels = walk_labels
        self.walk: TwoStepWalk | None = None  # over the training positives, set up with the data
        self.max_eval_scores: int | None = MAX_EVAL_SCORES  # None: the ranking backend bounds its own memory
        self.epoch = 0
        self.data: PreparedData | None = None
        self.read_features: dict[str, list[str]] | None = None
        self._packed: dict[str, PackedFeatures] = {}

    def read_only(self, features: dict[str, list[str]]) -> None:
        """Gather only these features (``{"user": names, "item": names}``) into batches:
        the ones the model reads (matrix completion gathered 10 feature tensors to use 2)."""
        self.read_features = features
        self._packed = {}

    def packed(self, side: str) -> PackedFeatures:
        """The features batches carry on ``side`` (``"user"`` / ``"item"``), packed for gathering."""
        if side not in self._packed:
            self._packed[side] = PackedFeatures(self._features(side))
        return self._packed[side]

    def _features(self, side: str) -> dict[str, torch.Tensor]:
        every = self.data.user_features if side == "user" else self.data.item_features
        if self.read_features is None:
            return every
        return {name: every[name] for name in self.read_features[side]}

    def setup(self, stage: str | None = None) -> None:
        if self.data is not None:
            return
        split = dict(self.split)
        self.data = prepare(
            self.source(),
            self.user_specs,
            self.item_specs,
            self.positive_threshold,
            split.pop("kind", "temporal"),
            **split,
        )
        train = self.data.splits["train"]
        try:
            self.sampler = self.sampler_factory(
                TrainingStats(self.data.item_counts, train.user, train.item, train.rating, self.data.num_users)
            )
        except ValueError as err:  # the sampler's settings do not fit this data (e.g. no ratings)
            raise ConfigError(f"{self.data.name}: {err}") from err
        # A sampler that takes low ratings as negatives cannot work when those ratings are positives.
        max_rating = getattr(self.sampler, "max_rating", None)
        if max_rating is not None and (self.positive_threshold is None or self.positive_threshold <= max_rating):
            raise ConfigError(
                f"sampler exposed_unclicked takes ratings <= {max_rating} as negatives, but "
                f"data.positive_threshold={self.positive_threshold} makes them positives; "
                f"set data.positive_threshold above {max_rating} (e.g. 4)"
            )
        # For each history feature, each catalogue item's code in that feature's vocabulary,
        # so a batch can mask the item being predicted out of the user's history.
        self.history_codes = {
            f["name"]: torch.as_tensor(pd.Index(f["vocab"]).get_indexer(self.data.item_ids.astype(str)) + 1)
            for f in self.data.fitted["user"]
            if f["kind"] == "history"
        }
        if self.train_on == "ratings":
            rated = ~torch.isnan(train.rating)
            self.train_examples = SplitArrays(train.user[rated], train.item[rated], train.rating[rated], train.positive[rated])
            if len(self.train_examples.user) == 0:
                raise DataError(f"{self.data.name}: this loss trains on ratings, but the training split has none")
        else:
            self.train_examples = train.positives()
        if self.walk_labels:
            ex = self.train_examples
            self.walk = TwoStepWalk(ex.user, ex.item, self.data.num_users, self.data.num_items)
        if self.user_weight_exponent:
            self.example_weights = user_count_weights(self.train_examples.user, self.data.num_users, self.user_weight_exponent)

    def world(self) -> tuple[int, int]:
        """``(world_size, global_rank)`` of the Trainer running this DataModule; ``(1, 0)`` alone."""
        trainer = self.trainer
        return (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)

    def train_batch(self, rows: torch.Tensor, generator: torch.Generator) -> TrainingBatch:
        """The batch of training examples ``rows`` (the global batch), as this rank sees it.

        With cross-device negatives the negatives and their mask are laid out for the
        global batch (every rank draws the same ones) and this rank keeps its rows; the
        module gathers the other ranks' positive vectors for the in-batch columns.
        Without them each rank lays out its own share alone."""
        ex, data = self.train_examples, self.data
        world, rank = self.world()
        # index_select, not t[rows]: advanced indexing takes 100-200 us per 2,048 rows here.
        users, items = ex.user.index_select(0, rows), ex.item.index_select(0, rows)
        stream_items = items  # what a streaming frequency estimator sees: the global batch
        mine = slice(None)
        if world > 1:
            share = split_evenly(len(rows), world)
            mine = slice(rank * share, (rank + 1) * share)
            if not self.cross_device_negatives:
                rows, users, items = rows[mine], users[mine], items[mine]
                mine = slice(None)
        negatives = self.sampler.sample(users, items, generator)
        walk = walk_logq = None
        if self.walk is not None:  # drawn for the global batch, as the negatives are: every rank alike
            walk = self.walk.sample(items, generator)
            walk_logq = self.sampler.label_logq(walk)
        layout = build_layout(users, items, negatives, data.is_train_positive)
        in_batch_items = items  # the in-batch columns: the global batch's positives, or this rank's
        users, items, rows = users[mine], items[mine], rows[mine]
        user_features, item_features = self.packed("user"), self.packed("item")
        user = user_features.gather(users)
        for name, codes in self.history_codes.items():
            if name in user:
                # The positive is in its user's training history: hide it, or the tower learns a lookup.
                user[name] = user[name].masked_fill(user[name] == codes[items][:, None], 0)
        batch = TrainingBatch(
            user=user,
            pos=item_features.gather(items),
            rating=ex.rating.index_select(0, rows),
            in_batch=negatives.in_batch,
            # The module gathers the other ranks' positives when the columns span the global batch.
            cross_device=world > 1 and self.cross_device_negatives,
            hardest=negatives.hardest,
            weight=None if self.example_weights is None else self.example_weights.index_select(0, rows),
            **{key: None if value is None else value[mine] for key, value in vars(layout).items()},
        )
        if walk is not None:
            batch.walk, batch.walk_same = item_features.gather(walk[mine]), walk[mine] == items
            batch.walk_logq = None if walk_logq is None else walk_logq[mine]
        extra = negatives.items
        if extra is not None:
            if extra.dim() == 2:
                extra = extra[mine]
            # Each distinct negative goes through the item tower once (B x n draws from a small
            # catalogue repeat a lot); the model maps the vectors back with extra_inverse.
            unique, batch.extra_inverse = distinct_ids(extra.reshape(-1), data.num_items)
            batch.extra = item_features.gather(unique)
            batch.extra_per_example = extra.dim() == 2
        if negatives.streaming_logq:
            batch.stream_items, batch.in_batch_items = stream_items, in_batch_items
        return batch

    def transfer_batch_to_device(self, batch, device: torch.device, dataloader_idx: int):
        # Batches are built on the CPU: on a CPU run there is nothing to move, and walking
        # the nested batch to find that out costs about half a millisecond a step.
        if device.type == "cpu":
            return batch
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(TrainBatches(self), batch_size=None)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(EvalBatches(self, "val"), batch_size=None)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(EvalBatches(self, "test"), batch_size=None)

    def item_chunks(self, chunk_size: int = 65536) -> Iterator[dict[str, torch.Tensor]]:
        """The whole catalogue's item features, in chunks of ``chunk_size`` items."""
        for start in range(0, self.data.num_items, chunk_size):
            index = torch.arange(start, min(start + chunk_size, self.data.num_items))
            yield self.packed("item").gather(index)

    def save_artifacts(self, run_dir: str | Path) -> Path:
        """Write the fitted features (vocabularies, statistics, bucket boundaries) as ``features.json``."""
        path = Path(run_dir) / "features.json"
        path.write_text(json.dumps(self.data.fitted, indent=1))
        return path
