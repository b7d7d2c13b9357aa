"""A synthetic data set with planted structure, at any scale (``data=synthetic``).

Generative process (every step vectorized; nothing of size users x items is formed):

1. **Topics.** ``num_topics`` centroids ``c_k``: random unit vectors in ``dim`` dimensions.
2. **Items.** Each item gets a topic ``t_i`` (uniform) and a planted popularity
   ``w_i = rank_i ** -zipf_exponent``, the ranks a random permutation of ``1..num_items``
   (Zipf, independent of the topic). An item's latent factor is its topic's centroid,
   ``v_i = c_{t_i}``; items of one topic differ only in popularity. ``W_k`` is the
   popularity mass of topic ``k`` (the sum of its items' ``w_i``).
3. **Users.** Each user gets a home topic ``h_u`` drawn with probability ``W_k / sum(W)``
   and a factor ``u = c_{h_u} + user_noise * g / sqrt(dim)``, ``g ~ N(0, I)``. Its topic
   distribution is ``p(k | u) = softmax_k(u . c_k / temperature + b_k)`` over the non-empty
   topics, with biases ``b_k`` fitted so that all users' draws together fall on topic ``k``
   in proportion to ``W_k``.
4. **Interactions.** User ``u`` makes ``n_u = min_user_interactions + m_u`` draws (at most
   ``num_items``), the extra ``m_u`` multinomial over users with log-normal activity
   weights (a heavy tail of active users). One draw: a topic ``k ~ p(. | u)``, then an
   item of topic ``k`` with probability ``w_i / W_k`` (``searchsorted`` on per-topic
   cumulative weights). Equivalently ``P(i | u) ~ exp(u . v_i / temperature + b_{t_i})
   * w_i / W_{t_i}``: a softmax of the factors' dot product plus popularity terms, which a
   two-tower model can learn. Thanks to ``b``, item ``i``'s expected share of all draws is
   exactly ``w_i / sum(w)``: the planted Zipf law is the item marginal.
   A repeated (user, item) pair is replaced by fresh draws from the same ``P(. | u)`` (a
   few vectorized rounds), so pairs are unique; this moves a little mass from the head
   (items a user would pick twice) to the tail, so the observed head is slightly flatter
   than the planted law. A heavy user whose likely items run out may keep a few draws fewer.
5. **Timestamps** (int64 seconds): each user joins at a uniform time in the first half of
   ``[start_time, start_time + span_days]`` and stays active until its end; their
   interactions are uniform in that window. Rows are sorted by (user, timestamp), so each
   user's timestamps are non-decreasing, and every user is active near the end, so a
   global temporal split leaves most test users warm. Preferences do not drift.
6. **Ratings** (float64, 1-5, or NaN with ``ratings=False``): the affinity
   ``u . v_i`` of the pair, standardized over all interactions, ``3.5 + z + 0.7 * N(0, 1)``
   rounded and clipped to 1..5. Every interaction is a click; the rating only says how
   well it matched (``positive_threshold: null`` in ``conf/data/synthetic.yaml``).

Features (none leaks popularity or the interaction counts):
  - users: ``top_genre`` (categorical, str): the user's most likely topic, replaced by a
    uniform random topic with probability ``feature_noise``; ``age`` (continuous):
    ``38 + 8 z + 6 N(0, 1)``, rounded, clipped to 16..80, ``z`` the user factor's
    standardized projection on a fixed random direction.
  - items: ``genres`` (multi_categorical, 1-3 ``|``-joined tags ``genre_KK``): the item's
    topic (a uniform random topic with probability ``feature_noise``), then 0-2 of the
    topics whose centroids are nearest its topic's ("related genres");
    ``release_year`` (continuous): ``2005 + 6 z + 4 N(0, 1)``, rounded, clipped to
    1950..2024, ``z`` the topic centroid's standardized projection on another direction.

Guarantees: ids are int64 (users ``0..num_users-1``, items ``0..num_items-1``, all items
in the item table, some possibly never interacted with); no (user, item) pair repeats;
every user has at least ``min_user_interactions`` interactions (topped up with uniform
random unseen items in the rare case the redraws leave a user short); the number of
rows is ``num_interactions`` minus the draws that found no unseen item
(:attr:`SyntheticWorld.shortfall`: about 0.1% at the default sizes, 1-2% for dense
settings such as 20 draws per user from 300 items; a steep law leaves users few likely
items, e.g. a third of the draws at ``zipf_exponent=3``); the same arguments give
identical DataFrames.

Why one module of about 540 lines: it is the generative process above, step by step, each
step a small pure function tested on its own; split, the process this docstring describes
would be scattered over files.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import numpy as np
import pandas as pd

from twotower.data.schema import MULTI_VALUE_SEPARATOR, InteractionData

SECONDS_PER_DAY = 86_400
# Spread (sigma of the log) of the users' activity weights: a few users far more active than most.
ACTIVITY_SIGMA = 1.0
# Rounds of redrawing repeated (user, item) pairs, and candidates drawn per pair still missing.
DEDUP_ROUNDS = 12
REDRAW_FACTOR = 4
# The topic biases are fitted on at most this many users, for at most this many steps.
CALIBRATION_USERS = 20_000
CALIBRATION_STEPS = 200
# At most this many related genres follow an item's own topic tag.
MAX_EXTRA_GENRES = 2


def genre_name(topic: int | np.ndarray) -> str | np.ndarray:
    """The tag of topic ``k``: ``genre_07``; element-wise on an int array."""
    if isinstance(topic, np.ndarray):
        return np.array([f"genre_{k:02d}" for k in range(int(topic.max()) + 1)], dtype=object)[topic]
    return f"genre_{topic:02d}"


@dataclass
class SyntheticWorld:
    """The generated data and the planted structure behind it (for tests and analysis).

    Shapes: ``K`` topics, ``U`` users, ``N`` items, ``M`` interactions.
    """

    centroids: np.ndarray  # [K, dim] float64, unit rows: the topics' factors
    user_factors: np.ndarray  # [U, dim] float64
    user_home: np.ndarray  # [U] int64: the topic each user's factor was drawn around
    topic_probs: np.ndarray  # [U, K] float64: p(topic | user), rows sum to 1
    item_topic: np.ndarray  # [N] int64
    item_weight: np.ndarray  # [N] float64: the planted (Zipf) popularity w_i
    user_draws: np.ndarray  # [U] int64: the draws planned per user (the topic bias is fitted to them)
    shortfall: int  # num_interactions - M: planned draws that found no unseen item (heavy users)
    interactions: pd.DataFrame  # [M] user_id, item_id, timestamp, rating
    users: pd.DataFrame  # indexed by user_id: top_genre, age
    items: pd.DataFrame  # indexed by item_id: genres, release_year

    @property
    def item_factors(self) -> np.ndarray:
        """[N, dim]: each item's factor, its topic's centroid (built on demand: N x dim floats)."""
        return self.centroids[self.item_topic]

    def affinity(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """``u . v_i`` of the pairs ``(users[j], items[j])``, ``[m]``; via the ``[U, K]`` table, not ``[m, dim]``."""
        return (self.user_factors @ self.centroids.T)[users, self.item_topic[items]]

    def to_interaction_data(self) -> InteractionData:
        return InteractionData(name="synthetic", interactions=self.interactions, users=self.users, items=self.items)


# --- argument checks ---------------------------------------------------------------------------


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name}={value!r}: expected an integer >= {minimum}")
    return int(value)


def _check_float(name: str, value, low: float, high: float = np.inf, low_open: bool = False) -> float:
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and bool(np.isfinite(value))
    ok = ok and (value > low if low_open else value >= low) and value <= high
    if not ok:
        bound = f"> {low}" if low_open else f">= {low}"
        upper = "" if high == np.inf else f" and <= {high}"
        raise ValueError(f"{name}={value!r}: expected a finite number {bound}{upper}")
    return float(value)


# --- planted structure -------------------------------------------------------------------------


def unit_vectors(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    """``[n, dim]`` random directions, each of norm 1."""
    x = rng.standard_normal((n, dim))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def zipf_weights(rng: np.random.Generator, n: int, exponent: float) -> np.ndarray:
    """``[n]`` weights ``rank ** -exponent`` with the ranks ``1..n`` in random order over the items."""
    ranks = rng.permutation(n) + 1
    return ranks.astype(np.float64) ** -exponent


@dataclass
class TopicCatalogue:
    """Items grouped by topic for sampling: ``order`` lists item indices topic by topic,
    ``cum`` the running sum of their weights in that order; topic ``k`` spans
    ``order[start[k]:end[k]]`` and ``cum`` rises by ``mass[k]`` over that span."""

    order: np.ndarray  # [N] int64
    cum: np.ndarray  # [N] float64
    start: np.ndarray  # [K] int64
    end: np.ndarray  # [K] int64
    mass: np.ndarray  # [K] float64: W_k, 0 for an empty topic

    @classmethod
    def build(cls, item_topic: np.ndarray, item_weight: np.ndarray, num_topics: int) -> "TopicCatalogue":
        order = np.argsort(item_topic, kind="stable")
        cum = np.cumsum(item_weight[order])
        sizes = np.bincount(item_topic, minlength=num_topics)
        end = np.cumsum(sizes)
        start = end - sizes
        before = np.where(start > 0, cum[np.maximum(start - 1, 0)], 0.0)
        after = np.where(sizes > 0, cum[np.maximum(end - 1, 0)], before)
        return cls(order, cum, start, end, after - before)

    def sample(self, rng: np.random.Generator, topics: np.ndarray) -> np.ndarray:
        """One item per entry of ``topics`` (``[m]``, non-empty topics only), drawn with
        probability ``w_i / W_k`` within its topic; returns ``[m]`` item indices aligned with ``topics``.

        Speed (random queries into a million-item array are several times slower): draws
        are grouped by topic (a radix sort), and each group searches only its own topic's
        cumulative weights, which stay in cache, with sorted queries; a random permutation
        then hands the group's items to its rows, so which row gets which item does not
        depend on the rows' order."""
        small = len(self.mass) <= np.iinfo(np.int16).max  # int16 keys get numpy's radix sort
        by_topic = np.argsort(topics.astype(np.int16 if small else np.int64), kind="stable")
        per_topic = np.bincount(topics, minlength=len(self.mass))
        out = np.empty(len(topics), dtype=np.int64)
        done = 0
        for k in np.flatnonzero(per_topic):
            n = int(per_topic[k])
            rows = by_topic[done : done + n]
            done += n
            segment = self.cum[self.start[k] : self.end[k]]
            base = self.cum[self.start[k] - 1] if self.start[k] > 0 else 0.0
            pos = np.searchsorted(segment, base + np.sort(rng.random(n)) * self.mass[k], side="right")
            # Rounding can put a draw one past the topic's last item; keep it inside the topic.
            items = self.order[self.start[k] + np.minimum(pos, len(segment) - 1)]
            out[rows] = items[rng.permutation(n)]
        return out


def _softmax_rows(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of ``[n, K]`` logits (``-inf`` entries get probability 0)."""
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    return p / p.sum(axis=1, keepdims=True)


def topic_bias(
    user_factors: np.ndarray, centroids: np.ndarray, topic_mass: np.ndarray, temperature: float, user_weight: np.ndarray
) -> np.ndarray:
    """``[K]`` biases ``b_k`` such that, with ``p(k | u) = softmax_k(u . c_k / temperature + b_k)``,
    the users' draws (user ``u`` weighted by ``user_weight[u]``, its number of draws) fall on
    topic ``k`` in proportion to its popularity mass ``W_k``; ``-inf`` for an empty topic.

    Then item ``i`` is drawn with expected share exactly ``w_i / sum(w)``: the planted Zipf
    law is the item marginal. Fitted by the multiplicative update ``b += log(target / share)``
    on at most ``CALIBRATION_USERS`` users (ids are exchangeable, so the first ones are a sample).
    """
    n = min(len(user_factors), CALIBRATION_USERS)
    logits = user_factors[:n] @ centroids.T / temperature
    weight = user_weight[:n] / user_weight[:n].sum()
    nonempty = topic_mass > 0
    target = topic_mass[nonempty] / topic_mass.sum()
    bias = np.where(nonempty, 0.0, -np.inf)
    for _ in range(CALIBRATION_STEPS):
        share = (weight @ _softmax_rows(logits + bias))[nonempty]
        step = np.log(target / np.maximum(share, 1e-300))
        bias[nonempty] += step
        if np.abs(step).max() < 1e-6:
            break
    return bias


def topic_probabilities(user_factors: np.ndarray, centroids: np.ndarray, bias: np.ndarray, temperature: float) -> np.ndarray:
    """``[U, K]``: ``p(k | u) = softmax_k(u . c_k / temperature + bias_k)``; rows sum to 1."""
    return _softmax_rows(user_factors @ centroids.T / temperature + bias)


def interactions_per_user(rng: np.random.Generator, num_users: int, total: int, minimum: int, maximum: int) -> np.ndarray:
    """``[U]`` int64 draws per user, each in ``minimum..maximum``, summing to ``total`` less
    what ``maximum`` (the catalogue size: pairs are distinct) cuts off: the extra beyond the
    minimum is multinomial over users with log-normal activity weights."""
    activity = rng.lognormal(0.0, ACTIVITY_SIGMA, num_users)
    extra = rng.multinomial(total - num_users * minimum, activity / activity.sum())
    return np.minimum(extra.astype(np.int64) + minimum, maximum)


def sample_topics(rng: np.random.Generator, users: np.ndarray, topic_probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One topic per entry of ``users`` (``[m]``), ``topic ~ topic_probs[user]``, in one ``searchsorted``.

    Row ``u``'s cumulative probabilities are shifted by ``u`` and laid end to end, so the
    query ``u + r`` (``r`` uniform in [0, 1)) lands in row ``u`` and nowhere else. The
    queries are sorted first (a user's draws are exchangeable, so this changes no
    distribution) because sorted queries make ``searchsorted`` several times faster.
    Returns ``(users, topics)``, both ``[m]``, sorted by user then topic."""
    num_users, num_topics = topic_probs.shape
    cum = np.cumsum(topic_probs, axis=1)
    cum[:, -1] = 1.0  # exact row ends: rounding must not let a query spill into the next row
    cum += np.arange(num_users, dtype=np.float64)[:, None]
    queries = np.sort(users + rng.random(len(users)))
    flat = np.searchsorted(cum.ravel(), queries, side="right")
    return flat // num_topics, flat % num_topics


def sample_pair_keys(rng, users: np.ndarray, topic_probs: np.ndarray, catalogue: TopicCatalogue) -> np.ndarray:
    """One draw per entry of ``users`` (``[m]``): a topic from ``p(. | u)``, then an item of
    it by popularity. Returns the sorted unique pair keys ``user * N + item`` drawn."""
    users, topics = sample_topics(rng, users, topic_probs)
    items = catalogue.sample(rng, topics)
    return _sorted_unique(users * len(catalogue.order) + items)


# --- interactions ------------------------------------------------------------------------------


def _sorted_unique(keys: np.ndarray) -> np.ndarray:
    """The distinct values of ``keys``, sorted (a sort and a neighbour test: numpy's own
    ``unique`` hashes and is ~20x slower on 10M int64)."""
    keys = np.sort(keys)
    return keys[np.concatenate(([True], keys[1:] != keys[:-1]))] if len(keys) else keys


def _in_sorted(sorted_keys: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """``[m]`` bool: whether each of ``keys`` occurs in the sorted array ``sorted_keys``."""
    pos = np.searchsorted(sorted_keys, keys)
    found = np.zeros(len(keys), dtype=bool)
    inside = pos < len(sorted_keys)
    found[inside] = sorted_keys[pos[inside]] == keys[inside]
    return found


def _random_subset_per_owner(rng, values: np.ndarray, owner: np.ndarray, quota: np.ndarray) -> np.ndarray:
    """At most ``quota[o]`` of the ``values`` (``[n]``) owned by each ``o``, chosen uniformly at random."""
    # Order by owner, then a random 31-bit priority, packed in one int64 (np.lexsort is ~10x slower).
    order = np.argsort(owner * (1 << 31) + rng.integers(1 << 31, size=len(values)))
    owner = owner[order]
    rank = np.arange(len(owner)) - np.searchsorted(owner, owner)  # position within its owner's run
    return values[order][rank < quota[owner]]


def draw_unique_pairs(rng, counts: np.ndarray, topic_probs: np.ndarray, catalogue: TopicCatalogue, num_items: int) -> np.ndarray:
    """Sorted unique pair keys ``user * num_items + item``: ``counts[u]`` draws per user;
    repeated pairs are replaced in up to ``DEDUP_ROUNDS`` rounds, each drawing
    ``REDRAW_FACTOR`` candidates per missing pair from the same model and keeping a random
    subset of the new ones. A user whose likely items run out may stay a few pairs short."""
    num_users = len(counts)
    keys = sample_pair_keys(rng, np.repeat(np.arange(num_users, dtype=np.int64), counts), topic_probs, catalogue)
    held = np.bincount(keys // num_items, minlength=num_users)
    # Redraws are small: they are kept apart and merged once, so no round touches all the keys
    # beyond a binary search.
    extra = np.empty(0, dtype=np.int64)
    for _ in range(DEDUP_ROUNDS):
        missing = counts - held
        if not missing.any():
            break
        users = np.repeat(np.arange(num_users, dtype=np.int64), missing * REDRAW_FACTOR)
        new = sample_pair_keys(rng, users, topic_probs, catalogue)
        new = new[~_in_sorted(keys, new) & ~_in_sorted(extra, new)]
        new = _random_subset_per_owner(rng, new, new // num_items, missing)
        held += np.bincount(new // num_items, minlength=num_users)
        extra = np.sort(np.concatenate([extra, new]))
    return np.sort(np.concatenate([keys, extra]))


def top_up(rng, keys: np.ndarray, minimum: int, num_users: int, num_items: int) -> np.ndarray:
    """Give every user at least ``minimum`` pairs: a short user (holding ``h < minimum``)
    gets the first unseen items of a run of ``min(num_items, 2 * minimum)`` consecutive
    item ids from a random start, which holds at least ``minimum - h`` unseen ones.
    ``keys``: sorted unique pair keys; returns them with the additions, sorted."""
    held = np.bincount(keys // num_items, minlength=num_users)
    short = np.flatnonzero(held < minimum)
    if len(short) == 0:
        return keys
    run = min(num_items, 2 * minimum)
    items = (rng.integers(num_items, size=len(short))[:, None] + np.arange(run)) % num_items
    cand = short[:, None] * num_items + items  # [S, run]
    fresh = ~_in_sorted(keys, cand.ravel()).reshape(cand.shape)
    take = fresh & (np.cumsum(fresh, axis=1) <= (minimum - held[short])[:, None])
    return np.sort(np.concatenate([keys, cand[take]]))


def timestamps(rng, users: np.ndarray, num_users: int, start_time: int, span_days: float) -> np.ndarray:
    """``[m]`` int64 seconds: user ``u`` joins uniformly in the first half of the span and
    is active until its end; each interaction is uniform over that window."""
    span = span_days * SECONDS_PER_DAY
    joined = rng.random(num_users) * (span / 2)
    t = joined[users] + rng.random(len(users)) * (span - joined[users])
    return start_time + np.floor(t).astype(np.int64)


def ratings_from_affinity(rng, affinity: np.ndarray) -> np.ndarray:
    """``[m]`` float64 in 1..5: ``3.5 + z + 0.7 N(0, 1)`` rounded, ``z`` the standardized affinity."""
    std = affinity.std()
    z = (affinity - affinity.mean()) / (std if std > 0 else 1.0)
    return np.clip(np.round(3.5 + z + 0.7 * rng.standard_normal(len(affinity))), 1, 5)


# --- features ----------------------------------------------------------------------------------


def _noisy_topics(rng, topics: np.ndarray, num_topics: int, noise: float) -> np.ndarray:
    """``topics`` with each entry replaced by a uniform random topic with probability ``noise``."""
    flip = rng.random(len(topics)) < noise
    return np.where(flip, rng.integers(num_topics, size=len(topics)), topics)


def _projection_score(rng, vectors: np.ndarray) -> np.ndarray:
    """``[n]``: each row's projection on one random direction, standardized (mean 0, std 1)."""
    x = vectors @ unit_vectors(rng, 1, vectors.shape[1])[0]
    std = x.std()
    return (x - x.mean()) / (std if std > 0 else 1.0)


def user_table(rng, user_factors: np.ndarray, topic_probs: np.ndarray, noise: float) -> pd.DataFrame:
    """Users' features, indexed by user_id: ``top_genre`` (str) and ``age`` (float, years)."""
    num_users, num_topics = topic_probs.shape
    top = _noisy_topics(rng, topic_probs.argmax(axis=1), num_topics, noise)
    z = _projection_score(rng, user_factors)
    age = np.clip(np.round(38 + 8 * z + 6 * rng.standard_normal(num_users)), 16, 80)
    return pd.DataFrame(
        {"top_genre": genre_name(top), "age": age.astype(np.float64)},
        index=pd.Index(np.arange(num_users, dtype=np.int64), name="user_id"),
    )


def related_topics(centroids: np.ndarray, count: int) -> np.ndarray:
    """``[K, count]``: for each topic, the ``count`` other topics with the nearest centroids."""
    sim = centroids @ centroids.T
    np.fill_diagonal(sim, -np.inf)
    return np.argsort(-sim, axis=1, kind="stable")[:, :count]


def genre_strings(rng, item_topic: np.ndarray, centroids: np.ndarray, noise: float) -> np.ndarray:
    """``[N]`` object array of ``|``-joined tags: the (noisy) own topic, then 0-2 related topics."""
    num_topics = len(centroids)
    n_extra = min(MAX_EXTRA_GENRES, num_topics - 1)
    first = _noisy_topics(rng, item_topic, num_topics, noise)
    tags = np.full((len(item_topic), 1 + MAX_EXTRA_GENRES), -1, dtype=np.int64)
    tags[:, 0] = first
    if n_extra > 0:
        related = related_topics(centroids, n_extra)[item_topic]  # [N, n_extra]
        keep = np.arange(n_extra) < rng.integers(0, n_extra + 1, size=len(item_topic))[:, None]
        # A noisy first tag may equal a related one; a tag is listed once.
        keep &= related != first[:, None]
        tags[:, 1 : 1 + n_extra] = np.where(keep, related, -1)
    # Few distinct tag tuples exist: number each tuple (base K + 1 digits, -1 -> 0), build each
    # tuple's string once, then index.
    code = ((tags + 1) * (num_topics + 1) ** np.arange(tags.shape[1])[::-1]).sum(axis=1)
    combos = _sorted_unique(code)
    strings = []
    for c in combos.tolist():
        digits = [(c // (num_topics + 1) ** p) % (num_topics + 1) for p in range(tags.shape[1] - 1, -1, -1)]
        strings.append(MULTI_VALUE_SEPARATOR.join(genre_name(d - 1) for d in digits if d > 0))
    return np.array(strings, dtype=object)[np.searchsorted(combos, code)]


def item_table(rng, item_topic: np.ndarray, centroids: np.ndarray, noise: float) -> pd.DataFrame:
    """Items' features, indexed by item_id: ``genres`` (``|``-joined str) and ``release_year`` (float)."""
    genres = genre_strings(rng, item_topic, centroids, noise)
    era = _projection_score(rng, centroids)[item_topic]
    year = np.clip(np.round(2005 + 6 * era + 4 * rng.standard_normal(len(item_topic))), 1950, 2024)
    return pd.DataFrame(
        {"genres": genres, "release_year": year.astype(np.float64)},
        index=pd.Index(np.arange(len(item_topic), dtype=np.int64), name="item_id"),
    )


# --- entry points ------------------------------------------------------------------------------


def generate_synthetic(
    num_users: int = 5_000,
    num_items: int = 2_000,
    num_interactions: int = 100_000,
    dim: int = 32,
    num_topics: int = 20,
    zipf_exponent: float = 1.0,
    temperature: float = 0.25,
    user_noise: float = 1.0,
    feature_noise: float = 0.2,
    min_user_interactions: int = 5,
    ratings: bool = True,
    start_time: int = 1_577_836_800,
    span_days: float = 730.0,
    seed: int = 0,
) -> SyntheticWorld:
    """Generate the data set and keep the planted structure; see the module docstring.

    ``temperature``: lower concentrates users on fewer topics (> 0). ``user_noise``:
    how far users' factors stray from their home topic (>= 0). ``feature_noise``: the
    probability that a topic-valued feature is replaced by a random topic (0..1).
    """
    num_users = _check_int("num_users", num_users, 1)
    num_items = _check_int("num_items", num_items, 1)
    dim = _check_int("dim", dim, 1)
    num_topics = _check_int("num_topics", num_topics, 1)
    min_user_interactions = _check_int("min_user_interactions", min_user_interactions, 1)
    if min_user_interactions > num_items:
        raise ValueError(
            f"min_user_interactions={min_user_interactions}: expected at most num_items={num_items} "
            "(a user's interactions are distinct items)"
        )
    low, high = num_users * min_user_interactions, num_users * num_items
    num_interactions = _check_int("num_interactions", num_interactions, 1)
    if not low <= num_interactions <= high:
        raise ValueError(
            f"num_interactions={num_interactions}: expected between num_users * min_user_interactions = {low} "
            f"and num_users * num_items = {high}"
        )
    zipf_exponent = _check_float("zipf_exponent", zipf_exponent, 0.0)
    temperature = _check_float("temperature", temperature, 0.0, low_open=True)
    user_noise = _check_float("user_noise", user_noise, 0.0)
    feature_noise = _check_float("feature_noise", feature_noise, 0.0, 1.0)
    span_days = _check_float("span_days", span_days, 0.0, low_open=True)
    start_time = _check_int("start_time", start_time, 0)
    seed = _check_int("seed", seed, 0)
    if not isinstance(ratings, bool):
        raise ValueError(f"ratings={ratings!r}: expected true or false")

    # One independent stream per stage: changing how one stage draws leaves the others as they were.
    streams = [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(7)]
    world_rng, pair_rng, time_rng, rating_rng, user_rng, item_rng, count_rng = streams

    centroids = unit_vectors(world_rng, num_topics, dim)
    item_topic = world_rng.integers(num_topics, size=num_items)
    item_weight = zipf_weights(world_rng, num_items, zipf_exponent)
    catalogue = TopicCatalogue.build(item_topic, item_weight, num_topics)
    home = world_rng.choice(num_topics, size=num_users, p=catalogue.mass / catalogue.mass.sum())
    user_factors = centroids[home] + user_noise * world_rng.standard_normal((num_users, dim)) / np.sqrt(dim)
    counts = interactions_per_user(count_rng, num_users, num_interactions, min_user_interactions, num_items)
    bias = topic_bias(user_factors, centroids, catalogue.mass, temperature, counts.astype(np.float64))
    probs = topic_probabilities(user_factors, centroids, bias, temperature)

    keys = draw_unique_pairs(pair_rng, counts, probs, catalogue, num_items)
    keys = top_up(pair_rng, keys, min_user_interactions, num_users, num_items)
    users, items = keys // num_items, keys % num_items

    ts = timestamps(time_rng, users, num_users, start_time, span_days)
    # By user, then time: one integer argsort (np.lexsort is ~10x slower here).
    order = np.argsort(users * (int(span_days * SECONDS_PER_DAY) + 1) + (ts - start_time), kind="stable")
    users, items, ts = users[order], items[order], ts[order]
    if ratings:
        affinity = (user_factors @ centroids.T)[users, item_topic[items]]
        rating = ratings_from_affinity(rating_rng, affinity)
    else:
        rating = np.full(len(users), np.nan)
    interactions = pd.DataFrame({"user_id": users, "item_id": items, "timestamp": ts, "rating": rating})

    return SyntheticWorld(
        centroids=centroids,
        user_factors=user_factors,
        user_home=home.astype(np.int64),
        topic_probs=probs,
        item_topic=item_topic.astype(np.int64),
        item_weight=item_weight,
        user_draws=counts,
        shortfall=num_interactions - len(keys),
        interactions=interactions,
        users=user_table(user_rng, user_factors, probs, feature_noise),
        items=item_table(item_rng, item_topic, centroids, feature_noise),
    )


def load_synthetic(**settings) -> InteractionData:
    """The synthetic data set in the platform schema (``name="synthetic"``); ``settings``
    are :func:`generate_synthetic`'s arguments (``conf/data/synthetic.yaml``'s ``source``).

    Interactions: user_id, item_id (int64), timestamp (int64 s), rating (1-5, or NaN
    with ``ratings=False``). Users: top_genre (str), age. Items: genres (``|``-joined),
    release_year. The generative process: the module docstring.
    """
    return generate_synthetic(**settings).to_interaction_data()
