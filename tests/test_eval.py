"""kNN, top-k accuracy and the cached-feature linear probe against independent computations."""
import math

import torch

from cl_suite.eval.knn import knn_class_scores, topk_accuracy
from cl_suite.eval.linear import train_linear_classifier


def knn_slow(train, train_y, test, num_classes, k, t):
    scores = torch.zeros(len(test), num_classes, dtype=torch.float64)
    for i, q in enumerate(test.double()):
        sims = [(float(q @ x / (q.norm() * x.norm())), int(y)) for x, y in zip(train.double(), train_y) if y >= 0]
        for s, y in sorted(sims, key=lambda p: -p[0])[:k]:
            scores[i, y] += math.exp(s / t)
    return scores


def test_weighted_knn_matches_slow_loop_and_ignores_unlabelled():
    torch.manual_seed(0)
    train, test = torch.randn(40, 6), torch.randn(9, 6)
    labels = torch.randint(0, 3, (40,))
    labels[::7] = -1
    fast = knn_class_scores(train, labels, test, num_classes=3, k=5, temperature=0.2, chunk_size=4)
    torch.testing.assert_close(fast.double(), knn_slow(train, labels, test, 3, 5, 0.2), rtol=1e-5, atol=1e-6)


def test_topk_accuracy_counts_hits():
    scores = torch.tensor([[0.9, 0.1, 0.0], [0.2, 0.3, 0.5], [0.1, 0.5, 0.4], [0.2, 0.3, 0.5]])
    labels = torch.tensor([0, 0, 2, 1])
    acc = topk_accuracy(scores, labels, ks=(1, 2, 5))
    assert acc["top1"] == 25.0  # only row 0
    assert acc["top2"] == 75.0  # rows 0, 2 and 3
    assert acc["top5"] == 100.0  # capped at 3 classes


def test_linear_probe_separates_separable_features_and_drops_unlabelled():
    torch.manual_seed(0)
    centers = torch.randn(4, 16) * 4
    y = torch.randint(0, 4, (400,))
    x = centers[y] + torch.randn(400, 16)
    y_train = y[:300].clone()
    y_train[:20] = -1
    out = train_linear_classifier(x[:300], y_train, x[300:], y[300:], num_classes=4, epochs=10, batch_size=64)
    assert out["top1"] > 97 and out["top5"] == 100.0


def test_linear_probe_is_deterministic_and_leaves_global_rng_alone():
    torch.manual_seed(1)
    x, y = torch.randn(100, 8), torch.randint(0, 3, (100,))
    state = torch.get_rng_state()
    a = train_linear_classifier(x, y, x, y, 3, epochs=3, seed=5)
    assert torch.equal(state, torch.get_rng_state())
    assert a == train_linear_classifier(x, y, x, y, 3, epochs=3, seed=5)


def test_running_probe_accuracy_matches_torchmetrics_and_skips_unlabelled():
    from torchmetrics.classification import MulticlassAccuracy

    from cl_suite.engine.probe import RunningTopkAccuracy

    torch.manual_seed(0)
    running = RunningTopkAccuracy((1, 5), num_classes=7, device=torch.device("cpu"))
    reference = {k: MulticlassAccuracy(num_classes=7, top_k=k, average="micro", ignore_index=-1) for k in (1, 5)}
    for _ in range(3):
        logits, labels = torch.randn(20, 7), torch.randint(-1, 7, (20,))
        running.update(logits, labels)
        for metric in reference.values():
            metric.update(logits, labels)
    got = running.compute()
    for k, metric in reference.items():
        assert math.isclose(got[f"top{k}"], 100 * metric.compute().item(), abs_tol=1e-4)
    running.reset()
    running.update(torch.randn(4, 7), torch.full((4,), -1))
    assert running.compute() == {}
