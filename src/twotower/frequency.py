"""Streaming item-frequency estimation (Yi et al., RecSys 2019, "Sampling-bias-corrected
neural modeling for large corpus item recommendations", Algorithms 2-3).

No vocabulary and no pass over the data: the estimator watches the items of each
training batch and learns, per item, the average number of steps between two of
its sightings, ``delta``. The probability that the item appears in a batch is
then ``p = 1 / delta``: the ``p`` of the logQ correction, which follows the data
when its distribution drifts. Pure tensor code; the LightningModule holds one
and feeds it the global batch, so every rank keeps the same state.
"""

from __future__ import annotations

import torch

# A Mersenne prime above any item id we hash: ((a * id + b) mod P) is a universal hash.
_PRIME = (1 << 31) - 1


class StreamingFrequencyEstimator:
    """Hash arrays ``A`` (the step an item was last seen) and ``B`` (the moving
    average of the gap between sightings), one pair per hash function.

    At step ``t``, for each distinct item ``y`` of the batch and each hash ``h``:
    ``B[h(y)] <- (1 - alpha) * B[h(y)] + alpha * (t - A[h(y)])``, then ``A[h(y)] <- t``.
    A slot seen for the first time takes the gap as it is (``t - 0``) instead of
    averaging it with an arbitrary initial value. The estimate is
    ``p(y) = 1 / max_h B[h(y)]``: a collision makes a slot look more frequent (its gap
    shorter), so the largest gap over the hashes is the least polluted one.

    After the average has seen ``n >> 1 / alpha`` sightings, the relative standard
    deviation of ``B`` is about ``sqrt(alpha / (2 - alpha) * (1 - p))`` (an exponential
    moving average of geometric gaps): 7 % at ``alpha = 0.01``.
    """

    def __init__(self, num_buckets: int = 65536, num_hashes: int = 2, alpha: float = 0.01, seed: int = 0):
        if num_buckets < 1 or num_hashes < 1:
            raise ValueError(f"num_buckets={num_buckets}, num_hashes={num_hashes}: expected >= 1")
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"alpha={alpha}: expected 0 < alpha <= 1 (the moving average's learning rate)")
        generator = torch.Generator().manual_seed(seed)
        # Hash parameters: a in [1, P), b in [0, P).
        self.hash_a = torch.randint(1, _PRIME, (num_hashes, 1), generator=generator)
        self.hash_b = torch.randint(0, _PRIME, (num_hashes, 1), generator=generator)
        self.num_buckets = num_buckets
        self.alpha = alpha
        self.last_seen = torch.zeros(num_hashes, num_buckets, dtype=torch.long)  # A
        self.gap = torch.zeros(num_hashes, num_buckets, dtype=torch.float64)  # B; 0 = never seen
        self.step = 0  # t

    def buckets(self, items: torch.Tensor) -> torch.Tensor:
        """``[n]`` item ids -> ``[H, n]`` bucket of each item under each hash."""
        items = items.long().to(self.hash_a.device)
        return (self.hash_a * items[None, :] + self.hash_b) % _PRIME % self.num_buckets

    def update(self, items: torch.Tensor) -> None:
        """Advance one step and record the items ``[n]`` of this step's (global) batch.
        An item appearing several times in one batch counts once."""
        self.step += 1
        slots = self.buckets(torch.unique(items))  # [H, m]
        for h in range(slots.shape[0]):
            # Distinct items may share a slot; unique keeps one update per slot and step.
            slot = torch.unique(slots[h])
            gap_now = (self.step - self.last_seen[h, slot]).to(self.gap.dtype)
            previous = self.gap[h, slot]
            self.gap[h, slot] = torch.where(previous > 0, (1 - self.alpha) * previous + self.alpha * gap_now, gap_now)
            self.last_seen[h, slot] = self.step

    def probabilities(self, items: torch.Tensor) -> torch.Tensor:
        """``[n]`` item ids -> ``[n]`` estimated probability of appearing in a batch
        (1 for an item never seen: it appears in the batch being scored)."""
        slots = self.buckets(items)
        gaps = self.gap.gather(1, slots).amax(dim=0)
        return 1.0 / gaps.clamp_min(1.0)

    def log_probabilities(self, items: torch.Tensor) -> torch.Tensor:
        """``log p`` of :meth:`probabilities`, as float32: the logQ correction."""
        return torch.log(self.probabilities(items)).float()

    # ---- checkpoints ------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "hash_a": self.hash_a, "hash_b": self.hash_b, "last_seen": self.last_seen,
            "gap": self.gap, "step": self.step, "alpha": self.alpha,
        }  # fmt: skip

    def load_state_dict(self, state: dict) -> None:
        if tuple(state["gap"].shape) != tuple(self.gap.shape):
            raise ValueError(
                f"frequency estimator state has arrays of shape {tuple(state['gap'].shape)}, "
                f"this run expects {tuple(self.gap.shape)} (num_hashes, num_buckets)"
            )
        self.hash_a, self.hash_b = state["hash_a"], state["hash_b"]
        self.last_seen, self.gap = state["last_seen"], state["gap"]
        self.step, self.alpha = int(state["step"]), float(state["alpha"])
