"""How much memory one training step needs, estimated before training from its largest
tensors, so that a setting such as ``sampler.num_negatives=1000000`` is refused in a
second instead of trying to allocate tens of gigabytes after the data is prepared.

The estimate counts what grows with the batch and the negatives: the score matrix
(scores, logits, the softmax and their gradients, the accidental-hit mask and the logQ
terms: about ``SCORE_BYTES`` per (example, candidate) pair, plus the item ids of
per-example negatives), and the item tower's activations for every distinct item the
step encodes (kept for the backward pass, with their gradients). It leaves out the
model's own tables and the optimizer state, which do not grow with the step, so it is a
lower bound: a step refused by it could never run.
"""

from __future__ import annotations

import os

# float32 scores, logits, softmax, their two gradients, a logQ term and a mask byte.
SCORE_BYTES = 4 * 6 + 1
# int64 ids of per-example negatives, and the index mapping them to their distinct rows.
NEGATIVE_ID_BYTES = 8 * 2
FLOAT_BYTES = 4
GB = 1 << 30


def step_bytes(
    batch_size: int,
    per_example_negatives: int,
    shared_negatives: int,
    in_batch: bool,
    num_items: int,
    item_row_floats: int,
) -> int:
    """Bytes of the largest tensors of one training step (a lower bound, see the module).

    ``per_example_negatives``: ``n`` negatives for each of the ``B`` examples (a ``[B, n]``
    block of candidates); ``shared_negatives``: ``M`` negatives scored by every example
    (``[M]``); ``in_batch``: the batch's ``B`` positives are candidates for every example;
    ``item_row_floats``: floats one item leaves in the item tower (its feature embeddings and
    hidden layers). The item tower encodes each distinct item once, at most ``num_items``."""
    columns = 1 + per_example_negatives + shared_negatives + (batch_size if in_batch else 0)
    scores = batch_size * columns * SCORE_BYTES
    negative_ids = batch_size * per_example_negatives * NEGATIVE_ID_BYTES
    encoded = batch_size + min(batch_size * per_example_negatives + shared_negatives, num_items)
    activations = encoded * item_row_floats * FLOAT_BYTES * 2  # values and their gradients
    return scores + negative_ids + activations


def default_limit_bytes() -> int:
    """80% of this machine's physical memory (the rest for the model, the data and the OS)."""
    return int(0.8 * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
