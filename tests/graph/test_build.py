"""The item-item graph against a case computed by hand, and its sparse pieces against dense references."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from msr.graph.build import (
    build_item_graph,
    cosine_topk,
    denoise,
    jaccard_topk,
    propagate,
    sym_normalise,
)

# cosines: (0,1) 0.8, (0,2) 0, (0,3) -1, (1,2) 0.6, (1,3) -0.8, (2,3) 0
EMBEDDINGS = np.array([[1, 0], [0.8, 0.6], [0, 1], [-1, 0]], dtype=np.float32) * np.array([[2], [1], [3], [1]])
# item user sets: 0 {u0, u2}, 1 {u0, u1, u2}, 2 {u1, u2}, 3 {u3}
INCIDENCE = sp.csr_matrix(np.array([[1, 1, 0, 0], [0, 1, 1, 0], [1, 1, 1, 0], [0, 0, 0, 1]], dtype=np.float32))


def test_graph_matches_the_hand_computed_case() -> None:
    # knn_k 2: each item and its nearest other item; pure 0.7 keeps 0-1 and 1-0 (0.8), drops 2-1 (0.6)
    # and 3-2 (0). knn_jac 1: 0 -> 1 (2/3), 1 -> 0 (2/3, tied with 2 at 2/3: the lower id wins), 2 -> 1
    # (2/3); item 3 shares no user. M rows: {0: 1, 1: 5/3}, {0: 5/3, 1: 1}, {1: 2/3, 2: 1}, {3: 1}.
    m = build_item_graph(EMBEDDINGS, INCIDENCE, knn_k=2, pure=0.7, knn_jac=1)
    d = np.array([8 / 3, 8 / 3, 5 / 3, 1])
    expected = np.array([[1, 5 / 3, 0, 0], [5 / 3, 1, 0, 0], [0, 2 / 3, 1, 0], [0, 0, 0, 1]]) / np.sqrt(np.outer(d, d))
    assert sp.issparse(m)
    np.testing.assert_allclose(m.toarray(), expected, rtol=1e-6)
    np.testing.assert_allclose(expected[0, :2], [3 / 8, 5 / 8])


def test_threshold_and_jaccard_pieces() -> None:
    knn = cosine_topk(EMBEDDINGS, 2)
    np.testing.assert_allclose(knn.toarray(), [[1, 0.8, 0, 0], [0.8, 1, 0, 0], [0, 0.6, 1, 0], [0, 0, 0, 1]], atol=1e-6)
    assert knn[3, 2] == 0 and knn.nnz == 8  # item 3's second neighbour (cosine 0) is kept, as a stored zero
    assert denoise(knn, 0.7).nnz == 6
    assert denoise(knn, 0.5).toarray()[2, 1] == 1
    jac = jaccard_topk(INCIDENCE, 3).toarray()
    np.testing.assert_allclose(jac, [[0, 2 / 3, 1 / 3, 0], [2 / 3, 0, 2 / 3, 0], [1 / 3, 2 / 3, 0, 0], [0, 0, 0, 0]])
    assert jaccard_topk(INCIDENCE, 0).nnz == 0


def test_blocked_cosine_equals_the_dense_top_k() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(150, 12)).astype(np.float32)
    x[7] = x[8] = x[9]
    dense = cosine_topk(x, 5)
    blocked = cosine_topk(x, 5, block_bytes=4 * 150 * 7)  # 7 rows per block
    assert (np.diff(dense.indptr) == 5).all() and (dense.indices == blocked.indices).all()
    np.testing.assert_allclose(dense.data, blocked.data, atol=1e-6)  # BLAS may round a block differently
    assert set(dense[7].indices) >= {7, 8, 9}
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    sims = unit @ unit.T
    for row in range(150):
        np.testing.assert_allclose(np.sort(dense[row].data)[::-1], np.sort(sims[row])[::-1][:5], atol=1e-5)
    # four identical items, two neighbours each: the tie is broken by the lower id, whatever the row
    assert [cosine_topk(np.ones((4, 3), np.float32), 2)[r].indices.tolist() for r in range(4)] == [[0, 1]] * 4


def test_jaccard_matches_a_dense_reference() -> None:
    incidence = sp.random(60, 90, density=0.06, random_state=1, format="csr")
    a = (incidence.toarray() > 0).astype(float)
    shared = a.T @ a
    degree = a.sum(axis=0)
    union = degree[:, None] + degree[None, :] - shared
    jac = np.divide(shared, union, out=np.zeros_like(shared), where=union > 0)
    np.fill_diagonal(jac, 0)
    got = jaccard_topk(incidence, 4)
    for row in range(90):
        top = np.sort(jac[row][jac[row] > 0])[::-1][:4]
        np.testing.assert_allclose(np.sort(got[row].data)[::-1], top, rtol=1e-6)


def test_normalisation_and_propagation() -> None:
    m = sp.csr_matrix(np.array([[0, 2, 0], [1, 1, 0], [0, 0, 0]], dtype=np.float32))
    n = sym_normalise(m).toarray()
    d = np.array([2, 2, 1])
    np.testing.assert_allclose(n[:2], (m.toarray() / np.sqrt(np.outer(d, d)))[:2])
    assert not n[2].any()  # an item without edges keeps only its own embedding in e + M e
    e = np.arange(6, dtype=np.float32).reshape(3, 2)
    np.testing.assert_allclose(propagate(sp.csr_matrix(n), e), e + n @ e)
