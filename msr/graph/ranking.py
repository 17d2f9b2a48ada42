"""Full-ranking evaluation: every example's target against every item, its history masked.

Scores are computed for a block of examples at a time (block x items), so no users x items
matrix is ever held. Ties rank the target below the items it ties with (pessimistic), as in
msr.metrics. With one target per example, Recall@K is the hit rate at K and NDCG@K is
1 / log2(rank + 1) with the 1-based rank. A non-finite score (a diverged model) is an error, not a
rank: NaN compares false with everything, so it would rank the target first and make the model
look perfect.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

_BLOCK_CELLS = 1 << 23


class NonFiniteScoresError(ValueError):
    """Scores with NaN or inf: the towers diverged (typically a learning rate too high)."""


def target_ranks(user_vecs: torch.Tensor, item_vecs: torch.Tensor, targets: np.ndarray,
                 history: sp.csr_matrix) -> np.ndarray:
    """1-based rank of each example's target among all items not in its history (the target itself
    is never masked, even when it also appears in the history); raises NonFiniteScoresError when
    any score is NaN or infinite."""
    n_items = item_vecs.shape[0]
    block = max(1, _BLOCK_CELLS // max(n_items, 1))
    ranks = np.empty(len(targets), dtype=np.int64)
    targets_t = torch.from_numpy(np.array(targets, dtype=np.int64)).to(item_vecs.device)
    for lo in range(0, len(targets), block):
        hi = min(lo + block, len(targets))
        scores = user_vecs[lo:hi] @ item_vecs.T
        finite = torch.isfinite(scores).all(dim=1)
        if not bool(finite.all()):
            bad = lo + int(torch.nonzero(~finite)[0, 0])
            raise NonFiniteScoresError(f"NaN or infinite scores (the first at example {bad}): the model diverged; "
                                       "train again with a lower learning_rate")
        mask = history[lo:hi].tocoo()
        keep = mask.col != targets[lo + mask.row]
        rows = torch.as_tensor(mask.row[keep], dtype=torch.long, device=scores.device)
        cols = torch.as_tensor(mask.col[keep], dtype=torch.long, device=scores.device)
        scores[rows, cols] = -torch.inf
        local = torch.arange(hi - lo, device=scores.device)
        target_scores = scores[local, targets_t[lo:hi]].unsqueeze(1)
        ranks[lo:hi] = (scores >= target_scores).sum(dim=1).cpu().numpy()
    return ranks


def recall_ndcg(ranks: np.ndarray, ks: list[int]) -> dict[str, float]:
    """Mean Recall@K and NDCG@K over examples with one target each (1-based ranks), plus the
    example count; 0.0 for no examples."""
    ranks = np.asarray(ranks)
    out: dict[str, float] = {"examples": len(ranks)}
    for k in ks:
        hit = ranks <= k
        out[f"recall@{k}"] = float(hit.mean()) if len(ranks) else 0.0
        out[f"ndcg@{k}"] = float(np.where(hit, 1.0 / np.log2(ranks + 1), 0.0).mean()) if len(ranks) else 0.0
    return out
