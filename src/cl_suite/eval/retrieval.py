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
* ``mAP``: the usual mean over queries of each query's average precision over the full ranking,
  sum_i P_i rel_i / (number of relevant items), 0 for a query without relevant items (as torchmetrics'
  ``RetrievalMAP`` with ``empty_target_action="neg"``, which the tests compare against); not in the RINCE
  code.
* ``P@k``: mean fraction of relevant items among the top k, divided by k also when the database has
  fewer items (torchmetrics' ``RetrievalPrecision``).

All of them come from one ranking of the database per query. All numbers are percentages, like the
accuracies of the other protocols.
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
    its train set would not fit in memory at once. The sums over queries stay on the device; the numbers
    are read once at the end.
    """
    if not ks or min(ks) < 1:
        raise ValueError(f"evaluation.retrieval.ks must be a non-empty list of integers >= 1, got {list(ks)}")
    keep = database_labels >= 0
    database = F.normalize(database_features[keep].float(), dim=1)
    database_labels = database_labels[keep]
    if len(database) == 0 or len(query_features) == 0:
        raise ValueError("retrieval needs a non-empty labelled database (train split) and query set (test split)")
    n_db, device = len(database), database.device
    ranks = torch.arange(1, n_db + 1, dtype=torch.float64, device=device)
    at = torch.tensor([min(k, n_db) - 1 for k in ks], device=device)  # the k-th rank (the last, if fewer)
    k_values = torch.tensor(ks, dtype=torch.float64, device=device)
    ap_sum = torch.zeros((), dtype=torch.float64, device=device)
    precision_at_k, hit_at_k = torch.zeros(len(ks), dtype=torch.float64, device=device), torch.zeros_like(k_values)
    # Sums over queries of precision and recall of the top i, i = 1 .. N (float64: N terms of a sum)
    precision_sums, recall_sums = torch.zeros_like(ranks), torch.zeros_like(ranks)
    queries = F.normalize(query_features.float(), dim=1)
    for start in range(0, len(queries), chunk_size):
        q, q_labels = queries[start:start + chunk_size], query_labels[start:start + chunk_size]
        relevant = q_labels[:, None] == database_labels[None, :]
        ranked = relevant.gather(1, (q @ database.T).argsort(dim=1, descending=True)).double()  # by rank
        hits = ranked.cumsum(dim=1)  # relevant items among the top i
        relevant_count = hits[:, -1:].clamp(min=1)
        precision = hits / ranks
        ap_sum += ((precision * ranked).sum(dim=1) / relevant_count[:, 0]).sum()
        precision_sums += precision.sum(dim=0)
        recall_sums += (hits / relevant_count).sum(dim=0)
        precision_at_k += (hits[:, at] / k_values).sum(dim=0)
        hit_at_k += (hits[:, at] > 0).double().sum(dim=0)
    precision, recall = precision_sums / len(queries), recall_sums / len(queries)
    rince_ap = ((recall[1:] - recall[:-1]) * precision[1:]).sum()
    means = torch.cat([ap_sum[None] / len(queries), rince_ap[None], precision_at_k / len(queries),
                       hit_at_k / len(queries)]).tolist()  # one read from the device
    keys = ["mAP", "rince_AP", *(f"P@{k}" for k in ks), *(f"R@{k}" for k in ks)]
    return {key: 100.0 * value for key, value in zip(keys, means)}
