"""The item-item graph of MLLMRec, sparse from end to end.

M = denoised + Jaccard, symmetric-normalised D^-1/2 M D^-1/2 (D: row sums), where
- denoised: each item's top-`knn_k` cosine neighbours (itself included, as in the reference
  code), each kept as an edge of weight 1 when its cosine is >= `pure`, dropped otherwise;
- Jaccard: |U_i & U_j| / |U_i | U_j| over the items' training user sets, the diagonal removed,
  each item's top-`knn_jac` neighbours kept with their Jaccard weights.
The reference code builds dense items x items and users x items matrices; here cosines are
computed in row blocks that never hold more than ~`block_bytes`, and the Jaccard overlaps come
from the sparse product of the incidence matrix with itself. Ties in a top-k are broken by the
lower item code, so the graph is a pure function of its inputs.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

_BLOCK_BYTES = 64 << 20


def _topk_rows(rows: np.ndarray, cols: np.ndarray, values: np.ndarray, k: int, shape: tuple[int, int]) -> sp.csr_matrix:
    """Keep, in each row, the k largest values (ties: lower column first) of a COO triplet."""
    order = np.lexsort((cols, -values, rows))
    rows, cols, values = rows[order], cols[order], values[order]
    starts = np.searchsorted(rows, np.arange(shape[0]))
    keep = np.arange(len(rows)) - starts[rows] < k
    return sp.csr_matrix((values[keep], (rows[keep], cols[keep])), shape=shape)


def cosine_topk(embeddings: np.ndarray, k: int, block_bytes: int = _BLOCK_BYTES) -> sp.csr_matrix:
    """Each row's k most cosine-similar rows (itself included) with their cosines, items x items."""
    x = np.asarray(embeddings, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    x = x / np.where(norms > 0, norms, 1.0)
    n = len(x)
    k = min(k, n)
    block = max(1, block_bytes // (4 * max(n, 1)))
    rows, cols, values = [], [], []
    for lo in range(0, n, block):
        sims = x[lo:lo + block] @ x.T
        # exactly k per row: all values above the k-th largest, then the lowest columns equal to it
        kth = np.partition(sims, n - k, axis=1)[:, n - k:n - k + 1]
        above = sims > kth
        need = k - above.sum(axis=1, keepdims=True)
        tied = sims == kth
        r, c = np.nonzero(above | (tied & (np.cumsum(tied, axis=1, dtype=np.int32) <= need)))
        rows.append(r + lo)
        cols.append(c)
        values.append(sims[r, c])
    return _topk_rows(np.concatenate(rows), np.concatenate(cols), np.concatenate(values), k, (n, n))


def denoise(knn: sp.csr_matrix, pure: float) -> sp.csr_matrix:
    """Threshold-controlled denoising: neighbours with cosine >= pure become 1, the rest are dropped."""
    out = knn.copy()
    out.data = (out.data >= pure).astype(np.float32)
    out.eliminate_zeros()
    return out


def jaccard_topk(incidence: sp.spmatrix, k: int) -> sp.csr_matrix:
    """Topology-aware enhancement: each item's top-k Jaccard neighbours over a users x items incidence
    matrix (diagonal removed), weighted by the Jaccard index."""
    n_items = incidence.shape[1]
    if k == 0:
        return sp.csr_matrix((n_items, n_items), dtype=np.float32)
    r = sp.csr_matrix(incidence, dtype=np.float32)
    r.data[:] = 1.0
    overlap = (r.T @ r).tocoo()
    degree = np.asarray(r.sum(axis=0)).ravel()
    off = overlap.row != overlap.col
    rows, cols, shared = overlap.row[off], overlap.col[off], overlap.data[off]
    weights = (shared / (degree[rows] + degree[cols] - shared)).astype(np.float32)
    return _topk_rows(rows.astype(np.int64), cols.astype(np.int64), weights, k, (n_items, n_items))


def sym_normalise(m: sp.spmatrix) -> sp.csr_matrix:
    """D^-1/2 M D^-1/2 with D the row sums; an empty row stays empty."""
    degree = np.asarray(m.sum(axis=1)).ravel()
    inv_sqrt = np.zeros_like(degree, dtype=np.float64)
    np.divide(1.0, np.sqrt(degree), out=inv_sqrt, where=degree > 0)
    d = sp.diags(inv_sqrt.astype(np.float32))
    return sp.csr_matrix(d @ m @ d, dtype=np.float32)


def build_item_graph(embeddings: np.ndarray, incidence: sp.spmatrix, knn_k: int, pure: float,
                     knn_jac: int) -> sp.csr_matrix:
    """The normalised item-item matrix M from item embeddings and training interactions only."""
    if incidence.shape[1] != len(embeddings):
        raise ValueError(f"{len(embeddings)} item embeddings for an incidence matrix of {incidence.shape[1]} items")
    m = denoise(cosine_topk(embeddings, knn_k), pure) + jaccard_topk(incidence, knn_jac)
    return sym_normalise(m)


def propagate(graph: sp.spmatrix, embeddings: np.ndarray) -> np.ndarray:
    """One graph layer: e* = e + M e."""
    embeddings = np.asarray(embeddings, dtype=np.float32)
    return embeddings + np.asarray(graph @ embeddings, dtype=np.float32)
