"""Evaluation protocols against independent (slow, brute-force or sklearn) computations: kNN, top-k
accuracy, the cached-feature linear probe, retrieval (mAP, P@k, R@k) and OOD detection (AUROC, FPR@95)."""
import json
import math
import statistics
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir

from cl_suite.eval.knn import knn_class_scores, topk_accuracy
from cl_suite.eval.linear import train_linear_classifier
from helpers import CONF


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


@pytest.mark.parametrize("num_classes", [3, 10, 100])
def test_topk_accuracy_matches_torchmetrics_micro_average(num_classes):
    from torchmetrics.functional.classification import multiclass_accuracy

    torch.manual_seed(num_classes)
    scores = torch.randn(500, num_classes)
    labels = torch.randint(0, num_classes, (500,))
    acc = topk_accuracy(scores, labels, ks=(1, 5))
    for k in (1, 5):
        reference = 100.0 * multiclass_accuracy(scores, labels, num_classes=num_classes, average="micro",
                                                top_k=min(k, num_classes)).item()
        assert acc[f"top{k}"] == pytest.approx(reference, abs=1e-4)  # both average in float32


def test_training_start_up_imports_neither_torchvision_nor_torchmetrics_nor_dynamo():
    """Each costs seconds at import; a digits run needs none (CIFAR/STL/folders/ResNets/OOD import them lazily,
    torch._dynamo comes with trainer.compile=true or an annealed ring: 1.8 s of every start-up otherwise)."""
    code = ("import sys, cl_suite.engine.trainer, cl_suite.engine.build, cl_suite.data, cl_suite.train\n"
            "from cl_suite.samplers.hard import HardSampler\n"
            "from cl_suite.samplers.ring import RingSampler\n"
            "HardSampler(beta=1.0, anneal='down', anneal_epochs=18), RingSampler(0.1, 0.1)\n"
            "print(sorted(m for m in ('torchvision', 'torchmetrics', 'sklearn', 'timm', 'torch._dynamo')\n"
            "             if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert out.stdout.strip() == "[]", out.stdout


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


# ---- retrieval, OOD and the protocol runner ----

def retrieval_slow(queries, query_labels, database, database_labels, ks):
    """Brute force over Python lists: rank the database per query, then AP, P@k and RINCE's R@k."""
    q = torch.nn.functional.normalize(queries.double(), dim=1)
    d = torch.nn.functional.normalize(database.double(), dim=1)
    ap_sum, p_sum, r_sum = 0.0, {k: 0.0 for k in ks}, {k: 0.0 for k in ks}
    for i in range(len(q)):
        ranked = sorted(range(len(d)), key=lambda j: -float(q[i] @ d[j]))
        hits = [int(database_labels[j]) == int(query_labels[i]) for j in ranked]
        found, precisions = 0, []
        for rank, hit in enumerate(hits, start=1):
            if hit:
                found += 1
                precisions.append(found / rank)
        ap_sum += sum(precisions) / max(sum(hits), 1)
        for k in ks:
            p_sum[k] += sum(hits[:k]) / k
            r_sum[k] += float(any(hits[:k]))
    n = len(q)
    return {"mAP": 100 * ap_sum / n, **{f"P@{k}": 100 * p_sum[k] / n for k in ks},
            **{f"R@{k}": 100 * r_sum[k] / n for k in ks}}


def test_retrieval_matches_brute_force_on_random_features():
    from cl_suite.eval.retrieval import retrieval_metrics

    torch.manual_seed(0)
    database, db_labels = torch.randn(50, 5), torch.randint(0, 4, (50,))
    db_labels[::9] = -1  # unlabelled database items are not part of the ranking
    queries, q_labels = torch.randn(13, 5), torch.randint(0, 4, (13,))
    fast = retrieval_metrics(queries, q_labels, database, db_labels, ks=(1, 3, 10), chunk_size=4)
    keep = db_labels >= 0
    slow = retrieval_slow(queries, q_labels, database[keep], db_labels[keep], (1, 3, 10))
    fast.pop("rince_AP")  # tested against the RINCE code below
    assert fast.keys() == slow.keys()
    for key in slow:
        assert math.isclose(fast[key], slow[key], abs_tol=1e-4), (key, fast[key], slow[key])


def rince_precision_recall_ap(test_features, train_features, test_labels, train_labels) -> float:
    """A transcription of ``precision_recall`` in boschresearch/rince (branch cifar) ``retrieval.py``, in
    float64: a 0/1 matrix of the ranked database's labels matching the query's, precision and recall of
    the top i averaged over queries for each i, AP = sum over i >= 2 of (R_i - R_{i-1}) P_i."""
    n_pos = (test_labels[:, None] == train_labels[None, :]).sum(1).double()
    sim = test_features.double() @ train_features.double().T
    k = len(train_labels)
    topk = sim.topk(k).indices
    acc_mat = torch.zeros(len(test_labels), k, dtype=torch.float64)
    for i in range(k):
        acc_mat[:, i] = (test_labels == train_labels[topk[:, i]]).double()
    precisions, recalls = [], []
    for i in range(1, k + 1):
        n_correct = acc_mat[:, :i].sum(1)
        precisions.append((n_correct / i).mean())
        recalls.append((n_correct / n_pos).mean())
    p, r = torch.stack(precisions), torch.stack(recalls)
    return float(((r[1:] - r[:-1]) * p[1:]).sum())


def test_rince_ap_matches_a_transcription_of_the_rince_code_and_differs_from_the_map():
    from cl_suite.eval.retrieval import retrieval_metrics

    torch.manual_seed(1)
    database, db_labels = torch.randn(60, 6), torch.arange(60) % 5
    queries, q_labels = torch.randn(17, 6), torch.randint(0, 5, (17,))
    out = retrieval_metrics(queries, q_labels, database, db_labels, ks=(1,), chunk_size=5)
    expected = 100 * rince_precision_recall_ap(F.normalize(queries, dim=1), F.normalize(database, dim=1),
                                               q_labels, db_labels)
    assert out["rince_AP"] == pytest.approx(expected, rel=1e-6)
    assert abs(out["rince_AP"] - out["mAP"]) > 0.5  # another number: the AP of the mean curve


def test_retrieval_map_and_precision_match_torchmetrics(tmp_path):
    """An independent implementation: torchmetrics' RetrievalMAP and RetrievalPrecision on the same
    scores (shifted positive: torchmetrics counts a score <= 0 as not retrieved), a query without any
    relevant item included (AP 0) and k larger than the database (divided by k)."""
    from torchmetrics.retrieval import RetrievalMAP, RetrievalPrecision

    from cl_suite.eval.retrieval import retrieval_metrics

    torch.manual_seed(2)
    database, db_labels = torch.randn(30, 4), torch.randint(0, 3, (30,))
    queries, q_labels = torch.randn(11, 4), torch.randint(0, 4, (11,))  # label 3: no relevant item
    out = retrieval_metrics(queries, q_labels, database, db_labels, ks=(1, 7, 40), chunk_size=3)
    scores = F.normalize(queries, dim=1) @ F.normalize(database, dim=1).T + 2.0
    relevant = q_labels[:, None] == db_labels[None, :]
    ids = torch.arange(11)[:, None].expand_as(scores).flatten()
    expected = {"mAP": RetrievalMAP(empty_target_action="neg")(scores.flatten(), relevant.flatten(), indexes=ids)}
    for k in (1, 7, 40):
        expected[f"P@{k}"] = RetrievalPrecision(top_k=k, empty_target_action="neg")(
            scores.flatten(), relevant.flatten(), indexes=ids)
    for key, value in expected.items():
        assert out[key] == pytest.approx(100 * float(value), abs=1e-4), key


def test_retrieval_of_perfectly_clustered_features_is_perfect():
    from cl_suite.eval.retrieval import retrieval_metrics

    centres = torch.eye(3) * 10
    labels = torch.arange(3).repeat_interleave(6)
    features = centres[labels] + 0.01 * torch.randn(18, 3)
    out = retrieval_metrics(features, labels, features, labels, ks=(1, 5))
    rince_ap = out.pop("rince_AP")  # the code's sum leaves out the first rank: 1 - 1/6 of the curve
    assert out == {"mAP": 100.0, "P@1": 100.0, "P@5": 100.0, "R@1": 100.0, "R@5": 100.0}
    assert rince_ap == pytest.approx(100 * 5 / 6)


def test_ood_auroc_and_fpr95_match_sklearn_and_separable_scores_give_100():
    from sklearn.metrics import roc_auc_score, roc_curve

    from cl_suite.eval.ood import ood_detection_metrics

    torch.manual_seed(0)
    inliers, outliers = torch.randn(300) + 1.0, torch.randn(200) * 3e3  # large scores: no sigmoid saturation
    out = ood_detection_metrics(inliers, outliers)
    y = [1] * 300 + [0] * 200
    s = torch.cat([inliers, outliers]).numpy()
    fpr, tpr, _ = roc_curve(y, s)
    assert math.isclose(out["auroc"], 100 * roc_auc_score(y, s), abs_tol=1e-4)  # torchmetrics sums in float32
    assert math.isclose(out["fpr95"], 100 * fpr[tpr >= 0.95].min(), abs_tol=1e-4)
    assert ood_detection_metrics(torch.tensor([5.0, 6.0]), torch.tensor([1.0, 2.0, 3.0])) == {"auroc": 100.0,
                                                                                                 "fpr95": 0.0}


def test_ood_fpr95_is_taken_at_exactly_95_percent_recall():
    """20 inliers 1..20, one outlier at 1.5 between the lowest two: accepting 19 of the 20 inliers (recall
    0.95 exactly) accepts no outlier, so FPR@95 is 0, not the 25% of full recall; AUROC 79/80 pairs."""
    from sklearn.metrics import roc_auc_score, roc_curve

    from cl_suite.eval.ood import ood_detection_metrics

    inliers, outliers = torch.arange(1.0, 21.0), torch.tensor([1.5, -1.0, -2.0, -3.0])
    out = ood_detection_metrics(inliers, outliers)
    y, s = [1] * 20 + [0] * 4, torch.cat([inliers, outliers]).numpy()
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    assert fpr[tpr >= 0.95].min() == 0.0 and roc_auc_score(y, s) == 79 / 80
    assert out["fpr95"] == 0.0
    assert math.isclose(out["auroc"], 100 * 79 / 80, abs_tol=1e-4)


def test_knn_ood_score_is_the_kth_neighbour_cosine():
    from cl_suite.eval.ood import knn_ood_score

    torch.manual_seed(0)
    train, x = torch.randn(30, 4), torch.randn(7, 4)
    cos = torch.nn.functional.normalize(x, dim=1) @ torch.nn.functional.normalize(train, dim=1).T
    expected = torch.tensor([sorted(row.tolist(), reverse=True)[4] for row in cos])
    torch.testing.assert_close(knn_ood_score(train, x, k=5, chunk_size=3), expected)
    # k beyond the training set: the farthest training feature (k is clamped to the 30 there are)
    torch.testing.assert_close(knn_ood_score(train, x, k=100), cos.min(dim=1).values)


def test_class_gaussian_score_matches_sklearn_gaussian_mixture_per_class():
    """RINCE's score: sklearn GaussianMixture(n_components=1, means_init=class mean) per class, max log-lik."""
    import numpy as np
    from sklearn.mixture import GaussianMixture

    from cl_suite.eval.ood import class_gaussian_ood_score

    torch.manual_seed(0)
    train, labels, x = torch.randn(60, 3), torch.randint(0, 3, (60,)), torch.randn(9, 3)
    labels[0] = -1
    ours = class_gaussian_ood_score(train, labels, x, reg_covar=1e-3)
    train_n = torch.nn.functional.normalize(train.double(), dim=1).numpy()
    x_n = torch.nn.functional.normalize(x.double(), dim=1).numpy()
    per_class = []
    for c in range(3):
        members = train_n[(labels == c).numpy()]
        gmm = GaussianMixture(1, reg_covar=1e-3, means_init=members.mean(0, keepdims=True), random_state=0)
        per_class.append(gmm.fit(members).score_samples(x_n))
    torch.testing.assert_close(ours, torch.from_numpy(np.stack(per_class)).max(dim=0).values, rtol=1e-6, atol=1e-6)


def test_protocol_list_and_datasets_are_checked_with_the_key_and_allowed_values():
    import pytest

    from cl_suite.engine.other_datasets import dataset_names
    from cl_suite.eval.protocols import check_protocols

    with pytest.raises(ValueError, match=r"protocol=\['knn', 'lineer'\].*linear, knn|choose one or more"):
        check_protocols(["knn", "lineer"], [], [])
    with pytest.raises(ValueError, match="protocol=ood needs ood_dataset"):
        check_protocols(["ood"], [], [])
    with pytest.raises(ValueError, match="transfer_dataset='cifar11'.*cifar10"):
        dataset_names("cifar11", "transfer_dataset")
    assert check_protocols("knn", [], []) == ["knn"]
    assert dataset_names(["cifar10", "digits"], "ood_dataset") == ["cifar10", "digits"]


def test_cached_linear_probe_matches_reencoding_every_epoch_and_is_faster(tmp_path):
    """The cached-feature probe against the textbook protocol that re-encodes every batch of every epoch
    with the frozen encoder (same seed, order and initialisation): within 0.5 points, with each image
    through the encoder once instead of once per epoch (counted; the times are printed, not asserted:
    speed claims belong to bench/, and a busy machine made the comparison flaky)."""
    import time

    from omegaconf import OmegaConf

    from cl_suite.data.augment import eval_transform
    from cl_suite.engine.build import DatasetFacts, build_augment_config, build_dataset, build_method
    from cl_suite.eval.protocols import encode_splits, linear_metrics
    from helpers import TINY, compose_train

    cfg = compose_train(TINY + ["backbone.widths=[16,32]"], tmp_path)
    data, aug = build_dataset(cfg.dataset), build_augment_config(cfg.dataset)
    torch.manual_seed(0)
    method = build_method(cfg, DatasetFacts.of(data, cfg.trainer.batch_size)).eval()
    lin = OmegaConf.create({"epochs": 30, "batch_size": 128, "lr": 0.1, "momentum": 0.9, "weight_decay": 0.0,
                            "standardize": True, "flip_augment": False})
    device = torch.device("cpu")
    encoded = {"images": 0}

    def encode(x):  # the frozen encoder, counting the images it encodes
        encoded["images"] += len(x)
        return method.encode(x)

    start = time.perf_counter()
    feats = encode_splits(encode, data, aug, device, batch_size=512)
    cached = linear_metrics(feats, data.num_classes, lin, seed=3)["linear/top1"]
    cached_s = time.perf_counter() - start
    cached_images, encoded["images"] = encoded["images"], 0

    start = time.perf_counter()
    images, labels = data.train.images, data.train.labels
    with torch.no_grad():  # the standardisation statistics: one pass over the train split
        first_pass = torch.cat([encode(eval_transform(images[s:s + 512], aug)) for s in range(0, len(images), 512)])
    mean, std = first_pass.mean(0), first_pass.std(0).clamp(min=1e-6)
    gen = torch.Generator().manual_seed(3)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        classifier = torch.nn.Linear(method.num_features, data.num_classes)
    opt = torch.optim.SGD(classifier.parameters(), lr=lin.lr, momentum=lin.momentum)
    steps = math.ceil(len(labels) / lin.batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=lin.epochs * steps)
    for _ in range(lin.epochs):
        order = torch.randperm(len(labels), generator=gen)
        torch.randint(1, (len(labels),), generator=gen)  # the cached probe's (single-)variant draw
        for s in range(0, len(labels), lin.batch_size):
            idx = order[s:s + lin.batch_size]
            with torch.no_grad():
                x = (encode(eval_transform(images[idx], aug)) - mean) / std
            loss = torch.nn.functional.cross_entropy(classifier(x), labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    with torch.no_grad():
        test_x = (encode(eval_transform(data.test.images, aug)) - mean) / std
        reencoded = 100.0 * (classifier(test_x).argmax(1) == data.test.labels).float().mean().item()
    reencode_s = time.perf_counter() - start

    print(f"\nlinear probe top-1: cached {cached:.2f} in {cached_s:.2f}s, re-encoding {reencoded:.2f} in "
          f"{reencode_s:.2f}s: {reencode_s / cached_s:.1f}x faster cached")
    assert abs(cached - reencoded) <= 0.5
    n_train, n_test = len(labels), len(data.test.labels)
    assert cached_images == n_train + n_test  # every image once
    assert encoded["images"] == (lin.epochs + 1) * n_train + n_test  # the train split every epoch
    assert cached > 50  # a random small convnet's features are linearly informative on digits


def test_evaluate_run_runs_every_protocol_into_eval_json_and_the_report_reads_it(tmp_path):
    """A real tiny run, then evaluate.py's entry (in process): linear+knn+retrieval first, then OOD and
    transfer against the synthetic data set, which adds to eval.json instead of replacing it."""
    import json

    from cl_suite.report.jobs import read_job
    from helpers import evaluate_in_process, trained_run

    run = tmp_path / "run"
    final = trained_run(run, ["trainer.max_steps=4"])

    def evaluate(*overrides):
        return evaluate_in_process(run, "evaluation.linear.epochs=5", *overrides)

    first = evaluate()
    assert list(first["protocols"]) == ["linear", "knn", "retrieval"]
    assert math.isclose(first["metrics"]["linear/top1"], final["linear/top1"], abs_tol=1e-6)
    assert math.isclose(first["metrics"]["knn/top1"], final["knn/top1"], abs_tol=1e-6)
    retrieval = first["protocols"]["retrieval"]
    # digits have coarse labels (three stroke families), so retrieval is also scored at that level
    assert set(retrieval) == {f"retrieval/{level}{name}" for level in ("", "coarse/")
                              for name in ("mAP", "rince_AP", *(f"{m}@{k}" for m in "PR" for k in (1, 5, 10, 20)))}
    assert math.isclose(retrieval["retrieval/R@1"], retrieval["retrieval/P@1"], abs_tol=1e-4)  # 1 item: hit = precision

    second = evaluate("protocol=[ood,transfer]", "ood_dataset=synthetic", "transfer_dataset=synthetic",
                      "evaluation.ood.score=gmm", "evaluation.ood.reg_covar=1e-3")
    assert list(second["protocols"]) == ["linear", "knn", "retrieval", "ood", "transfer"]
    ood = second["protocols"]["ood"]
    assert set(ood) == {"ood/synthetic/auroc", "ood/synthetic/fpr95"} and 0 <= ood["ood/synthetic/auroc"] <= 100
    assert set(second["protocols"]["transfer"]) == {f"transfer/synthetic/{p}_top{k}" for p in ("linear", "knn")
                                                    for k in (1, 5)}
    on_disk = json.loads((run / "eval.json").read_text())
    assert on_disk["protocols"] == second["protocols"] and on_disk["settings"]["ood"]["ood_dataset"] == ["synthetic"]
    # each protocol keeps the settings it ran with: the first call's linear probe had 5 epochs, OOD used gmm
    assert on_disk["settings"]["linear"]["evaluation"]["linear"]["epochs"] == 5
    assert on_disk["settings"]["ood"]["evaluation"]["ood"]["score"] == "gmm"
    assert "ood_dataset" not in on_disk["settings"]["linear"] and on_disk["settings"]["ood"]["ood_root"] == {
        "synthetic": None}
    job = read_job(run, tmp_path)
    assert job.ok and job.metrics["eval/ood/synthetic/auroc"] == ood["ood/synthetic/auroc"]

    from cl_suite.engine.validation import ConfigError

    with pytest.raises(ConfigError, match=r"ood_dataset=digits is the run's own data set"):
        evaluate("protocol=ood", "ood_dataset=[synthetic,digits]")

    # best.pt is last.pt here (one hard-linked file): the same checkpoint, so the same file, merged
    assert set(evaluate("checkpoint=best", "protocol=knn")["protocols"]) == set(second["protocols"])
    import shutil

    shutil.copy(run / "checkpoints" / "last.pt", run / "checkpoints" / "other.pt")  # another file
    other = evaluate("checkpoint=other", "protocol=knn")  # its own file: eval.json stays the last checkpoint's
    assert set(json.loads((run / "eval.json").read_text())["protocols"]) == set(second["protocols"])
    assert json.loads((run / "eval_other.json").read_text())["protocols"] == other["protocols"] and list(
        other["protocols"]) == ["knn"]


def test_an_exported_backbone_evaluated_on_another_data_set_does_not_keep_the_first_data_sets_numbers(tmp_path,
                                                                                                      capsys):
    import json

    from cl_suite.export import export_backbone
    from cl_suite.run_evaluation import evaluate_run
    from helpers import trained_run

    run = tmp_path / "run"
    trained_run(run, ["trainer.max_steps=2"])
    out, _ = export_backbone(run)

    def evaluate(*overrides):
        with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
            cfg = compose(config_name="evaluate", overrides=[f"checkpoint={out}", "evaluation.linear.epochs=1",
                                                             *overrides])
        return evaluate_run(cfg)

    evaluate("protocol=[knn,linear]")
    second = evaluate("protocol=knn", "dataset=synthetic")
    on_disk = json.loads(out.with_name(f"{out.stem}.eval.json").read_text())
    assert list(second["protocols"]) == ["knn"] and on_disk["protocols"] == second["protocols"]
    assert on_disk["dataset"] == "synthetic" and "linear/top1" not in on_disk["metrics"]
    assert "the earlier results of linear (data set digits" in capsys.readouterr().out  # said, not silent


def test_a_damaged_eval_json_is_replaced_not_merged(tmp_path):
    from cl_suite.run_evaluation import _merge_with_previous

    path = tmp_path / "eval.json"
    path.write_bytes(b'{"step": 2, "protocols": {"knn": {"knn/top1": 1')  # cut short
    result = _merge_with_previous(path, {"step": 2, "checkpoint": "c", "dataset": "digits",
                                         "protocols": {"linear": {"linear/top1": 50.0}}, "settings": {"linear": {}}})
    assert result["metrics"] == {"linear/top1": 50.0}


def test_earlier_protocols_are_kept_only_from_the_same_step_and_with_their_settings(tmp_path):
    """eval.json keeps a protocol not re-run now only when it describes this checkpoint's step (a run
    evaluated while still training, then again when finished, has new weights) and records the settings
    it ran with (files written before settings were recorded cannot say what produced them)."""
    import json

    from cl_suite.run_evaluation import _merge_with_previous

    def merged(previous: dict) -> dict:
        path = tmp_path / "eval.json"
        path.write_text(json.dumps({"checkpoint": "c", "dataset": "digits", **previous}))
        return _merge_with_previous(path, {"step": 10, "checkpoint": "c", "dataset": "digits",
                                           "protocols": {"linear": {"linear/top1": 50.0}}, "settings": {"linear": {}}})

    knn = {"protocols": {"knn": {"knn/top1": 40.0}}, "settings": {"knn": {"seed": 0}}}
    assert merged({"step": 10, **knn})["metrics"] == {"knn/top1": 40.0, "linear/top1": 50.0}
    assert merged({"step": 5, **knn})["metrics"] == {"linear/top1": 50.0}  # an earlier checkpoint's numbers
    assert merged({"step": 10, "protocols": knn["protocols"], "settings": {}})["metrics"] == {"linear/top1": 50.0}


def test_a_checkpoint_name_is_a_pt_file_or_one_of_the_runs_checkpoints(tmp_path, monkeypatch):
    """checkpoint=best is the run's checkpoints/best.pt, even where the working folder holds a file named
    best; a path of another checkpoint must end in .pt."""
    from cl_suite.run_evaluation import find_checkpoint

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "best.pt").write_bytes(b"x")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "best").write_text("not a checkpoint")
    assert find_checkpoint(run, "best") == run / "checkpoints" / "best.pt"
    (tmp_path / "other.pt").write_bytes(b"x")
    assert find_checkpoint(run, str(tmp_path / "other.pt")) == tmp_path / "other.pt"



@pytest.mark.parametrize("save_checkpoints, says", [
    ("true", "has no checkpoint yet: it stopped (refused or crashed) before its first one"),
    ("false", "the run saved no checkpoint (trainer.save_checkpoints=false"),
    # a config from before the setting existed: such a run saved checkpoints
    (None, "has no checkpoint yet: it stopped (refused or crashed) before its first one"),
])
def test_a_run_without_checkpoints_is_explained_by_its_own_settings(tmp_path, save_checkpoints, says):
    """A run that crashed or was refused before its first checkpoint was said to have run with
    trainer.save_checkpoints=false, sending the user to look for a setting they never used."""
    from omegaconf import OmegaConf

    from cl_suite.errors import MissingPathError
    from helpers import TINY, compose_train, evaluate_in_process

    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    setting = "~trainer.save_checkpoints" if save_checkpoints is None else f"trainer.save_checkpoints={save_checkpoints}"
    OmegaConf.save(compose_train(TINY + [setting], run), run / ".hydra" / "config.yaml")
    with pytest.raises(MissingPathError, match="checkpoint='last'") as err:
        evaluate_in_process(run, "protocol=knn", "wandb=false")
    assert says in str(err.value)
    assert (str(run / "train.log") in str(err.value)) == (save_checkpoints != "false")

def test_evaluate_ignores_the_trained_sampler_so_renamed_sampler_settings_still_evaluate(tmp_path):
    """Evaluation only encodes and samplers hold no state: a run folder whose sampler config uses keys
    the sampler no longer takes (the ring's old percentile window) evaluates to the run's own numbers."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from cl_suite.engine.trainer import train
    from cl_suite.run_evaluation import evaluate_run
    from helpers import CONF, TINY, compose_train

    run = tmp_path / "run"
    train_cfg = compose_train(TINY + ["method=ring", "trainer.max_steps=2", "trainer.eval_at_init=false"], run)
    final = train(train_cfg)
    saved = OmegaConf.to_container(train_cfg)
    saved["sampler"] = {"_target_": "cl_suite.samplers.RingSampler", "lower_percentile": 50.0,
                        "upper_percentile": 95.0, "anneal_epochs": 0.0}
    (run / ".hydra").mkdir()
    OmegaConf.save(OmegaConf.create(saved), run / ".hydra" / "config.yaml")
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        cfg = compose(config_name="evaluate", overrides=[f"run={run}", "protocol=knn"])
    result = evaluate_run(cfg)
    assert math.isclose(result["metrics"]["knn/top1"], final["knn/top1"], abs_tol=1e-6)


def random_images(folder, count: int, shape=(20, 20, 3), name="{}.png"):
    """``count`` images of random pixels in ``folder`` (created), named ``name.format(i)``."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(folder / name.format(i))


def test_ood_on_a_plain_folder_of_images_and_roots_that_name_their_setting(tmp_path):
    """evaluate.py pointed at any folder of images (no classes, no train/test split: Tiny-ImageNet's
    val/images) through ood_dataset=image_files ood_root=<dir>; roots for data sets that read no files
    are refused naming the setting."""

    from cl_suite.engine.trainer import train
    from cl_suite.engine.validation import ConfigError
    from helpers import TINY, compose_train, evaluate_in_process, trained_run

    folder = tmp_path / "tiny-imagenet" / "val" / "images"
    random_images(folder, 12, name="val_{}.JPEG")
    run = tmp_path / "run"
    trained_run(run, ["trainer.max_steps=2"])

    def evaluate(*overrides):
        return evaluate_in_process(run, "wandb=false", *overrides)

    result = evaluate("protocol=ood", "ood_dataset=image_files", f"ood_root={tmp_path / 'tiny-imagenet' / 'val'}")
    ood = result["protocols"]["ood"]
    assert set(ood) == {"ood/image_files/auroc", "ood/image_files/fpr95"}
    assert 0 <= ood["ood/image_files/auroc"] <= 100
    with pytest.raises(ConfigError, match="dataset_root=/somewhere is not allowed with dataset 'digits'"):
        evaluate("protocol=knn", "dataset_root=/somewhere")
    with pytest.raises(ConfigError, match="transfer_dataset=image_files is not allowed"):
        evaluate("protocol=transfer", "transfer_dataset=image_files", f"transfer_root={folder}")
    with pytest.raises(ConfigError, match="dataset=image_files has no labelled training images"):
        train(compose_train(TINY + ["dataset=image_files", f"dataset.root={folder}", "dataset.image_size=16",
                                    "dataset.augment.crop_size=16"], tmp_path / "run2"))




def test_a_later_ood_call_on_another_data_set_adds_to_the_earlier_ones(tmp_path):
    """Each OOD set needs its own call when their folders differ (ood_root applies to the call's sets): the
    sets of earlier calls with the same settings stay in eval.json, each with its folder; other settings
    replace them, and so does an entry of another shape (untrusted)."""

    from helpers import evaluate_in_process, trained_run

    folder = tmp_path / "images"
    random_images(folder, 12)
    run = tmp_path / "run"
    trained_run(run, ["trainer.max_steps=1"])

    def evaluate(*overrides):
        evaluate_in_process(run, "wandb=false", "protocol=ood", *overrides)
        return json.loads((run / "eval.json").read_text())

    first = evaluate("ood_dataset=synthetic")["protocols"]["ood"]
    both = evaluate("ood_dataset=image_files", f"ood_root={folder}")
    assert set(both["protocols"]["ood"]) == {f"ood/{n}/{m}" for n in ("synthetic", "image_files")
                                             for m in ("auroc", "fpr95")}
    assert {k: both["protocols"]["ood"][k] for k in first} == first
    assert both["settings"]["ood"]["ood_dataset"] == ["synthetic", "image_files"]
    assert both["settings"]["ood"]["ood_root"] == {"synthetic": None, "image_files": str(folder)}
    assert both["metrics"]["ood/synthetic/auroc"] == first["ood/synthetic/auroc"]
    again = evaluate("ood_dataset=synthetic")  # a set evaluated again replaces its own numbers only
    assert set(again["protocols"]["ood"]) == set(both["protocols"]["ood"])
    assert again["settings"]["ood"]["ood_dataset"] == ["image_files", "synthetic"]
    other = evaluate("ood_dataset=synthetic", "evaluation.ood.k=3")  # other settings: not comparable
    assert set(other["protocols"]["ood"]) == {"ood/synthetic/auroc", "ood/synthetic/fpr95"}
    assert other["settings"]["ood"]["ood_root"] == {"synthetic": None}
    damaged = json.loads((run / "eval.json").read_text())
    damaged["settings"]["ood"]["ood_root"] = "/elsewhere"  # another shape: replaced, never half-used
    (run / "eval.json").write_text(json.dumps(damaged))
    replaced = evaluate("ood_dataset=image_files", f"ood_root={folder}", "evaluation.ood.k=3")
    assert set(replaced["protocols"]["ood"]) == {"ood/image_files/auroc", "ood/image_files/fpr95"}
    damaged = json.loads((run / "eval.json").read_text())
    damaged["settings"]["ood"]["ood_root"] = {"other": None}  # roots of other sets than those named: replaced
    (run / "eval.json").write_text(json.dumps(damaged))
    replaced = evaluate("ood_dataset=synthetic", "evaluation.ood.k=3")
    assert set(replaced["protocols"]["ood"]) == {"ood/synthetic/auroc", "ood/synthetic/fpr95"}
    assert replaced["settings"]["ood"]["ood_root"] == {"synthetic": None}


@pytest.mark.parametrize("damage", [
    {"settings": {"ood_dataset": [["a"]]}},  # a name that is not text (unhashable)
    {"settings": {"ood_root": {"a": 5}}},  # a root that is not a folder
    {"settings": {"ood_dataset": "a"}},  # not a list
    {"metrics": ["ood/a/auroc"]},  # metrics that are not a mapping
    {"entry": "ood"},  # settings that are not a mapping
    {},  # the control: the same shape is merged
])
def test_an_earlier_ood_entry_of_another_shape_is_replaced_not_half_used(tmp_path, damage):
    """eval.json is untrusted: an earlier entry whose data sets, roots, metrics or settings have another
    shape is replaced by this call's, never merged (nor a Python error)."""
    from cl_suite.run_evaluation import _merge_with_previous

    settings = {"evaluation": {"k": 1}, "seed": 0, "dataset_root": None, "ood_dataset": ["a"], "ood_root": {"a": None}}
    settings.update(damage.get("settings", {}))
    previous = {"checkpoint": "c.pt", "step": 2, "dataset": "digits",
                "protocols": {"ood": damage.get("metrics", {"ood/a/auroc": 50.0, "ood/ab/auroc": 1.0})},
                "settings": {"ood": damage.get("entry", settings)}}
    path = tmp_path / "eval.json"
    path.write_text(json.dumps(previous))
    result = {"checkpoint": "c.pt", "step": 2, "dataset": "digits", "protocols": {"ood": {"ood/b/auroc": 60.0}},
              "settings": {"ood": {"evaluation": {"k": 1}, "seed": 0, "dataset_root": None, "ood_dataset": ["b"],
                                   "ood_root": {"b": "/b"}}}}
    merged = _merge_with_previous(path, result)
    if not damage:  # (numbers of a set its settings do not name, ab, are dropped)
        assert merged["protocols"] == {"ood": {"ood/a/auroc": 50.0, "ood/b/auroc": 60.0}}
        assert merged["settings"]["ood"]["ood_root"] == {"a": None, "b": "/b"}
        return
    assert merged["protocols"] == {"ood": {"ood/b/auroc": 60.0}}
    assert merged["settings"]["ood"]["ood_dataset"] == ["b"] and merged["settings"]["ood"]["ood_root"] == {"b": "/b"}


def test_a_later_transfer_call_on_another_data_set_adds_to_the_earlier_ones(tmp_path):
    """As for OOD: a transfer call on an image folder (its own transfer_root) after one on a named data set
    keeps the earlier set's numbers and records each set's folder; the protocols of earlier calls stay."""

    from helpers import evaluate_in_process, trained_run

    folder = tmp_path / "transfer"
    for split in ("train", "test"):
        for label in ("a", "b"):
            random_images(folder / split / label, 2)
    run = tmp_path / "run"
    trained_run(run, ["trainer.max_steps=1"])

    def evaluate(*overrides):
        evaluate_in_process(run, "wandb=false", "evaluation.knn.k=3", *overrides)
        return json.loads((run / "eval.json").read_text())

    knn = evaluate("protocol=knn")["protocols"]["knn"]  # an eval.json without a transfer entry
    first = evaluate("protocol=transfer", "transfer_dataset=synthetic")["protocols"]["transfer"]
    both = evaluate("protocol=transfer", "transfer_dataset=imagefolder", f"transfer_root={folder}")
    assert both["protocols"]["knn"] == knn
    assert {k: both["protocols"]["transfer"][k] for k in first} == first
    assert {k.split("/")[1] for k in both["protocols"]["transfer"]} == {"synthetic", "imagefolder"}
    assert both["settings"]["transfer"]["transfer_dataset"] == ["synthetic", "imagefolder"]
    assert both["settings"]["transfer"]["transfer_root"] == {"synthetic": None, "imagefolder": str(folder)}

@pytest.mark.parametrize("run_dataset, image_size, fraction", [
    (["dataset=imagefolder", "dataset.image_size=48", "dataset.augment.crop_size=40",
      "dataset.augment.eval_crop_fraction=0.875"], 48, 0.875),
    (["dataset=digits"], 16, 1.0),
    (["dataset=cifar10"], 32, 1.0),  # a fixed-size data set: its crop size
    (["dataset=stl10"], 96, 1.0),  # not 32 px
])
def test_a_folder_of_ood_or_transfer_images_is_framed_as_the_runs_images(tmp_path, run_dataset, image_size, fraction):
    """An image folder has no size of its own: OOD/transfer folders are stored at the run's image size and
    centre-cropped by its eval fraction (their option's 32 px would be blurred up to a 224-px encoder's
    input); a named data set keeps its own size and framing."""

    from cl_suite.engine.other_datasets import load_other_dataset, ood_augment_config
    from helpers import compose_train

    folder = tmp_path / "ood"
    random_images(folder, 3, shape=(70, 90, 3))
    run_cfg = compose_train(run_dataset + ["dataset.root=/unused"] * (run_dataset[0] == "dataset=imagefolder"))
    aug = run_cfg.dataset.augment
    other, other_aug = load_other_dataset("image_files", run_cfg, aug.crop_size, str(folder), "ood_root")
    assert tuple(other.test.images.shape) == (3, 3, image_size, image_size)
    assert other_aug.eval_crop_fraction == ood_augment_config(other_aug, other_aug).eval_crop_fraction == fraction
    assert other_aug.crop_size == aug.crop_size
    named, named_aug = load_other_dataset("synthetic", run_cfg, aug.crop_size)
    assert named.test.images.shape[-1] == 16 and named_aug.eval_crop_fraction == 1.0  # synthetic.yaml's own

def test_evaluate_explains_dataset_root_overrides_instead_of_a_struct_error():
    from cl_suite.cli import misplaced_dataset_override

    hint = misplaced_dataset_override(["run=outputs/x", "protocol=ood", "ood_dataset=imagefolder", "dataset.root=/d"])
    assert hint.startswith("error: dataset.root=/d is not an evaluate.py setting") and "ood_root=<dir>" in hint
    assert misplaced_dataset_override(["checkpoint=b.pt", "dataset=cifar10", "dataset.root=/d"]) is None


@pytest.mark.parametrize("count, fraction, kept", [
    (60, 0.01, 1),     # 0.6 -> 1
    (50, 0.01, 1),     # 0.5: halves round up
    (149, 0.01, 1),    # 1.49 -> 1
    (150, 0.01, 2),    # 1.5 -> 2
    (250, 0.01, 3),    # 2.5 -> 3: halves round up, not to even as Python's round()
    (5000, 0.1, 500),  # CIFAR-10's 10%
    (100, 0.29, 29),   # 0.29 * 100 is 28.999999999999996 in double precision: nearest, not truncated
    (7, 0.01, 1),      # every class keeps at least one image
    (0, 0.5, 0),       # an empty class keeps none
    (13, 1.0, 13),
])
def test_lowshot_images_per_class_rounding(count, fraction, kept):
    from cl_suite.eval.lowshot import images_per_class

    assert images_per_class(count, fraction) == kept


def test_lowshot_subset_is_class_balanced_seeded_and_skips_unlabelled():
    from cl_suite.eval.lowshot import class_balanced_subset, fraction_tag, images_per_class

    labels = torch.tensor([0] * 120 + [1] * 35 + [-1] * 50 + [2] * 9)[torch.randperm(214, generator=torch.Generator().manual_seed(3))]
    index = class_balanced_subset(labels, 0.1, seed=0)
    assert index.tolist() == sorted(set(index.tolist()))  # ascending, no image twice
    picked = labels[index]
    assert (picked >= 0).all()
    assert [int((picked == c).sum()) for c in range(3)] == [images_per_class(n, 0.1) for n in (120, 35, 9)] == [12, 4, 1]
    assert torch.equal(index, class_balanced_subset(labels, 0.1, seed=0))  # the same images for every run
    assert not torch.equal(index, class_balanced_subset(labels, 0.1, seed=1))
    assert class_balanced_subset(labels, 1.0, seed=5).tolist() == torch.nonzero(labels >= 0).flatten().tolist()
    assert [fraction_tag(f) for f in (0.01, 0.1, 0.005, 1.0)] == ["1pct", "10pct", "0.5pct", "100pct"]


def test_evaluate_lowshot_at_fraction_one_is_the_linear_and_knn_protocols(tmp_path, monkeypatch):
    """protocol=lowshot through evaluate.py's entry on a real tiny run: the whole train split (fraction 1)
    gives exactly the linear probe's and kNN's numbers; 10% of digits (about 14 images per class) fits
    its own probe; a subset smaller than the kNN's k votes with all its images and records that k;
    several draws give the mean and sample std of the single draws."""
    from cl_suite.engine.validation import ConfigError
    from cl_suite.eval import protocols
    from helpers import evaluate_in_process, trained_run

    run = tmp_path / "run"
    trained_run(run, ["trainer.max_steps=2", "evaluation.linear.epochs=1"])

    def evaluate(*overrides):
        return evaluate_in_process(run, "evaluation.linear.epochs=3", *overrides)

    result = evaluate("protocol=[linear,knn,lowshot]", "evaluation.lowshot.fractions=[1.0,0.1]")
    full, low = result["metrics"], result["protocols"]["lowshot"]
    assert set(low) == {f"lowshot/{tag}/{p}_top{k}" for tag in ("100pct", "10pct") for p in ("linear", "knn")
                        for k in (1, 5)} | {"lowshot/100pct/knn_k", "lowshot/10pct/knn_k"}
    for k in (1, 5):
        assert low[f"lowshot/100pct/linear_top{k}"] == full[f"linear/top{k}"]
        assert low[f"lowshot/100pct/knn_top{k}"] == full[f"knn/top{k}"]
    assert low["lowshot/100pct/knn_k"] == low["lowshot/10pct/knn_k"] == 20  # evaluation.knn.k
    assert 0 <= low["lowshot/10pct/linear_top1"] <= 100
    # 0.1% of digits keeps one image per class: kNN votes with those 10, and says so
    tiny_result = evaluate("protocol=lowshot", "evaluation.lowshot.fractions=[0.001]")
    tiny = tiny_result["protocols"]["lowshot"]
    assert tiny["lowshot/0.1pct/knn_k"] == 10 and 0 <= tiny["lowshot/0.1pct/knn_top1"] <= 100
    # evaluate.py's console lines: the k as the count it is, next to the accuracies
    from cl_suite.cli import evaluation_lines

    lines = evaluation_lines(tiny_result).splitlines()
    assert "lowshot" in lines and f"  {'lowshot/0.1pct/knn_k':<36}{10:8d}" in lines
    assert f"  {'lowshot/0.1pct/knn_top1':<36}{tiny['lowshot/0.1pct/knn_top1']:8.2f}" in lines
    # Three draws: the mean (and sample std) of single-draw evaluations on the subsets of seeds 0, 1, 2
    # (the probe's own seed stays evaluate.py's seed, 0)
    three = evaluate("protocol=lowshot", "evaluation.lowshot.fractions=[0.1]", "evaluation.lowshot.draws=3")
    three = three["protocols"]["lowshot"]
    real, singles = protocols.class_balanced_subset, []
    for draw in range(3):
        monkeypatch.setattr(protocols, "class_balanced_subset",
                            lambda labels, fraction, seed, draw=draw: real(labels, fraction, draw))
        singles.append(evaluate("protocol=lowshot", "evaluation.lowshot.fractions=[0.1]")["protocols"]["lowshot"])
    monkeypatch.undo()
    for key in ("lowshot/10pct/linear_top1", "lowshot/10pct/knn_top1"):
        values = [single[key] for single in singles]
        assert three[key] == pytest.approx(sum(values) / 3)
        assert three[f"{key}_std"] == pytest.approx(statistics.stdev(values))
    assert len({tuple(real(torch.arange(10).repeat(20), 0.1, d).tolist()) for d in range(3)}) == 3  # 3 subsets
    with pytest.raises(ConfigError, match=r"evaluation\.lowshot\.draws=0"):
        evaluate("protocol=lowshot", "evaluation.lowshot.draws=0")
    for bad in ("[0]", "[1.5]", "[]", "[0.1,0.1]"):
        with pytest.raises(ConfigError, match=r"evaluation\.lowshot\.fractions=.* expected a non-empty list"):
            evaluate("protocol=lowshot", f"evaluation.lowshot.fractions={bad}")


@pytest.mark.parametrize("informative", [0, 1])
def test_linear_probe_draws_each_samples_variant_from_every_variant(informative):
    """``train_features`` as a list (plain and flipped features): each epoch draws one variant per sample.
    One variant carries the class, the other is noise; whichever position it holds, the probe must learn
    from it (a probe that always read one position would be at chance in one of the two cases)."""
    torch.manual_seed(0)
    centers = torch.randn(4, 16) * 4
    y = torch.randint(0, 4, (400,))
    x = centers[y] + torch.randn(400, 16)
    noise = torch.randn(300, 16) * 4
    variants = [noise, x[:300]] if informative == 1 else [x[:300], noise]
    out = train_linear_classifier(variants, y[:300], x[300:], y[300:], num_classes=4, epochs=10, batch_size=64)
    assert out["top1"] > 90


@pytest.mark.slow
def test_evaluate_multirun_logs_into_each_run_folder_and_keeps_out_of_multirun(tmp_path):
    import shutil

    from cl_suite.report.jobs import collect_jobs
    from helpers import ROOT, run_cli, trained_run

    runs = tmp_path / "sweep"
    trained_run(runs / "0", ["trainer.max_steps=2"])
    shutil.copytree(runs / "0", runs / "1")
    before = set((ROOT / "multirun").rglob("multirun.yaml"))
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    proc = run_cli("evaluate.py", ["-m", f"run={runs / '0'},{runs / '1'}", "protocol=knn", "wandb=false"],
                   env={"TMPDIR": str(scratch)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    for run in ("0", "1"):
        assert (runs / run / "evaluate.log").is_file() and (runs / run / "eval.json").is_file()
    assert set((ROOT / "multirun").rglob("multirun.yaml")) == before
    assert len(list(scratch.rglob("multirun.yaml"))) == 1
    shutil.copy(next(scratch.rglob("multirun.yaml")), runs / "multirun.yaml")  # an older evaluate sweep's record
    assert [job.status for job in collect_jobs(runs)] == ["ok", "ok"]  # no phantom "not run" jobs


@pytest.mark.slow
def test_evaluate_multirun_keeps_each_runs_wandb_name_group_and_sweep_values(tmp_path):
    """evaluate.py -m over the runs of a training sweep writes eval/* into each run's wandb run; its own
    multirun (run=a,b) must not rename the runs nor replace their `sweep` values (dashboards group by them).
    The training sweep first: Hydra runs sweep jobs in one process, so an unfinished wandb run would be
    reused by the next job; each job has its own run dir and its own wandb run."""
    from helpers import TINY, run_cli
    from wandb_records import run_contents

    env = {"WANDB_MODE": "offline"}
    args = ["-m", *[o for o in TINY if not o.startswith("logger")],
            "seed=0,1", "logger=wandb", "dataset=synthetic", "trainer.max_steps=2", "trainer.eval_at_init=false",
            "evaluation.linear.epochs=1", "evaluation.embedding_snapshot=0", f"hydra.sweep.dir={tmp_path}"]
    proc = run_cli("train.py", args, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    run_ids = set()
    for job in ("0", "1"):
        assert json.loads((tmp_path / job / "metrics.json").read_text())["final"]["step"] == 2
        (run,) = (tmp_path / job / "wandb").glob("offline-run-*")
        run_ids.add(run.name.rsplit("-", 1)[-1])
    assert len(run_ids) == 2
    trained = {job: {p.name for p in (tmp_path / job / "wandb").glob("offline-run-*")} for job in ("0", "1")}
    proc = run_cli("evaluate.py", ["-m", f"run={tmp_path / '0'},{tmp_path / '1'}", "protocol=knn"], env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for job, seed in (("0", 0), ("1", 1)):
        folders = sorted((tmp_path / job / "wandb").glob("offline-run-*"))
        (training,) = [f for f in folders if f.name in trained[job]]
        (evaluation,) = [f for f in folders if f.name not in trained[job]]
        first = run_contents(next(training.glob("run-*.wandb")))
        later = run_contents(next(evaluation.glob("run-*.wandb")))
        assert first["name"] == f"seed={seed}" and first["config"]["sweep"] == {"seed": seed}
        assert later["config"].get("sweep", {"seed": seed}) == {"seed": seed}
        assert later["name"] in ("", first["name"]) and later["group"] in ("", first["group"])
        assert "eval/knn/top1" in later["summary"]
