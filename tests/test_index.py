"""The item index (twotower.index): exact / HNSW / IVF-PQ over inner product,
raw ids, atomic save / load, recall against exact search."""

from __future__ import annotations

import json

import faiss
import numpy as np
import pytest
import torch

from twotower.index import (
    FILES,
    FORMAT_VERSION,
    ItemIndex,
    ann_quality,
    exact_topk,
    recall_against,
)

# Small enough to build in well under a second each.
SMALL = {"exact": {"kind": "exact"}, "hnsw": {"kind": "hnsw", "M": 16, "ef_construction": 64}, "ivfpq": {"kind": "ivfpq", "nlist": 8, "m": 4, "nbits": 6, "nprobe": 4}}


@pytest.fixture(autouse=True)
def _one_thread():
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


def random_vectors(n: int, d: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)


def clustered(n: int, d: int, clusters: int = 20, seed: int = 0, noise: float = 0.3) -> np.ndarray:
    """Normalized Gaussian-mixture vectors (learned embeddings are clustered, not isotropic)."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((clusters, d))
    x = centers[rng.integers(0, clusters, n)] + noise * rng.standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def items() -> np.ndarray:
    return clustered(2560, 16, seed=1)  # >= 39 * max(8, 2**6) = 2496, for the small IVF-PQ


@pytest.fixture(scope="module")
def queries() -> np.ndarray:
    return clustered(50, 16, seed=2)


# ----------------------------------------------------------------------------- exact search


def test_exact_index_equals_brute_force():
    items, queries = random_vectors(500, 12, 0), random_vectors(40, 12, 1)
    ids = list(range(1000, 1500))
    index = ItemIndex(items, ids, {"kind": "exact"})
    scores, item_ids, positions = index.search(queries, 10)
    full = queries @ items.T
    expected_pos = np.argsort(-full, axis=1)[:, :10]
    np.testing.assert_array_equal(positions, expected_pos)
    np.testing.assert_allclose(scores, np.take_along_axis(full, expected_pos, axis=1), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(item_ids, np.asarray(ids)[expected_pos])
    ref_scores, ref_pos = exact_topk(torch.from_numpy(queries), torch.from_numpy(items), 10, chunk_size=7)
    np.testing.assert_array_equal(ref_pos.numpy(), expected_pos)
    np.testing.assert_allclose(ref_scores.numpy(), scores, rtol=1e-5, atol=1e-5)


def test_raw_string_ids_and_torch_input():
    items = torch.from_numpy(random_vectors(30, 8))
    ids = [f"movie-{i}" for i in range(30)]
    index = ItemIndex(items.double(), ids)  # config None: exact; float64 torch is converted
    assert index.kind == "exact" and len(index) == 30
    _, item_ids, positions = index.search(items[:3], 1)
    assert item_ids.ravel().tolist() == [ids[p] for p in positions.ravel()]
    assert all(isinstance(x, str) for x in item_ids.ravel().tolist())


def test_k_larger_than_catalogue_is_clipped():
    index = ItemIndex(random_vectors(5, 4), [3, 1, 4, 15, 9])
    scores, item_ids, positions = index.search(random_vectors(2, 4, 1), 50)
    assert scores.shape == item_ids.shape == positions.shape == (2, 5)
    assert sorted(item_ids[0].tolist()) == [1, 3, 4, 9, 15]


@pytest.mark.parametrize("kind", sorted(SMALL))
def test_batched_search_equals_unbatched(kind, items, queries):
    index = ItemIndex(items, np.arange(len(items)), SMALL[kind])
    full = index.search(queries, 10, batch_size=4096)
    batched = index.search(queries, 10, batch_size=7)
    for a, b in zip(full, batched):
        np.testing.assert_array_equal(a, b)


def test_empty_query_batch():
    index = ItemIndex(random_vectors(5, 4), list(range(5)))
    scores, item_ids, positions = index.search(np.zeros((0, 4), np.float32), 3)
    assert scores.shape == item_ids.shape == positions.shape == (0, 3)


# ----------------------------------------------------------------------------- ANN kinds


def test_hnsw_recall_against_exact_on_clustered_vectors():
    items, queries = clustered(2000, 32, seed=3), clustered(200, 32, seed=4)
    index = ItemIndex(items, list(range(2000)), {"kind": "hnsw"})  # defaults M=32, ef 200 / 128
    quality = ann_quality(index, items, queries, 10)
    assert quality["recall@k"] > 0.9 and quality["recall@10"] == quality["recall@k"] and quality["k"] == 10
    assert quality["qps"] > 0 and quality["queries"] == 200
    exact = ItemIndex(items, list(range(2000)), "exact")
    assert ann_quality(index, exact, queries, 10)["recall@k"] == pytest.approx(quality["recall@k"])
    assert ann_quality(exact, items, queries, 10)["recall@k"] == 1.0
    assert index.index.hnsw.efSearch == 128
    index.set_search_params(ef_search=16)
    assert index.index.hnsw.efSearch == 16 and index.params["ef_search"] == 16


def test_hnsw_finds_the_best_inner_products_when_norms_differ(tmp_path):
    """Unit vectors plus a popularity-prior-like coordinate (item norms from 1 to about 5, the
    query's weight up to 30): HNSW searches lifted vectors by L2, which keeps its recall, and
    returns inner products (the lifting by hand: |q - x|^2 = |q|^2 + M^2 - 2 q.x)."""
    from twotower.index import inner_products_from_distances, lift_items, lift_queries

    rng = np.random.default_rng(0)
    items = clustered(3000, 32, seed=5)
    items = np.concatenate([items, np.log1p(rng.pareto(1.0, size=(3000, 1)) * 10).clip(max=5)], axis=1).astype(np.float32)
    queries = np.concatenate([clustered(300, 32, seed=6), rng.choice([1.0, 3.0, 30.0], size=(300, 1))], axis=1).astype(np.float32)
    index = ItemIndex(items, list(range(3000)), {"kind": "hnsw"})
    quality = ann_quality(index, items, queries, 100)
    assert quality["recall@k"] > 0.98
    scores, _, positions = index.search(queries, 10)
    np.testing.assert_allclose(scores, np.take_along_axis(queries @ items.T, positions, axis=1), rtol=1e-4, atol=1e-3)
    loaded = ItemIndex.load(index.save(tmp_path / "idx"))
    assert loaded.dim == 33 and loaded.max_norm == index.max_norm
    assert np.array_equal(loaded.search(queries, 10)[2], positions)
    manifest = json.loads((tmp_path / "idx" / "manifest.json").read_text())
    (tmp_path / "idx" / "manifest.json").write_text(json.dumps({**manifest, "max_norm": "big"}))
    with pytest.raises(ValueError, match="manifest max_norm='big'; expected the largest item norm, a number >= 0"):
        ItemIndex.load(tmp_path / "idx")
    x, q, max_norm = np.array([[3.0, 4.0], [1.0, 0.0]]), np.array([[2.0, 1.0]]), 5.0
    lifted = lift_items(x, max_norm)
    assert lifted[:, 2].tolist() == pytest.approx([0.0, 24**0.5]) and np.linalg.norm(lifted, axis=1) == pytest.approx([5.0, 5.0])
    distances = ((lift_queries(q)[:, None, :] - lifted[None]) ** 2).sum(-1)
    assert inner_products_from_distances(distances, q, max_norm).tolist()[0] == pytest.approx([10.0, 2.0])


def test_ivfpq_builds_and_searches(items, queries):
    index = ItemIndex(items, np.arange(len(items)) * 10, SMALL["ivfpq"])
    assert isinstance(index.index, faiss.IndexIVFPQ) and index.index.is_trained
    assert index.index.metric_type == faiss.METRIC_INNER_PRODUCT and index.index.nprobe == 4
    scores, item_ids, positions = index.search(queries, 10)
    assert (positions >= 0).all() and (item_ids == positions * 10).all()
    assert (np.diff(scores, axis=1) <= 1e-6).all()  # best first
    assert ann_quality(index, items, queries, 10)["recall@k"] > 0.2  # compressed codes (0.39 here), but chance is 10 / 2560


def test_ivfpq_refuses_too_few_points():
    items = clustered(1000, 16)
    with pytest.raises(ValueError, match=r"too few.*39 \* max\(nlist, 2\*\*nbits\) = 39936.*nlist <= 25"):
        ItemIndex(items, list(range(1000)), {"kind": "ivfpq", "nlist": 1024, "m": 4})
    with pytest.raises(ValueError, match="must divide the dimension 16"):
        ItemIndex(clustered(3000, 16), list(range(3000)), {"kind": "ivfpq", "nlist": 8, "m": 5, "nbits": 4})


def test_missing_results_are_marked():
    # Clustered vectors, nprobe=1 over 64 lists: some queries see fewer than k items.
    items = clustered(39 * 64, 8, clusters=64, seed=5, noise=0.05)
    index = ItemIndex(items, [f"i{n}" for n in range(len(items))], {"kind": "ivfpq", "nlist": 64, "m": 2, "nbits": 4, "nprobe": 1})
    scores, item_ids, positions = index.search(clustered(20, 8, clusters=64, seed=6), 200)
    missing = positions < 0
    assert missing.any()
    assert np.isneginf(scores[missing]).all() and (item_ids[missing] == "").all()
    assert (item_ids[~missing] != "").all()
    assert recall_against(positions, np.where(missing, 0, positions)) < 1.0  # -1 never counts as a hit


# ----------------------------------------------------------------------------- save / load


@pytest.mark.parametrize("kind", sorted(SMALL))
def test_save_load_round_trip(kind, items, queries, tmp_path):
    ids = [f"item{n}" for n in range(len(items))] if kind == "hnsw" else list(range(len(items)))
    index = ItemIndex(items, ids, SMALL[kind])
    source = {"model": {"name": "two_tower", "embedding_dim": 16}, "checkpoint": tmp_path / "last.ckpt"}
    out = index.save(tmp_path / "idx", source=source)
    assert sorted(p.name for p in out.iterdir()) == sorted(FILES)
    assert [p.name for p in tmp_path.iterdir()] == ["idx"]  # no temporary folder left
    loaded = ItemIndex.load(out)
    assert loaded.kind == kind and loaded.params == index.params and len(loaded) == len(index) and loaded.dim == 16
    assert loaded.source == {"model": {"name": "two_tower", "embedding_dim": 16}, "checkpoint": str(tmp_path / "last.ckpt")}
    for a, b in zip(index.search(queries, 10), loaded.search(queries, 10)):
        np.testing.assert_array_equal(a, b)
    assert loaded.search(queries, 1)[1].dtype == index.ids.dtype
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["version"] == FORMAT_VERSION and manifest["count"] == len(items) and manifest["dimension"] == 16


def test_save_refuses_to_clobber(tmp_path):
    index = ItemIndex(random_vectors(10, 4), list(range(10)))
    index.save(tmp_path / "idx")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        index.save(tmp_path / "idx")
    other = ItemIndex(random_vectors(12, 4), list(range(12)))
    other.save(tmp_path / "idx", overwrite=True)
    assert len(ItemIndex.load(tmp_path / "idx")) == 12
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not an item index"):
        index.save(tmp_path / "notes", overwrite=True)
    assert (tmp_path / "notes" / "keep.txt").read_text() == "mine"
    with pytest.raises(TypeError, match="JSON-serializable"):
        index.save(tmp_path / "idx2", source={"bad": object()})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx", "notes"]  # the failed save left nothing


def test_interrupted_save_leaves_nothing(tmp_path, monkeypatch):
    index = ItemIndex(random_vectors(10, 4), list(range(10)))

    def boom(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(faiss, "write_index", boom)
    with pytest.raises(KeyboardInterrupt):
        index.save(tmp_path / "idx")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", FILES)
def test_load_refuses_a_missing_file(name, tmp_path):
    out = ItemIndex(random_vectors(10, 4), list(range(10))).save(tmp_path / "idx")
    (out / name).unlink()
    with pytest.raises(FileNotFoundError, match=f"missing {name}"):
        ItemIndex.load(out)


def test_load_refuses_another_version(tmp_path):
    out = ItemIndex(random_vectors(10, 4), list(range(10))).save(tmp_path / "idx")
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["version"] = FORMAT_VERSION + 1
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=f"version {FORMAT_VERSION + 1} is not supported"):
        ItemIndex.load(out)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ItemIndex.load(tmp_path / "nowhere")


def test_load_refuses_inconsistent_files(tmp_path):
    out = ItemIndex(random_vectors(10, 4), list(range(10))).save(tmp_path / "idx")
    (out / "ids.json").write_text(json.dumps(list(range(9))))
    with pytest.raises(ValueError, match="9 ids for 10 vectors"):
        ItemIndex.load(out)


# ----------------------------------------------------------------------------- errors


def test_bad_inputs_are_refused():
    items = random_vectors(20, 6)
    with pytest.raises(ValueError, match=r"unknown index kind 'annoy'.*\['exact', 'hnsw', 'ivfpq'\]"):
        ItemIndex(items, list(range(20)), {"kind": "annoy"})
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) \['efSearch'\]"):
        ItemIndex(items, list(range(20)), {"kind": "hnsw", "efSearch": 10})
    with pytest.raises(ValueError, match="positive integer"):
        ItemIndex(items, list(range(20)), {"kind": "hnsw", "M": 0})
    bad = items.copy()
    bad[3, 2] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite.*first rows: \\[3\\]"):
        ItemIndex(bad, list(range(20)))
    with pytest.raises(ValueError, match="2-D"):
        ItemIndex(items[0], list(range(6)))
    with pytest.raises(ValueError, match="19 ids for 20"):
        ItemIndex(items, list(range(19)))
    with pytest.raises(ValueError, match="more than once"):
        ItemIndex(items, [0] * 20)
    with pytest.raises(TypeError, match="every raw id"):
        ItemIndex(items, [1] * 10 + ["a"] * 10)
    index = ItemIndex(items, list(range(20)))
    with pytest.raises(ValueError, match="dimension mismatch.*dimension 5.*dimension 6"):
        index.search(random_vectors(3, 5), 2)
    queries = random_vectors(3, 6)
    queries[1, 0] = np.inf
    with pytest.raises(ValueError, match="queries: 1 row"):
        index.search(queries, 2)
    for k in (0, -1, 2.5):
        with pytest.raises(ValueError, match="k="):
            index.search(items[:2], k)
    with pytest.raises(ValueError, match="cannot be set at search time"):
        index.set_search_params(nprobe=3)
