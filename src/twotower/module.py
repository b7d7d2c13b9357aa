"""The LightningModule: holds both towers, scores a batch's candidates and calls
the configured loss; ranks the whole catalogue for validation and test. The
math lives in ``models.scoring``, ``losses`` and ``metrics``; this file wires it."""

from __future__ import annotations

import time
from collections.abc import Callable

import lightning as L
import torch
from torch import nn

import twotower
from twotower.checkpoints import rng_state, set_rng_state
from twotower.covisit import CoVisitation
from twotower.data.batches import EvalBatch, TrainingBatch
from twotower.distributed import gather_with_grad
from twotower.frequency import StreamingFrequencyEstimator
from twotower.losses import ScoredBatch, keep_hardest
from twotower.metrics import BANDS, RankingAccumulator, per_user_metrics
from twotower.models.scoring import encode_catalogue, score_batch
from twotower.prior import PopularityPrior, WeightSearch, append_column, choose_weights, monitored_ranking_metric
from twotower.topk import BACKENDS, build_faiss_index, faiss_top_k, match_targets, rank_and_match


class RetrievalModule(L.LightningModule):
    """``model``: has ``encode_users``/``encode_items`` (representations of a
    batch of users / items) and ``score_pairs``/``score_matrix`` (their scores);
    ``loss``: a callable on :class:`ScoredBatch`; ``optimizer``: a partial
    taking the parameters; ``scheduler``: a partial taking the optimizer, or
    ``None`` for a constant learning rate, stepped once per epoch (``monitor``: the
    validation metric a plateau scheduler watches); ``ks``: cut-offs for the
    ranking metrics; ``covisit_weight``: ``w`` of the co-visitation score added to the
    exact scores when ranking (:mod:`twotower.covisit`; 0: none)."""

    def __init__(
        self,
        model: nn.Module,
        loss: Callable[[ScoredBatch], torch.Tensor] | None,
        optimizer: Callable | None,
        ks: list[int],
        item_counts: torch.Tensor,
        config: dict | None = None,
        fitted_features: dict | None = None,
        frequency_estimator: StreamingFrequencyEstimator | None = None,
        eval_backend: str = "torch",
        scheduler: Callable | None = None,
        monitor: str | None = None,
        popularity_bands: tuple[float, float] = BANDS,
        popularity_prior: PopularityPrior | None = None,
        weight_search: WeightSearch | None = None,
        covisit_weight: float = 0.0,
    ):
        super().__init__()
        if not ks or min(ks) < 1:
            raise ValueError(f"eval.ks={ks}: expected a non-empty list of positive integers")
        self.model = model
        self.loss = loss
        self.optimizer_factory = optimizer
        self.scheduler_factory, self.monitor = scheduler, monitor
        self.ks = sorted(ks)
        self.popularity_bands = tuple(popularity_bands)
        self.register_buffer("item_counts", item_counts.float(), persistent=False)
        # Stored in every checkpoint, so a checkpoint describes itself.
        self.run_config = config or {}
        self.fitted_features = fitted_features or {}
        # The source of p for logq=streaming; fed the global batch every step, kept in checkpoints.
        self.frequency_estimator = frequency_estimator
        if eval_backend not in BACKENDS:
            raise ValueError(f"eval_backend={eval_backend!r}: expected one of {', '.join(BACKENDS)}")
        if eval_backend == "faiss" and not getattr(model, "factorizes", False):
            raise ValueError("eval.backend=faiss ranks inner products; this model scores pairs with a network")
        self.eval_backend = eval_backend
        self.popularity_prior = popularity_prior  # added to the scores when ranking (twotower.prior)
        self.weight_search = weight_search  # its weights chosen at every validation (None: fixed)
        self.covisit_weight = covisit_weight
        self._covisit: CoVisitation | None = None
        self.val_metrics: dict[str, float] = {}
        self._candidate_rankings: list | None = None
        self._faiss_index = None
        self._item_vectors: torch.Tensor | None = None
        self._accumulator: RankingAccumulator | None = None
        self.test_metrics: dict[str, float] = {}
        self.test_per_user: dict[str, torch.Tensor] = {}  # each test user's metrics (RankingAccumulator.per_user)
        self._epoch_loss_sum, self._epoch_examples = torch.zeros(()), 0  # reset at every epoch's start
        self._fit_started: float | None = None

    # ---- training ------------------------------------------------------------
    def batch_loss(self, batch: TrainingBatch) -> torch.Tensor:
        """The loss of one training batch (this rank's share of it under DDP)."""
        # Under DDP the in-batch columns are every rank's positives (gradients flow back).
        pos, neg, walk = score_batch(self.model, batch, gather_with_grad)
        valid = batch.valid
        if batch.hardest is not None and neg is not None:  # online hard-negative mining
            valid = keep_hardest(neg, valid, batch.hardest)
        pos_logq, neg_logq = batch.pos_logq, batch.neg_logq
        if batch.stream_items is not None:
            pos_logq, neg_logq = self._streaming_logq(batch, len(pos))
        scored = ScoredBatch(pos=pos, neg=neg, neg_valid=valid, pos_logq=pos_logq, neg_logq=neg_logq,
                             rating=batch.rating, pos_column=batch.pos_column, weight=batch.weight,
                             walk=walk, walk_logq=batch.walk_logq, walk_same=batch.walk_same)  # fmt: skip
        return self.loss(scored)

    def _streaming_logq(self, batch: TrainingBatch, num_users: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Feed the estimator this step's global batch, then ``log p`` of each user's
        positive ``[B]`` and of the in-batch columns ``[B, C]``."""
        estimator = self.frequency_estimator
        estimator.update(batch.stream_items.cpu())
        pos_logq = estimator.log_probabilities(batch.pos["index"].cpu()).to(self.device)
        columns = estimator.log_probabilities(batch.in_batch_items.cpu()).to(self.device)
        return pos_logq, columns.expand(num_users, -1)

    def training_step(self, batch: TrainingBatch, batch_idx: int) -> torch.Tensor:
        loss = self.batch_loss(batch)
        # Summed here and logged once per epoch: `self.log` on every step costs about a
        # millisecond of bookkeeping, a tenth of a whole step on ML-100K on a CPU.
        size = len(batch)
        self._epoch_loss_sum += loss.detach() * size
        self._epoch_examples += size
        return loss

    def on_train_epoch_start(self) -> None:
        self._epoch_loss_sum = torch.zeros((), device=self.device)
        self._epoch_examples = 0

    def on_train_epoch_end(self) -> None:
        if self._epoch_examples:  # the mean over the epoch's examples, averaged over ranks
            self.log("train/loss", self._epoch_loss_sum / self._epoch_examples, prog_bar=True, sync_dist=True)

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(params=self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        scheduler = {"scheduler": self.scheduler_factory(optimizer), "interval": "epoch", "monitor": self.monitor}
        return {"optimizer": optimizer, "lr_scheduler": scheduler}

    # ---- evaluation: exact full ranking ---------------------------------------
    def _start_eval(self, split: str) -> None:
        datamodule = self.trainer.datamodule
        self._item_vectors = encode_catalogue(self.model, datamodule.item_chunks(), self.device)
        if self.popularity_prior is not None:  # [v, log(1 + c)]: users get [u, w] (twotower.prior)
            data = datamodule.data
            log_prior = self.popularity_prior.item_log_prior(*data.clicks_before(split), data.num_items)
            self._item_vectors = append_column(self._item_vectors, log_prior)
        if self.eval_backend == "faiss":
            self._faiss_index = build_faiss_index(self._item_vectors)
        if self.covisit_weight:  # the walks go over the pairs observed before the ranked split
            data = self.trainer.datamodule.data
            self._covisit = CoVisitation(*data.pairs_before(split), data.num_users, data.num_items)
        self._accumulator = RankingAccumulator(self.ks, self.item_counts.cpu(), self.popularity_bands)
        # Choosing the prior's weights: on validation only, never on test.
        self._candidate_rankings = [] if split == "val" and self.weight_search is not None else None

    def _rank(self, user_vecs: torch.Tensor, batch: EvalBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(topk [U, K], hits [U, K], num_targets [U])`` of a batch's users against the catalogue."""
        k, num_items = max(self.ks), len(self._item_vectors)
        if self._faiss_index is not None:
            topk = faiss_top_k(user_vecs, self._faiss_index, batch.seen_rows, batch.seen_items, k, num_items)
            hits, num_targets = match_targets(topk, batch.target_rows.cpu(), batch.target_items.cpu(), num_items)
            return topk, hits, num_targets
        scores = self.model.score_matrix(user_vecs, self._item_vectors)  # [U, N]
        if self._covisit is not None:
            scores = scores + self.covisit_weight * self._covisit.scores(batch.user["index"].cpu()).to(scores)
        return rank_and_match(scores, batch.seen_rows, batch.seen_items, batch.target_rows, batch.target_items, k)

    def _eval_step(self, batch: EvalBatch) -> None:
        # Ranking is exact whatever `trainer.precision` trains in: under bf16-mixed, Lightning's
        # autocast would score in bfloat16 (three significant digits) and reorder near-ties.
        with torch.autocast(self.device.type, enabled=False):
            self._rank_batch(batch)

    def _rank_batch(self, batch: EvalBatch) -> None:
        user_vecs = self.model.encode_users(batch.user)
        if self._candidate_rankings is not None:  # every weight the search considers ranks the batch
            ranked = [self._rank(append_column(user_vecs, torch.full((len(batch),), w)), batch) for w in self._search_weights]
            self._candidate_rankings.append((batch.warm.cpu(), batch.target_rows, batch.target_items, ranked))
            return
        if self.popularity_prior is not None:
            user_vecs = append_column(user_vecs, self.popularity_prior.user_weights(batch.warm))
        self._accumulator.add(*self._rank(user_vecs, batch), batch.warm, batch.target_rows, batch.target_items)

    @property
    def _search_weights(self) -> tuple[float, ...]:
        """The candidates, and the fixed weight of a group that is not searched."""
        search, prior = self.weight_search, self.popularity_prior
        fixed = ([] if search.warm else [prior.warm_weight]) + ([] if search.cold else [prior.cold_weight])
        return tuple(sorted(set(search.candidates) | set(fixed)))

    def _choose_prior_weights(self) -> None:
        """Each searched group takes the weight with the best monitored metric over its validation
        users (:func:`twotower.prior.choose_weights`); the validation metrics are then those of
        each user's ranking under its group's weight."""
        weights, search = self._search_weights, self.weight_search
        name = monitored_ranking_metric(self.monitor)
        k = int(name.rsplit("@", 1)[1])
        metric = torch.cat([
            torch.stack([per_user_metrics(hits.cpu(), targets.cpu(), [k])[name] for _, hits, targets in ranked])
            for _, _, _, ranked in self._candidate_rankings
        ], dim=1)  # [W, U]  # fmt: skip
        warm = torch.cat([w for w, _, _, _ in self._candidate_rankings])
        prior = self.popularity_prior
        chosen = choose_weights(metric, warm, weights, (prior.warm_weight, prior.cold_weight))
        self.popularity_prior = prior.with_weights(chosen[0] if search.warm else prior.warm_weight,
                                                   chosen[1] if search.cold else prior.cold_weight)  # fmt: skip
        at_warm, at_cold = weights.index(self.popularity_prior.warm_weight), weights.index(self.popularity_prior.cold_weight)
        for warm_rows, target_rows, target_items, ranked in self._candidate_rankings:
            (warm_top, warm_hits, targets), (cold_top, cold_hits, _) = ranked[at_warm], ranked[at_cold]
            rows = warm_rows.to(warm_top.device)[:, None]
            self._accumulator.add(torch.where(rows, warm_top, cold_top), torch.where(rows, warm_hits, cold_hits), targets,
                                  warm_rows, target_rows, target_items)  # fmt: skip
        self._candidate_rankings = None

    def _end_eval(self, prefix: str) -> dict[str, float]:
        if self._candidate_rankings is not None:
            self._choose_prior_weights()
        metrics = self._accumulator.compute(prefix)
        if self.popularity_prior is not None:  # the weights this evaluation ranked with
            metrics.update({f"{prefix}/prior/warm_weight": self.popularity_prior.warm_weight,
                            f"{prefix}/prior/cold_weight": self.popularity_prior.cold_weight})  # fmt: skip
        if prefix == "test":
            self.test_per_user = self._accumulator.per_user(prefix)
        self._item_vectors, self._accumulator, self._faiss_index, self._covisit = None, None, None, None
        logged = dict(metrics)
        if prefix == "val" and self._fit_started is not None:
            # Wall time since this process started fitting: time-to-quality reads it from the CSV log.
            logged["time/elapsed_s"] = time.perf_counter() - self._fit_started
        self.log_dict(logged, sync_dist=False)
        return metrics

    def on_fit_start(self) -> None:
        self._fit_started = time.perf_counter()

    def on_validation_epoch_start(self) -> None:
        self._start_eval("val")

    def validation_step(self, batch: EvalBatch, batch_idx: int) -> None:
        self._eval_step(batch)

    def on_validation_epoch_end(self) -> None:
        self.val_metrics = self._end_eval("val")

    def on_test_epoch_start(self) -> None:
        self._start_eval("test")

    def test_step(self, batch: EvalBatch, batch_idx: int) -> None:
        self._eval_step(batch)

    def on_test_epoch_end(self) -> None:
        self.test_metrics = self._end_eval("test")

    # ---- checkpoints describe themselves, and resume exactly ----------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["twotower_version"] = twotower.__version__
        checkpoint["twotower_config"] = self.run_config
        checkpoint["twotower_features"] = self.fitted_features
        checkpoint["rng_state"] = rng_state()  # dropout and the losses' random choices continue as they were
        if self.popularity_prior is not None:  # chosen at this checkpoint's validation when searched
            checkpoint["twotower_prior_weights"] = [self.popularity_prior.warm_weight, self.popularity_prior.cold_weight]
        if self.frequency_estimator is not None:
            checkpoint["frequency_estimator"] = self.frequency_estimator.state_dict()

    def load_prior_weights(self, checkpoint: dict) -> None:
        """The prior's weights the checkpoint was validated with (what test, export and serving
        rank with); ValueError for values that are not two numbers >= 0."""
        weights = checkpoint.get("twotower_prior_weights")
        if self.popularity_prior is None or weights is None:
            return
        if not (isinstance(weights, (list, tuple)) and len(weights) == 2):
            raise ValueError(f"twotower_prior_weights={weights!r}: expected [warm weight, cold weight]")
        self.popularity_prior = self.popularity_prior.with_weights(*weights)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.load_prior_weights(checkpoint)
        if "rng_state" in checkpoint:
            set_rng_state(checkpoint["rng_state"])
        if self.frequency_estimator is not None and "frequency_estimator" in checkpoint:
            self.frequency_estimator.load_state_dict(checkpoint["frequency_estimator"])
