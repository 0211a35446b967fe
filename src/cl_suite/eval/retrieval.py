"""Label-based image retrieval on frozen features, as RINCE evaluates it (Hoffmann et al., AAAI 2022).

Queries are the test split, the database is the labelled train split, similarity is the cosine of the
L2-normalised features, and a database item is relevant when it has the query's label (fine or coarse).

* ``R@k``: RINCE's recall@K, the fraction of queries with at least one relevant item among the top K
  (``retrieve`` in ``retrieval.py`` of the RINCE code, the number its README's commands report;
  torchmetrics calls this hit rate). torchmetrics' ``RetrievalRecall`` divides by all relevant items of
  the database instead, a different number, so it is not used here.
* ``rince_AP``: the AP of RINCE's optional ``--precision_recall`` (``precision_recall`` there): precision
  P_i and recall R_i of the top i are first averaged over the queries, for every i = 1 .. N of the
  database, then AP = sum_{i=2..N} (R_i - R_{i-1}) P_i (the code's sum starts at i = 2). It is not the
  mean of the queries' APs; a query without relevant items has recall 0 (the code would divide by 0).
* ``mAP``: the usual mean over queries of each query's average precision over the full ranking
  (torchmetrics ``RetrievalMAP``); not in the RINCE code.
* ``P@k``: mean fraction of relevant items among the top k (torchmetrics ``RetrievalPrecision``).

torchmetrics treats a non-positive score as "not retrieved" (its target is zeroed), which would silently
drop relevant items with a negative cosine; the scores are shifted to be positive first.

All numbers are percentages, like the accuracies of the other protocols.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


@torch.no_grad()
def retrieval_metrics(query_features: torch.Tensor, query_labels: torch.Tensor, database_features: torch.Tensor,
                      database_labels: torch.Tensor, ks: tuple[int, ...] = (1, 5, 10, 20),
                      chunk_size: int = 256) -> dict[str, float]:
    """Return ``{"mAP", "rince_AP", "P@k", "R@k" for k in ks}`` in percent. Database items labelled -1 are
    dropped.

    Queries are processed in chunks: the (queries x database) score matrix of a CIFAR test set against
    its train set would not fit in memory at once. Each chunk feeds torchmetrics with its own query ids
    and the chunk means are combined weighted by chunk size, which equals the global mean over queries.
    """
    # Imported here: torchmetrics costs ~1.5 s at import, and only evaluate.py's retrieval protocol needs it.
    from torchmetrics.retrieval import RetrievalMAP, RetrievalPrecision

    if not ks or min(ks) < 1:
        raise ValueError(f"evaluation.retrieval.ks must be a non-empty list of integers >= 1, got {list(ks)}")
    keep = database_labels >= 0
    database = F.normalize(database_features[keep].float(), dim=1)
    database_labels = database_labels[keep]
    if len(database) == 0 or len(query_features) == 0:
        raise ValueError("retrieval needs a non-empty labelled database (train split) and query set (test split)")
    max_k = min(max(ks), len(database))
    sums = {"mAP": 0.0, **{f"P@{k}": 0.0 for k in ks}, **{f"R@{k}": 0.0 for k in ks}}
    # Sums over queries of precision and recall of the top i, i = 1 .. N (float64: N terms of a sum)
    precision_sums = torch.zeros(len(database), dtype=torch.float64, device=database.device)
    recall_sums = torch.zeros_like(precision_sums)
    ranks = torch.arange(1, len(database) + 1, dtype=torch.float64, device=database.device)
    queries = F.normalize(query_features.float(), dim=1)
    for start in range(0, len(queries), chunk_size):
        q, q_labels = queries[start:start + chunk_size], query_labels[start:start + chunk_size]
        n = len(q)
        # torchmetrics (1.9) counts an item with a score <= 0 as not relevant, whatever its label;
        # cosines can be negative, so shift them into [1, 3] (same ranking, every item counted).
        scores = q @ database.T + 2.0  # (n, N_db)
        relevant = q_labels[:, None] == database_labels[None, :]
        query_ids = torch.arange(n, device=q.device)[:, None].expand_as(scores)
        ap = RetrievalMAP(empty_target_action="neg", sync_on_compute=False)
        sums["mAP"] += n * ap(scores.flatten(), relevant.flatten(), indexes=query_ids.flatten()).item()
        hits = relevant.gather(1, scores.argsort(dim=1, descending=True)).double().cumsum(dim=1)  # in the top i
        precision_sums += (hits / ranks).sum(dim=0)
        recall_sums += (hits / hits[:, -1:].clamp(min=1)).sum(dim=0)
        # Precision@k only needs each query's top max_k items (it survives truncation; recall would not).
        top_scores, top_idx = scores.topk(max_k, dim=1)
        top_relevant = relevant.gather(1, top_idx)
        top_ids = query_ids[:, :max_k]
        for k in ks:
            precision = RetrievalPrecision(top_k=k, empty_target_action="neg", sync_on_compute=False)
            sums[f"P@{k}"] += n * precision(top_scores.flatten(), top_relevant.flatten(),
                                            indexes=top_ids.flatten()).item()
            sums[f"R@{k}"] += top_relevant[:, :k].any(dim=1).sum().item()
    precision, recall = precision_sums / len(queries), recall_sums / len(queries)
    sums["rince_AP"] = ((recall[1:] - recall[:-1]) * precision[1:]).sum().item() * len(queries)
    return {key: 100.0 * value / len(queries) for key, value in sums.items()}
