"""Hard negatives mined offline from the model's own ranking (Huang et al., KDD 2020,
"Embedding-based Retrieval in Facebook Search").

Every ``refresh_every`` epochs (after ``warmup_epochs``) the catalogue is embedded
with the current model, every training user's items are ranked, the user's known
training positives are dropped from that ranking, and the items at ranks
``lo..hi`` are kept as that user's hard-negative window. Each training example then
gets ``round(n * hard_fraction)`` negatives drawn uniformly from its user's window
and the rest "easy" ones from the whole catalogue (uniform or ``count ** alpha``).

The sampler itself knows nothing of models: :class:`HardNegativeMiner`, a Lightning
callback the sampler hands to the Trainer (``sampler.callbacks()``), reaches the
model through ``pl_module.model`` and calls :meth:`HardNegativeSampler.update`.
"""

from __future__ import annotations

import logging
import time

import lightning as L
import torch

from twotower.data.positives import PositiveLookup
from twotower.models.scoring import dot_matrix, encode_catalogue
from twotower.samplers import CorpusSampler, Negatives, TrainingStats, resample_collisions

log = logging.getLogger("twotower")

# At most this many (user, item) scores are held at once while mining (64 MB of float32).
MAX_MINING_SCORES = 1 << 24


def mine_rank_window(
    user_vecs: torch.Tensor,
    item_vecs: torch.Tensor,
    users: torch.Tensor,
    is_positive: PositiveLookup,
    lo: int,
    hi: int,
    chunk: int = 1024,
    score_matrix=dot_matrix,
) -> torch.Tensor:
    """Items at ranks ``lo..hi`` (1-based, inclusive) of each user's ranking of the
    catalogue, once the user's known training positives are removed from it.

    ``user_vecs``: ``[U, D]`` vectors of the users ``users`` (``[U]``, dense ids, for
    ``is_positive``); ``item_vecs``: ``[N, D]`` vectors of the whole catalogue (item
    ``i`` is row ``i``). Scores are exact (``score_matrix``, the inner product by
    default), computed for at most ``chunk`` users at a time. Positives are masked
    *before* ranking: they are never negatives and do not take a rank.
    Returns ``[U, hi - lo + 1]`` item ids (long, on the CPU), best-ranked first.
    """
    num_items = len(item_vecs)
    if lo < 1:
        raise ValueError(f"sampler.lo={lo}: ranks are 1-based, expected lo >= 1")
    if lo > hi:
        raise ValueError(f"sampler.lo={lo} > sampler.hi={hi}: the rank window is empty; expected lo <= hi")
    if hi >= num_items:
        raise ValueError(f"sampler.hi={hi}: expected hi < the number of items ({num_items})")
    if chunk < 1:
        raise ValueError(f"chunk={chunk}: expected >= 1")
    users = users.long().cpu()
    chunk = max(1, min(chunk, MAX_MINING_SCORES // max(1, num_items)))
    all_items = torch.arange(num_items)
    out = []
    for start in range(0, len(users), chunk):
        u = users[start : start + chunk]
        scores = score_matrix(user_vecs[start : start + chunk], item_vecs).float()  # [u, N]
        positive = is_positive(u, all_items.expand(len(u), num_items))  # [u, N] bool, CPU
        available = num_items - positive.sum(1)
        if bool((available < hi).any()):
            worst = int(available.argmin())
            raise ValueError(
                f"user {int(u[worst])} has only {int(available[worst])} items that are not training positives; "
                f"sampler.hi={hi} must be at most that"
            )
        scores = scores.masked_fill(positive.to(scores.device), float("-inf"))
        top = torch.topk(scores, hi, dim=1, sorted=True).indices  # [u, hi]
        out.append(top[:, lo - 1 : hi].cpu())
    if not out:
        return torch.zeros(0, hi - lo + 1, dtype=torch.long)
    return torch.cat(out).long()


class HardNegativeSampler:
    """Per-example negatives ``[B, n]``: ``round(n * hard_fraction)`` drawn uniformly
    from the user's mined rank window (once mined and past ``warmup_epochs``), the
    rest easy ones from the whole catalogue (``easy="uniform"`` or
    ``"popularity"``: probability ~ ``count ** alpha``). Before the first mining all
    ``n`` are easy. ``mined``: ``[num_users, W]`` (a row of ``-1``: a user not
    mined, who gets easy negatives only) or ``None``."""

    provides_negatives = True

    def __init__(
        self,
        stats: TrainingStats,
        num_negatives: int,
        lo: int,
        hi: int,
        hard_fraction: float = 0.5,
        easy: str = "uniform",
        alpha: float = 0.75,
        warmup_epochs: int = 1,
        refresh_every: int = 1,
    ):
        if num_negatives < 1:
            raise ValueError(f"sampler.num_negatives={num_negatives}: expected >= 1")
        if not 0.0 <= hard_fraction <= 1.0:
            raise ValueError(f"sampler.hard_fraction={hard_fraction}: expected a fraction in [0, 1]")
        if easy not in ("uniform", "popularity"):
            raise ValueError(f"sampler.easy={easy!r}: expected 'uniform' or 'popularity'")
        if warmup_epochs < 0:
            raise ValueError(f"sampler.warmup_epochs={warmup_epochs}: expected >= 0")
        if refresh_every < 1:
            raise ValueError(f"sampler.refresh_every={refresh_every}: expected >= 1")
        if lo < 1:
            raise ValueError(f"sampler.lo={lo}: ranks are 1-based, expected lo >= 1")
        if lo > hi:
            raise ValueError(f"sampler.lo={lo} > sampler.hi={hi}: the rank window is empty; expected lo <= hi")
        num_items = len(stats.item_counts)
        self.num_users = stats.num_users
        self.max_positives = self._max_items_per_user(stats, num_items)
        lo, hi = self._fit_window(lo, hi, num_items, self.max_positives)
        self.lo, self.hi = lo, hi
        self.num_negatives = num_negatives
        self.hard_fraction = hard_fraction
        self.num_hard = int(round(num_negatives * hard_fraction))
        weights = stats.item_counts.float() ** alpha if easy == "popularity" else torch.ones(num_items)
        self.easy = CorpusSampler(weights, num_negatives)
        self.warmup_epochs = warmup_epochs
        self.refresh_every = refresh_every
        self.mined: torch.Tensor | None = None
        self.mined_rows: torch.Tensor | None = None  # [num_users] bool: the user has a window
        self.epoch = 0
        self.mined_at_epochs: list[int] = []

    @staticmethod
    def _max_items_per_user(stats: TrainingStats, num_items: int) -> int:
        """The most distinct training items of one user (an upper bound on positives)."""
        if stats.users is None or stats.items is None or len(stats.users) == 0:
            return 0
        keys = torch.unique(stats.users.long() * num_items + stats.items.long())
        return int(torch.bincount(keys // num_items).max())

    @staticmethod
    def _fit_window(lo: int, hi: int, num_items: int, max_positives: int) -> tuple[int, int]:
        """Clip the window to the catalogue: every user must have ``hi`` non-positive items."""
        limit = num_items - 1 - max_positives
        if hi <= limit:
            return lo, hi
        if limit < 1:
            raise ValueError(
                f"sampler.hi={hi}: a catalogue of {num_items} items, of which one user has {max_positives} "
                "training items, leaves no rank window to mine"
            )
        new_hi = limit
        new_lo = max(1, min(new_hi, round(lo * new_hi / hi)))
        log.warning(
            "sampler hard: rank window lo=%d, hi=%d does not fit a catalogue of %d items (a user has up to %d "
            "training items); clipped to hi=%d (N - 1 - max positives per user) and lo=%d (scaled by the same "
            "factor). Set sampler.lo / sampler.hi for this catalogue (e.g. lo=21, hi=100 for MovieLens-100K).",
            lo, hi, num_items, max_positives, new_hi, new_lo,
        )  # fmt: skip
        return new_lo, new_hi

    @property
    def window(self) -> int:
        return self.hi - self.lo + 1

    def is_mining_due(self, epoch: int) -> bool:
        """Mining runs at the start of epochs ``warmup_epochs``, ``+ refresh_every``, ... (0-based)."""
        return epoch >= self.warmup_epochs and (epoch - self.warmup_epochs) % self.refresh_every == 0

    @property
    def mining_due(self) -> bool:
        """Whether mining is due at the current ``epoch``."""
        return self.is_mining_due(self.epoch)

    def update(self, mined_window: torch.Tensor) -> None:
        """Install a freshly mined ``[num_users, W]`` window (rows of ``-1``: not mined)."""
        if mined_window.dim() != 2:
            raise ValueError(f"mined window of shape {tuple(mined_window.shape)}: expected [num_users, W]")
        self.mined = mined_window.long().cpu()
        self.mined_rows = (self.mined >= 0).all(1)
        self.mined_at_epochs.append(self.epoch)

    def callbacks(self) -> list:
        """Lightning callbacks the Trainer must run for this sampler (the miner)."""
        return [HardNegativeMiner(self)]

    def sample(self, users: torch.Tensor, positives: torch.Tensor, generator: torch.Generator) -> Negatives:
        batch, n = len(positives), self.num_negatives
        easy = self.easy.draw(batch * n, generator).view(batch, n)
        easy = resample_collisions(easy, positives, self.easy.draw, generator)
        if self.mined is None or self.num_hard == 0 or self.epoch < self.warmup_epochs:
            return Negatives(items=easy)
        h = self.num_hard
        window = self.mined.index_select(0, users)  # [B, W]
        pick = torch.randint(window.shape[1], (batch, h), generator=generator)
        hard = window.gather(1, pick)
        has = self.mined_rows.index_select(0, users)[:, None]
        hard = torch.where(has, hard, easy[:, :h])  # a user without a window: easy ones
        return Negatives(items=torch.cat([hard, easy[:, h:]], dim=1))


class HardNegativeMiner(L.Callback):
    """At the start of each epoch where the sampler's mining is due: embed every
    training user and the whole catalogue with the current model (eval mode, no
    grad), mine each user's rank window and hand it to the sampler."""

    def __init__(self, sampler: HardNegativeSampler, chunk: int = 1024):
        self.sampler = sampler
        self.chunk = chunk
        self.last_mining_seconds: float | None = None

    # Lightning keeps a callback's state in checkpoints: a resumed run samples from the
    # window mined before the interruption, not from none until the next refresh.
    def state_dict(self) -> dict:
        sampler = self.sampler
        return {} if sampler.mined is None else {"mined": sampler.mined, "mined_at_epochs": list(sampler.mined_at_epochs)}

    def load_state_dict(self, state: dict) -> None:
        # Only into a sampler that has none yet (a resumed run); testing a checkpoint after
        # training restores callbacks too, and must not replace the window of this run.
        if "mined" in state and self.sampler.mined is None:
            self.sampler.update(state["mined"])
            self.sampler.mined_at_epochs = list(state["mined_at_epochs"])

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        sampler = self.sampler
        sampler.epoch = trainer.current_epoch
        if not sampler.mining_due:
            return
        dm = trainer.datamodule
        model = pl_module.model
        device = pl_module.device
        was_training = pl_module.training
        started = time.perf_counter()
        pl_module.eval()
        try:
            with torch.no_grad():
                item_vecs = encode_catalogue(model, dm.item_chunks(), device)
                users = torch.unique(dm.train_examples.user)
                window = torch.full((dm.data.num_users, sampler.window), -1, dtype=torch.long)
                for start in range(0, len(users), self.chunk):
                    u = users[start : start + self.chunk]
                    feats = {k: v.to(device) for k, v in dm.packed("user").gather(u).items()}
                    window[u] = mine_rank_window(
                        model.encode_users(feats), item_vecs, u, dm.data.is_train_positive,
                        sampler.lo, sampler.hi, chunk=self.chunk, score_matrix=model.score_matrix,
                    )  # fmt: skip
        finally:
            pl_module.train(was_training)
        sampler.update(window)
        self.last_mining_seconds = time.perf_counter() - started
        log.info(
            "hard negatives mined at epoch %d: ranks %d-%d for %d users in %.2fs",
            sampler.epoch, sampler.lo, sampler.hi, len(users), self.last_mining_seconds,
        )  # fmt: skip


def hard_sampler(
    stats: TrainingStats,
    num_negatives: int = 8,
    lo: int = 21,
    hi: int = 100,
    hard_fraction: float = 0.5,
    easy: str = "uniform",
    alpha: float = 0.75,
    warmup_epochs: int = 1,
    refresh_every: int = 1,
) -> HardNegativeSampler:
    return HardNegativeSampler(stats, num_negatives, lo, hi, hard_fraction, easy, alpha, warmup_epochs, refresh_every)
