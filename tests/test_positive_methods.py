"""Positive-side methods: NNCLR, KMCLR, SupCon, RINCE, the supervised baseline.

Each loss is checked against an independent float64 loop written from the paper's equation.
"""
import json
import math
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.cluster import MiniBatchKMeans

from cl_suite.engine.build import DatasetFacts, build_method
from cl_suite.engine.trainer import train
from cl_suite.engine.validation import ConfigError
from cl_suite.methods import KMCLR, NNCLR, RINCE, MoCo, SimCLR, SupCon
from cl_suite.methods.kmclr import OnlineKMeans
from cl_suite.methods.simclr import embed_two_views
from cl_suite.objectives import ranked_infonce_loss, supervised_contrastive_loss
from cl_suite.models import SmallConvNet
from cl_suite.samplers import UniformSampler
from helpers import compose_train, tiny_overrides

T = 0.2


def images(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 8, 8, generator=g), torch.randn(n, 3, 8, 8, generator=g)


def small(cls, **kwargs):
    torch.manual_seed(0)
    return cls(SmallConvNet(widths=[4, 8]), **kwargs)


# ---------------------------------------------------------------------------------------------- NNCLR
def make_nnclr(**kwargs):
    return small(NNCLR, sampler=UniformSampler(), temperature=T, projector_hidden_dims=[16], projector_dim=8,
                 predictor_hidden_dims=[16], **kwargs)


def test_nnclr_neighbour_is_the_brute_force_nearest_support_row():
    method = make_nnclr(support_set_size=32)
    method.support_set.push(torch.randn(20, 8) * 3, torch.arange(20))  # unnormalised, as the reference stores
    z = torch.randn(6, 8)
    positives, stats = method.lookup(z, torch.arange(6))
    for i in range(6):  # the row of largest cosine among the 20 written rows (never an unwritten one)
        cos = [float(F.cosine_similarity(z[i], method.support_set.embeddings[j], dim=0)) for j in range(20)]
        best = int(np.argmax(cos))
        torch.testing.assert_close(positives[i], F.normalize(method.support_set.embeddings[best], dim=0))
    assert 0 <= float(stats["nnclr/neighbour_same_class"]) <= 1


def test_nnclr_top_k_draws_among_the_k_nearest():
    method = make_nnclr(support_set_size=16, neighbours=3)
    method.support_set.push(F.normalize(torch.randn(16, 8), dim=1), torch.arange(16))
    z = torch.randn(1, 8).expand(200, 8)
    support = method.support_set.embeddings
    top3 = (F.normalize(z[:1], dim=1) @ support.T).topk(3).indices[0]
    picked = set((method.lookup(z, torch.zeros(200).long())[0] @ support.T).argmax(dim=1).tolist())
    assert picked == set(top3.tolist())


def test_nnclr_sends_no_gradient_into_the_support_set_and_enqueues_view_one():
    method = make_nnclr(support_set_size=16)
    x1, x2 = images(4)
    method.support_set.push(torch.randn(8, 8), torch.arange(8))
    out = method((x1, x2), torch.arange(4))
    out.loss.backward()
    assert not method.support_set.embeddings.requires_grad and method.support_set.embeddings.grad is None
    assert method.predictor[0].weight.grad is not None
    assert all(p.grad is not None for p in method.backbone.parameters())
    with torch.no_grad():
        z1 = method.projector(method.backbone(x1))
    method.after_step(out.memory, 0, 10)
    torch.testing.assert_close(method.support_set.embeddings[8:12], z1)
    assert int(method.support_set.filled) == 12


def test_nnclr_loss_equals_the_equation():
    """L = 1/2 l(NN(z2), p1) + 1/2 l(NN(z1), p2), softmax over the other view's predictions."""
    method = make_nnclr(support_set_size=16).eval()
    method.support_set.push(torch.randn(16, 8), torch.arange(16))
    x1, x2 = images(5)
    out = method((x1, x2), torch.arange(5))
    with torch.no_grad():
        z1, z2 = (method.projector(method.backbone(x)) for x in (x1, x2))
        p1, p2 = method.predictor(z1).double(), method.predictor(z2).double()
        support = method.support_set.embeddings.double()

        def nn(z):
            sims = F.normalize(z.double(), dim=1) @ F.normalize(support, dim=1).T
            return F.normalize(support[sims.argmax(dim=1)], dim=1)

        def l(n, p):
            p = F.normalize(p, dim=1)
            return sum(-math.log(math.exp(n[i] @ p[i] / T) / sum(math.exp(n[i] @ p[k] / T) for k in range(5)))
                       for i in range(5)) / 5

        expected = 0.5 * l(nn(z2), p1) + 0.5 * l(nn(z1), p2)
    assert out.loss.item() == pytest.approx(expected, rel=1e-5)


def test_nnclr_before_any_write_uses_the_view_itself():
    method = make_nnclr(support_set_size=16)
    z = torch.randn(3, 8)
    torch.testing.assert_close(method.lookup(z, torch.arange(3))[0], F.normalize(z, dim=1))


# ---------------------------------------------------------------------------------------------- KMCLR
def test_online_kmeans_equals_sklearn_partial_fit():
    """Same start (centres = the initial points), no reassignment: sklearn's count-based updates."""
    torch.manual_seed(0)
    km = OnlineKMeans(num_prototypes=5, dim=3, reset_interval=None, reassignment_ratio=0.0)
    ref = MiniBatchKMeans(n_clusters=5, init=km.centres.double().numpy(), n_init=1, reassignment_ratio=0.0,
                          batch_size=8)
    ref.partial_fit(km.recent.double().numpy())  # the reference fits its initial points first
    for step in range(6):
        x = torch.randn(8, 3) + step * 0.1
        km.step(x, step)
        ref.partial_fit(x.double().numpy())
        np.testing.assert_allclose(km.centres.numpy(), ref.cluster_centers_, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(km.counts.numpy(), ref._counts)


def test_kmeans_prototypes_move_toward_their_points_and_dead_ones_are_reassigned_on_the_10th_step():
    torch.manual_seed(0)
    km = OnlineKMeans(num_prototypes=4, dim=2, reset_interval=None, reassignment_ratio=0.5)
    km.centres.copy_(torch.tensor([[0.0, 0.0], [10.0, 10.0], [20.0, 20.0], [30.0, 30.0]]))
    x = torch.tensor([[1.0, 1.0]] * 40)
    before = km.centres.clone()
    for step in range(9):  # sklearn's counter: + min(1024, K) = 4 per step, due at 10 K = 40
        km.step(x, step)
    assert (km.centres[0] - x[0]).norm() < (before[0] - x[0]).norm()  # moved toward its points
    torch.testing.assert_close(km.centres[1:], before[1:])  # not due yet, whatever the batch size
    km.step(x, 9)
    # the 3 unused centres had count 1 < 0.5 * 361: they jump onto batch points
    assert all(torch.equal(km.centres[j], x[0]) for j in (1, 2, 3))
    assert float(km.counts[1]) == float(km.counts[0])  # the smallest count of the kept ones


def test_kmeans_reset_restarts_from_the_latest_points_on_every_rth_step():
    km = OnlineKMeans(num_prototypes=4, dim=2, reset_interval=2, reassignment_ratio=0.0)
    km.step(torch.randn(2, 2), 0)
    x = torch.randn(2, 2)
    km.step(x, 1)  # the 2nd step: reset (centres = the FIFO incl. x), then one update on x
    assert torch.equal(km.recent[2:], x)
    assert float(km.counts.sum()) == 4 + 2


def reference_kmclr_kmeans(init_values: np.ndarray, reset_interval: int, reassignment_ratio: float):
    """A transcription of how mwritescode/nnclr-cifar100 (src/models/kmclr.py) drives sklearn: a
    MiniBatchKMeans fitted on its initial points, a step counter starting at 1, and per training step:
    the batch's view-1 projections pushed into the FIFO ``init_values``, on every step that is a
    multiple of the reset interval a new MiniBatchKMeans fitted on ``init_values``, then one
    ``partial_fit`` on the batch. (The reference's k-means++ init on K points picks those K points in
    a random order; ``init=`` the points gives the same centres in their order.) Yields the object
    after each step."""
    def fresh():
        km = MiniBatchKMeans(n_clusters=len(init_values), init=init_values.copy(), n_init=1,
                             reassignment_ratio=reassignment_ratio, random_state=0)
        return km.partial_fit(init_values)

    kmeans, counter = fresh(), 1
    while True:
        batch = yield kmeans
        b = len(batch)
        init_values[:-b], init_values[-b:] = init_values[b:].copy(), batch
        if counter % reset_interval == 0:
            kmeans = fresh()
        kmeans.partial_fit(batch)
        counter += 1


def test_online_kmeans_resets_and_counts_as_the_reference_drives_sklearn():
    """Centres and counts step by step with resets (reassignment off), and with reassignment on the
    counter that decides when one is due (the reassigned centres depend on random draws, which differ)."""
    torch.manual_seed(0)
    for ratio in (0.0, 0.01):
        km = OnlineKMeans(num_prototypes=6, dim=3, reset_interval=4, reassignment_ratio=ratio)
        reference = reference_kmclr_kmeans(km.recent.double().numpy().copy(), 4, ratio)
        next(reference)
        for step in range(25):
            x = torch.randn(2, 3) + 0.1 * step
            km.step(x, step)
            ref = reference.send(x.double().numpy())
            if ratio == 0.0:
                np.testing.assert_allclose(km.centres.numpy(), ref.cluster_centers_, rtol=1e-5, atol=1e-5,
                                           err_msg=f"step {step}")
                np.testing.assert_array_equal(km.counts.numpy(), ref._counts)
            else:
                assert int(km.since_reassign) == ref._n_since_last_reassign, f"step {step}"


def test_kmclr_positive_is_the_nearest_prototype_and_usage_is_logged():
    method = small(KMCLR, sampler=UniformSampler(), steps_per_epoch=5, temperature=T, projector_hidden_dims=[16],
                   projector_dim=8, predictor_hidden_dims=[16], num_prototypes=6)
    z = torch.randn(10, 8)
    positives, _ = method.lookup(z, torch.arange(10))
    nearest = torch.stack([min(method.kmeans.centres, key=lambda c: float((c - zi).norm())) for zi in z])
    torch.testing.assert_close(positives, F.normalize(nearest, dim=1))
    x1, x2 = images(10)
    out = method((x1, x2), torch.arange(10))
    method.after_step(out.memory, 0, 10)
    usage = method.epoch_diagnostics()
    assert 1 <= usage["kmeans/prototypes_used"] <= 6 and 0 <= usage["kmeans/usage_entropy"] <= math.log(6) + 1e-6
    assert method.epoch_diagnostics() == {}  # the tally resets
    assert method.kmeans.reset_interval == 15  # 3 epochs x 5 steps
    assert {"kmeans.centres", "kmeans.counts", "kmeans.recent"} <= set(method.state_dict())


# --------------------------------------------------------------------------------------------- SupCon
def slow_supcon(z, labels, t):
    """Khosla et al. eq. 2, loops in float64."""
    z = z.double()
    n, total, anchors = len(z), 0.0, 0
    for i in range(n):
        positives = [p for p in range(n) if p != i and labels[p] == labels[i]]
        if not positives:
            continue
        denominator = sum(torch.exp(z[i] @ z[a] / t) for a in range(n) if a != i)
        total = total - sum(torch.log(torch.exp(z[i] @ z[p] / t) / denominator) for p in positives) / len(positives)
        anchors += 1
    return total / anchors


def test_supcon_loss_and_gradient_equal_the_slow_equation():
    torch.manual_seed(0)
    z = F.normalize(torch.randn(10, 6), dim=1).requires_grad_()
    labels = torch.tensor([0, 1, 0, 2, 1, 0, 3, 2, 1, 4])  # class 4 and 3 have one member: no positive
    mask = ~torch.eye(10, dtype=torch.bool)
    loss, _ = supervised_contrastive_loss(z, z, labels, labels, mask, T)
    z64 = z.detach().double().requires_grad_()
    ref = slow_supcon(z64, labels, T)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-6)
    torch.testing.assert_close(torch.autograd.grad(loss, z)[0].double(), torch.autograd.grad(ref, z64)[0],
                               rtol=1e-4, atol=1e-7)


def slow_supcon_against(anchors, candidates, anchor_labels, candidate_labels, contrast, t):
    """Eq. 2 with A(i) = the candidates ``contrast`` allows (in-batch views but i itself, written bank
    rows), P(i) those of them with i's label; loops in float64."""
    total, counted = 0.0, 0
    for i in range(len(anchors)):
        allowed = [a for a in range(len(candidates)) if contrast[i, a]]
        positives = [p for p in allowed if candidate_labels[p] == anchor_labels[i]]
        if not positives:
            continue
        denominator = sum(torch.exp(anchors[i] @ candidates[a] / t) for a in allowed)
        total = total - sum(torch.log(torch.exp(anchors[i] @ candidates[p] / t) / denominator)
                            for p in positives) / len(positives)
        counted += 1
    return total / counted


def test_supcon_with_a_bank_equals_the_slow_equation():
    # With a bank the candidates are not the anchors (2B in-batch views + K bank rows, two never written):
    # the normaliser of anchor i is its own row's, over its own A(i).
    torch.manual_seed(2)
    z = F.normalize(torch.randn(8, 6), dim=1).requires_grad_()
    bank = F.normalize(torch.randn(5, 6), dim=1)
    labels = torch.tensor([0, 1, 0, 2, 0, 1, 0, 3])
    bank_labels = torch.tensor([1, 0, 2, -1, -1])
    written = torch.tensor([True, True, True, False, False])
    contrast = torch.cat([~torch.eye(8, dtype=torch.bool), written.expand(8, -1)], dim=1)
    candidates_labels = torch.cat([labels, bank_labels])
    loss, positives = supervised_contrastive_loss(z, torch.cat([z, bank]), labels, candidates_labels, contrast, T)
    z64 = z.detach().double().requires_grad_()
    ref = slow_supcon_against(z64, torch.cat([z64, bank.double()]), labels, candidates_labels, contrast, T)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-6)
    torch.testing.assert_close(torch.autograd.grad(loss, z)[0].double(), torch.autograd.grad(ref, z64)[0],
                               rtol=1e-4, atol=1e-7)
    assert positives.item() == pytest.approx(21 / 8)  # class 0: 4 x (3 + 1 bank row); 1: 2 x (1 + 1); 2: 1; 3: 0


def test_supcon_with_all_labels_distinct_is_simclr():
    kwargs = dict(temperature=T, projector_hidden_dims=[16], projector_dim=8)
    supcon, simclr = small(SupCon, **kwargs), small(SimCLR, sampler=UniformSampler(), **kwargs)
    simclr.load_state_dict(supcon.state_dict())
    x1, x2 = images(6)
    a = supcon((x1, x2), torch.arange(6)).loss
    b = simclr((x1, x2), torch.zeros(6, dtype=torch.long)).loss
    assert a.item() == pytest.approx(b.item(), rel=1e-6)


def test_supcon_bank_adds_labelled_positives_after_the_step():
    method = small(SupCon, temperature=T, projector_hidden_dims=[16], projector_dim=8, bank_size=8)
    x1, x2 = images(4)
    out = method((x1, x2), torch.tensor([0, 1, 0, 1]))
    assert float(out.stats["supcon/positives_per_anchor"]) == 3  # other view + the same-class pair's 2 views
    with torch.no_grad():  # one row per image: its view-1 projection (BN over both views, as in forward)
        view1 = embed_two_views(method.backbone, method.projector, (x1, x2), method.concat_views)[1][:4]
    method.after_step(out.memory, 0, 1)
    torch.testing.assert_close(method.bank.embeddings[:4], view1)
    out = method((x1, x2), torch.tensor([0, 1, 0, 1]))
    assert float(out.stats["supcon/positives_per_anchor"]) == 5  # + 2 bank rows of the class


# ---------------------------------------------------------------------------------------------- RINCE
def slow_rince(own, bank, ranks, temps, forms):
    """RINCE's in/out terms (boschresearch/rince ``losses.py``) in float64 loops: ranks = per anchor, a list of sets of bank indices per rank."""
    terms = []
    for r, (t, form) in enumerate(zip(temps, forms)):
        values = []
        for i in range(len(own)):
            members = set().union(*ranks[i][: r + 1])
            pos = [math.exp(bank[i, j] / t) for j in sorted(ranks[i][r])] + ([math.exp(own[i] / t)] if r == 0 else [])
            neg = sum(math.exp(bank[i, j] / t) for j in range(bank.shape[1]) if j not in members)
            if form == "in":
                ratio = sum(pos) / (sum(pos) + neg) if pos else 0.0
                if ratio > 1e-7:
                    values.append(-math.log(ratio))
            else:
                values += [-math.log(p / (p + neg)) for p in pos if p / (p + neg) > 1e-7]
        terms.append(sum(values) / len(values) if values else 0.0)
    return sum(terms) / len(terms)


@pytest.mark.parametrize("forms", [["in", "in"], ["out", "out"], ["out", "in"]])
def test_ranked_infonce_equals_the_slow_equation_with_gradients(forms):
    torch.manual_seed(0)
    n, k = 5, 12
    own = torch.rand(n, dtype=torch.float64) * 2 - 1
    bank = torch.rand(n, k, dtype=torch.float64) * 2 - 1
    bank_labels = torch.randint(0, 4, (k,))
    labels = torch.tensor([0, 1, 2, 3, 0])
    group = torch.tensor([0, 0, 1, 1])  # superclasses {0, 1} and {2, 3}
    same = bank_labels[None] == labels[:, None]
    same_group = group[bank_labels][None] == group[labels][:, None]
    ranks = [[set(same[i].nonzero().flatten().tolist()), set(same_group[i].nonzero().flatten().tolist())]
             for i in range(n)]
    temps = [0.1, 0.225]
    own_t, bank_t = own.float().requires_grad_(), bank.float().requires_grad_()
    loss = ranked_infonce_loss(own_t, bank_t, [same, same_group], temps, forms)
    assert loss.item() == pytest.approx(slow_rince(own, bank, ranks, temps, forms), rel=1e-5)
    # gradient w.r.t. the bank similarities against central differences of the slow loops
    g = torch.autograd.grad(loss, (own_t, bank_t))
    eps, numeric = 1e-6, torch.zeros_like(bank)
    for i in range(n):
        for j in range(k):
            plus, minus = bank.clone(), bank.clone()
            plus[i, j] += eps
            minus[i, j] -= eps
            numeric[i, j] = (slow_rince(own, plus, ranks, temps, forms) - slow_rince(own, minus, ranks, temps, forms)) / (2 * eps)
    torch.testing.assert_close(g[1].double(), numeric, rtol=1e-3, atol=1e-5)


def make_rince(**kwargs):
    return small(RINCE, **{"projector_hidden_dims": [16], "projector_dim": 8, "bank_size": 16, **kwargs})


def test_rince_with_one_rank_and_no_shared_label_is_mocos_infonce():
    rince = make_rince(rank_similarities=[1.0], temperature_min=T, temperature_max=T)
    moco = small(MoCo, sampler=UniformSampler(), temperature=T, projector_hidden_dims=[16], projector_dim=8,
                 queue_size=16, shuffle_bn=False)
    moco.load_state_dict(rince.state_dict())
    x1, x2 = images(4)
    a = rince((x1, x2), torch.arange(4)).loss  # the bank's labels are all -1: only the own key is positive
    b = moco((x1, x2), torch.arange(4)).loss
    assert a.item() == pytest.approx(b.item(), rel=1e-6)


def test_rince_with_one_rank_is_supcon_in_with_a_bank():
    """SCL-in: P = own key + same-class bank entries, N = the rest of the bank, one temperature."""
    torch.manual_seed(0)
    own, bank = torch.rand(4) * 2 - 1, torch.rand(4, 10) * 2 - 1
    labels, bank_labels = torch.tensor([0, 1, 2, 0]), torch.tensor([0, 0, 1, 2, 3, 3, 1, 0, 2, 3])
    same = bank_labels[None] == labels[:, None]
    loss = ranked_infonce_loss(own, bank, [same], [T], ["in"])
    expected = 0.0
    for i in range(4):
        pos = math.exp(own[i] / T) + sum(math.exp(bank[i, j] / T) for j in range(10) if same[i, j])
        neg = sum(math.exp(bank[i, j] / T) for j in range(10) if not same[i, j])
        expected += -math.log(pos / (pos + neg)) / 4
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_rince_rank_order_matters():
    torch.manual_seed(0)
    own, bank = torch.rand(6) * 2 - 1, torch.rand(6, 20) * 2 - 1
    fine = torch.rand(6, 20) < 0.2
    coarse = fine | (torch.rand(6, 20) < 0.3)
    ranked = ranked_infonce_loss(own, bank, [fine, coarse], [0.1, 0.225], ["in", "in"])
    swapped = ranked_infonce_loss(own, bank, [coarse, fine], [0.1, 0.225], ["in", "in"])
    assert not math.isclose(ranked.item(), swapped.item(), rel_tol=1e-3)


def test_rince_rank_masks_from_superclasses():
    rince = make_rince(class_groups=[[0, 2], [1, 3]])
    labels, bank_labels = torch.tensor([0, 1]), torch.tensor([0, 2, 1, 3, -1])
    same, group = rince.rank_masks(labels, bank_labels)
    assert same.tolist() == [[True, False, False, False, False], [False, False, True, False, False]]
    assert group.tolist() == [[True, True, False, False, False], [False, False, True, True, False]]
    siblings = make_rince(class_groups=[[0, 2], [1, 3]], cumulative_ranks=False).rank_masks(labels, bank_labels)[1]
    assert siblings.tolist() == [[False, True, False, False, False], [False, False, False, True, False]]
    assert rince.temperatures == pytest.approx([0.1, 0.225])


@pytest.mark.parametrize("kwargs, key", [
    (dict(variant="sideways"), "method.variant"),
    (dict(rank_similarities=[0.5, 0.75]), "method.rank_similarities"),
    (dict(temperature_min=0.5, temperature_max=0.1), "method.temperature_min"),
    (dict(class_groups=[[0, 1], [1, 2]]), "method.class_groups"),
    (dict(), "method.class_groups"),  # two ranks, no coarse labels, no groups
    (dict(bank_size=0), "method.bank_size"),
])
def test_rince_bad_settings_name_the_key(kwargs, key):
    with pytest.raises(ValueError, match=key):
        make_rince(**kwargs)


# -------------------------------------------------------------------------------------- from config
@pytest.mark.parametrize("choice", ["method=nnclr method.support_set_size=256", "method=kmclr method.num_prototypes=20",
                                    "method=supcon", "method=supcon method.bank_size=128",
                                    "method=rince method.class_groups=[[0,6,8,9],[1,4,7],[2,3,5]]",
                                    "method=rince method.rank_similarities=[1.0] method.variant=out",
                                    "method=supervised", "method=nnclr sampler=hard"])
def test_positive_side_methods_train_on_digits(tmp_path, choice):
    method = choice.split()[0].split("=")[1]
    final = train(compose_train(tiny_overrides(method) + choice.split() + [
        "trainer.max_steps=4", "trainer.eval_at_init=false", "evaluation.linear.epochs=1"], tmp_path))
    record = json.loads((tmp_path / "metrics.json").read_text())["epochs"][-1]
    assert math.isfinite(record["train/epoch_loss"]) and final["step"] == 4
    assert "online_probe/train_top5" in record and "online_probe/test_top5" in final
    if method == "kmclr":
        assert 1 <= record["diag/kmeans/prototypes_used"] <= 20


def write_cifar100_sample(root, per_class=2):
    """A CIFAR-100 folder in the official pickle format, with the real fine -> coarse structure
    (5 fine classes per superclass)."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in ("train", "test"):
        fine = np.repeat(np.arange(100), per_class)
        pixels = rng.integers(0, 256, size=(len(fine), 3 * 32 * 32), dtype=np.uint8)
        with open(folder / name, "wb") as f:
            pickle.dump({"data": pixels, "fine_labels": fine.tolist(), "coarse_labels": (fine // 5).tolist()}, f)
    with open(folder / "meta", "wb") as f:
        pickle.dump({"fine_label_names": [f"f{i}" for i in range(100)],
                     "coarse_label_names": [f"c{i}" for i in range(20)]}, f)


def test_rince_runs_on_a_cifar100_format_file_with_its_superclasses(tmp_path):
    write_cifar100_sample(tmp_path / "data")
    cfg = compose_train(tiny_overrides("rince") + [
        "method=rince", "dataset=cifar100", f"dataset.root={tmp_path / 'data'}", "method.bank_size=256",
        "trainer.max_steps=3", "trainer.eval_at_init=false", "evaluation.linear.epochs=1"], tmp_path / "run")
    final = train(cfg)
    record = json.loads((tmp_path / "run" / "metrics.json").read_text())["epochs"][-1]
    assert final["step"] == 3 and math.isfinite(record["train/epoch_loss"])
    assert record["diag/rince/rank2_bank_positives"] >= record["diag/rince/rank1_bank_positives"] > 0


def test_label_needing_methods_refuse_unlabelled_pretraining_data():
    cfg = compose_train(["method=supcon"])
    with pytest.raises(ConfigError, match="needs a label for every pre-training image.*5 of 100"):
        build_method(cfg, DatasetFacts(num_samples=100, num_classes=10, unlabelled=5))


@pytest.mark.parametrize("method", ["supcon", "rince", "supervised"])
def test_a_sampler_on_a_multi_positive_method_is_a_clear_error(method):
    cfg = compose_train([f"method={method}", "sampler=ring"])
    with pytest.raises(ConfigError, match="sampler._target_=cl_suite.samplers.RingSampler cannot be used with method="):
        build_method(cfg, DatasetFacts(num_samples=100, num_classes=10, coarse_of_class=torch.arange(10) // 2))


@pytest.mark.parametrize("choice", ["method=kmclr method.num_prototypes=20",
                                    "method=rince method.class_groups=[[0,6,8,9],[1,4,7],[2,3,5]]"])
def test_evaluate_rebuilds_methods_that_need_dataset_facts(tmp_path, choice):
    """evaluate.py rebuilds the method with the data set's facts (steps per epoch, classes, superclasses)
    and reproduces the run's final kNN number from its checkpoint."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from cl_suite.run_evaluation import evaluate_run
    from helpers import CONF

    run = tmp_path / "run"
    cfg = compose_train(tiny_overrides(choice.split()[0].split("=")[1]) + choice.split() + [
        "trainer.max_steps=3", "trainer.eval_at_init=false", "evaluation.linear.epochs=1"], run)
    final = train(cfg)
    (run / ".hydra").mkdir()
    OmegaConf.save(cfg, run / ".hydra" / "config.yaml")  # what train.py's Hydra writes
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        eval_cfg = compose(config_name="evaluate", overrides=[f"run={run}", "protocol=[knn]", "wandb=false"])
    assert evaluate_run(eval_cfg)["metrics"]["knn/top1"] == pytest.approx(final["knn/top1"], abs=1e-6)


def test_nnclr_diagnostics_are_the_mean_of_both_directions():
    # The loss is 1/2 l(NN(z2), p1) + 1/2 l(NN(z1), p2); each per-step diagnostic (similarity means,
    # histograms, effective negatives, false-negative rate) is the mean of the two directions' numbers.
    class StatsRecorder(UniformSampler):
        def forward(self, *args, **kwargs):
            out = super().forward(*args, **kwargs)
            self.calls.append(out.stats)
            return out

    method = make_nnclr(support_set_size=16)
    method.sampler = StatsRecorder()
    method.sampler.calls = []
    method.support_set.push(torch.randn(16, 8), torch.arange(16) % 3)
    x1, x2 = images(6, seed=3)
    out = method((x1, x2), torch.tensor([0, 1, 2, 0, 1, 1]))
    first, second = method.sampler.calls
    assert set(first) <= set(out.stats) and not torch.equal(first["sim/positive_mean"], second["sim/positive_mean"])
    for key in first:
        torch.testing.assert_close(out.stats[key], (first[key] + second[key]) / 2)


def test_nnclr_each_prediction_is_paired_with_the_other_views_neighbour():
    """NNCLR eq. 1 with the predictor: p1 against NN(z2), p2 against NN(z1). The support set holds both
    views' own projections, so each view's neighbour is its own projection and the two differ."""
    method = make_nnclr(support_set_size=16).eval()
    x1, x2 = images(5, seed=3)
    with torch.no_grad():
        z1, z2 = (method.projector(method.backbone(x)) for x in (x1, x2))
    method.support_set.push(torch.cat([z1, z2]), torch.arange(10))
    out = method((x1, x2), torch.arange(5))
    with torch.no_grad():
        p1, p2 = (F.normalize(method.predictor(z).double(), dim=1) for z in (z1, z2))
        n1, n2 = F.normalize(z1.double(), dim=1), F.normalize(z2.double(), dim=1)
        assert (n1 * n2).sum(dim=1).max() < 0.999  # the views' neighbours are different rows

        def l(n, p):
            logits = n @ p.T / T
            return (torch.logsumexp(logits, dim=1) - logits.diagonal()).mean().item()

        expected = 0.5 * l(n2, p1) + 0.5 * l(n1, p2)
        swapped = 0.5 * l(n1, p1) + 0.5 * l(n2, p2)
    assert out.loss.item() == pytest.approx(expected, rel=1e-5)
    assert abs(expected - swapped) > 1e-4  # 20x the tolerance above: it tells the pairings apart


def test_nnclr_never_picks_a_support_row_that_was_never_written():
    method = make_nnclr(support_set_size=16)
    method.support_set.push(F.normalize(torch.randn(5, 8), dim=1), torch.arange(5))
    z = torch.randn(4, 8)
    with torch.no_grad():  # make every unwritten row an exact copy of the queries' direction
        method.support_set.embeddings[5:] = F.normalize(z[:1], dim=1)
        method.support_set.normalised[5:] = F.normalize(z[:1], dim=1)
    positives, _ = method.lookup(z, torch.arange(4))
    written = method.support_set.normalised[:5]
    best = (F.normalize(z, dim=1) @ written.T).argmax(dim=1)
    torch.testing.assert_close(positives, written[best])


def test_supcon_bank_rows_never_written_are_not_candidates():
    """Before the first push the bank holds random rows labelled -1: the loss is the bank-free loss."""
    kwargs = dict(temperature=T, projector_hidden_dims=[16], projector_dim=8)
    with_bank, without = small(SupCon, bank_size=8, **kwargs), small(SupCon, **kwargs)
    without.load_state_dict(with_bank.state_dict(), strict=False)
    x1, x2 = images(4)
    labels = torch.tensor([0, 1, 0, 2])
    a, b = with_bank((x1, x2), labels).loss, without((x1, x2), labels).loss
    assert a.item() == pytest.approx(b.item(), rel=1e-6)


@pytest.mark.parametrize("variant, forms", [("in", ["in", "in"]), ("out", ["out", "out"]),
                                            ("out_in", ["out", "in"])])
def test_rince_variant_picks_the_form_of_each_rank(variant, forms):
    """RINCE-out_in: rank 1 in the out form, rank 2 in the in form; checked through the method's loss
    against the float64 loops of ``slow_rince`` with a bank holding both ranks' positives."""
    method = make_rince(class_groups=[[0, 2], [1, 3]], variant=variant).eval()
    x1, x2 = images(4, seed=5)
    labels = torch.tensor([0, 1, 2, 3])
    torch.manual_seed(1)
    method.queue.push(F.normalize(torch.randn(16, 8), dim=1), torch.randint(0, 4, (16,)))
    out = method((x1, x2), labels)
    with torch.no_grad():
        q = F.normalize(method.projector(method.backbone(x1)), dim=1).double()
        k = method.key_encoder(x2).double()
        own, bank = (q * k).sum(dim=1), q @ method.queue.embeddings.double().T
    same, group = method.rank_masks(labels, method.queue.labels)
    ranks = [[set(same[i].nonzero().flatten().tolist()), set(group[i].nonzero().flatten().tolist())]
             for i in range(4)]
    expected = slow_rince(own, bank, ranks, method.temperatures, forms)
    assert out.loss.item() == pytest.approx(expected, rel=1e-5)
    others = {tuple(f) for f in (["in", "in"], ["out", "out"], ["out", "in"], ["in", "out"])} - {tuple(forms)}
    for other in others:  # the forms give different numbers here
        assert slow_rince(own, bank, ranks, method.temperatures, list(other)) != pytest.approx(expected, rel=1e-4)


# ---- NNCLR preset against a transcription of the reference (mwritescode/nnclr-cifar100) ----
#
# ``src/utils/support_set.py`` QueueSupportSet and ``src/utils/training/loss.py`` NNCLRLoss, restated: the
# support set is a (size, d) tensor of raw projections and a pointer; a lookup L2-normalises the queue and
# the query, takes the argmax of their dot products and returns the *normalised* queue row; an update with
# a batch of b rows writes rows ptr..ptr+b-1 and advances the pointer, except when ptr + b >= size: then
# the tail ptr..size-1 gets the batch's first size - ptr rows, the rest of the batch is dropped and the
# pointer goes back to 0. The loss is 0.5 CE(norm(nn2) @ norm(p1).T / t, arange) + 0.5 CE(norm(nn1) @
# norm(p2).T / t, arange); ``src/models/nnclr.py`` looks both views up before the update, which writes
# view 1's projections, in training only.

class AuthorsSupportSet:
    def __init__(self, rows):
        self.queue, self.pointer = rows.clone(), 0

    def __call__(self, x):
        queue_l2 = F.normalize(self.queue, p=2, dim=1)
        return queue_l2[(F.normalize(x, p=2, dim=1) @ queue_l2.T).argmax(dim=1)]

    def update_queue(self, batch):
        size, b = self.queue.shape[0], batch.shape[0]
        if self.pointer + b >= size:
            self.queue[self.pointer:] = batch[:size - self.pointer].detach()
            self.pointer = 0
        else:
            self.queue[self.pointer:self.pointer + b] = batch.detach()
            self.pointer += b


def authors_nnclr_loss(pred1, pred2, nn1, nn2, t):
    def part(pred, nn):
        logits = F.normalize(nn, p=2, dim=1) @ F.normalize(pred, p=2, dim=1).T / t
        return F.cross_entropy(logits, torch.arange(pred.shape[0]))
    return part(pred1, nn2) * 0.5 + part(pred2, nn1) * 0.5


def nnclr_preset(support_set_size):
    cfg = compose_train(["method=nnclr", "backbone.widths=[4,8]", "method.projector_hidden_dims=[16,16]",
                         "method.projector_dim=8", "method.predictor_hidden_dims=[16]",
                         f"method.support_set_size={support_set_size}"])
    torch.manual_seed(0)
    return build_method(cfg, DatasetFacts(num_samples=100, num_classes=10)), cfg


def test_nnclr_preset_steps_equal_the_reference_support_set_and_loss():
    """Four training steps of the preset (batch 4, support set 12: a multiple of the batch, as in the
    recipes, so both wrap alike, at the third step): the loss and every parameter's gradient equal the reference's computed
    in float64 from the same projections, and the support set equals the reference queue after each step."""
    method, cfg = nnclr_preset(12)
    t = cfg.method.temperature
    assert t == 0.1 and cfg.method.projector_dim == 8
    method.train()
    start = torch.randn(12, 8, generator=torch.Generator().manual_seed(1)) * 3  # raw rows, not unit norm
    method.support_set.push(start, torch.arange(12))  # every row written: the reference starts full (randn)
    authors = AuthorsSupportSet(start.double())
    params = [p for p in method.parameters() if p.requires_grad]
    for step in range(4):
        x1, x2 = images(4, seed=10 + step)
        out = method((x1, x2), torch.arange(4))
        grads = torch.autograd.grad(out.loss, params)
        z1, z2 = (method.projector(method.backbone(x)).double() for x in (x1, x2))
        p1, p2 = method.predictor(z1.float()).double(), method.predictor(z2.float()).double()
        ref = authors_nnclr_loss(p1, p2, authors(z1.detach()), authors(z2.detach()), t)
        ref_grads = torch.autograd.grad(ref, params)
        assert out.loss.item() == pytest.approx(ref.item(), rel=1e-5)
        for g, h in zip(grads, ref_grads):
            torch.testing.assert_close(g, h, rtol=1e-3, atol=1e-5)  # float32 convolutions on both sides
        method.after_step(out.memory, step, 4)
        authors.update_queue(z1.detach())
        torch.testing.assert_close(method.support_set.embeddings.double(), authors.queue, rtol=1e-6, atol=1e-6)
        assert int(method.support_set.ptr) == authors.pointer


def test_nnclr_documented_differences_from_the_reference_support_set():
    """README's fidelity table: (1) a batch that runs past the end wraps to the start (the reference drops
    the rows past the end and restarts at 0); (2) before any write the positive is the view's own
    projection (the reference looks up its randn rows)."""
    method, _ = nnclr_preset(10)
    authors = AuthorsSupportSet(method.support_set.embeddings.double())
    x = torch.randn(4, 8)
    torch.testing.assert_close(method.lookup(x, torch.arange(4))[0], F.normalize(x, dim=1))
    assert not torch.allclose(authors(x.double()).float(), F.normalize(x, dim=1))
    batches = [torch.randn(4, 8, generator=torch.Generator().manual_seed(s)) for s in range(3)]
    for batch in batches:  # rows 0-3, 4-7, then 8, 9 and (suite) 0, 1
        method.support_set.push(batch, torch.arange(4))
        authors.update_queue(batch.double())
    torch.testing.assert_close(method.support_set.embeddings[4:].double(), authors.queue[4:])
    torch.testing.assert_close(method.support_set.embeddings[:2], batches[2][2:])  # wrapped to the start
    torch.testing.assert_close(authors.queue[:4].float(), batches[0])  # dropped by the reference
    assert (int(method.support_set.ptr), authors.pointer) == (2, 0)


# ---- RINCE presets against a transcription of the reference (boschresearch/rince, branch cifar, losses.py) ----
#
# ``ContrastiveRanking`` restated (``get_similar_labels``, ``compute_InfoNCE_classSimilarity``, ``forward``,
# ``sum_in_log``, ``sum_out_log``, ``ContrastiveRankingLoss``), for the README's command lines: each class's
# list is [itself, its superclass siblings, every other class in index order] with scores [1, 0.75.., 0..];
# per anchor row these lists and scores; class columns kept where some row scores >= the threshold, then
# the first n_sim_classes of them (the scores are cut to n_sim_classes without that column filter, as the
# code does); one bank mask per column (bank label == column class); one_loss_per_rank merges the columns
# of equal score into one mask per distinct score, highest first, with tau = t_min + (1 - s)(t_max - t_min).
# Then per rank i: rank 0 removes its mask (minus the threshold mask of column 0) from the negatives and
# keeps it as positives, with the own key's logit prepended; a later rank (use_same_and_similar_class)
# uses the union of all rank masks as positives and removes it from the (already reduced) negatives; the
# SCL command lines (threshold 0, no use_same_and_similar_class) just move the mask. "in": softmax of
# [pos, neg] / tau, sum of the positive part, rows with sum <= 1e-7 dropped, mean of -log; "out":
# exp(pos/tau) / (exp(pos/tau) + sum exp(neg/tau)) per positive, entries <= 1e-7 dropped, mean of -log;
# the loss is the mean of the rank terms. The keys are enqueued after the logits.

def authors_class_lists(num_classes, group_of_class):
    lists, scores = [], []
    for c in range(num_classes):
        similar = [c] + [d for d in range(num_classes) if d != c and group_of_class[d] == group_of_class[c]]
        others = [d for d in range(num_classes) if d not in similar]
        score = torch.tensor([0.75] * len(similar) + [0.0] * len(others), dtype=torch.float64)
        score[0] = 1
        lists.append(torch.tensor(similar + others))
        scores.append(score)
    return lists, scores


def authors_rince_loss(anchor, pos, labels, bank, bank_labels, group_of_class, opt):
    lists, scores = authors_class_lists(len(group_of_class), group_of_class)
    tau = lambda s: opt["min_tau"] + (1 - s) * (opt["max_tau"] - opt["min_tau"])  # noqa: E731
    sim_labels = torch.stack([lists[y] for y in labels.tolist()])
    sim_sims = torch.stack([scores[y] for y in labels.tolist()])
    leq = sim_sims >= opt["similarity_threshold"]
    keep = leq.sum(dim=0) > 0
    sim_labels, leq = sim_labels[:, keep][:, :opt["n_sim_classes"]], leq[:, keep][:, :opt["n_sim_classes"]]
    sim_sims = sim_sims[:, :opt["n_sim_classes"]]
    below = ~leq
    use_all_above = opt["similarity_threshold"] > 0
    l_pos = (anchor * pos).sum(dim=1, keepdim=True)
    masks = [(bank_labels[:, None] == sim_labels[None, :, i]).T for i in range(sim_labels.shape[1])]
    threshold_masks = [below[:, i:i + 1].repeat(1, bank.shape[0]) for i in range(sim_labels.shape[1])] \
        if use_all_above else []
    taus = [tau(sim_sims[:, i]) for i in range(sim_labels.shape[1])]
    if opt["one_loss_per_rank"]:
        distinct = [s for s in reversed(sim_sims.unique(sorted=True)) if s > -1]
        new_masks, taus = [], [tau(torch.ones_like(taus[0]) * s) for s in distinct]
        for s in distinct:
            merged = torch.zeros_like(masks[0])
            for i in range(sim_labels.shape[1]):
                same_score = sim_sims[:, i] == s
                merged[same_score] = merged[same_score] | masks[i][same_score]
            new_masks.append(merged)
        masks = new_masks
    l_class_pos = anchor @ bank.T
    l_neg = l_class_pos.clone()

    def sum_in_log(p, n, t):
        soft = F.softmax(torch.cat([p, n], dim=1) / t, dim=1)
        total = soft[:, :p.shape[1]].sum(1)
        total = total[total > 1e-7]
        return -torch.log(total).mean() if len(total) else torch.zeros((), dtype=p.dtype)

    def sum_out_log(p, n, t):
        p_exp = torch.exp(p / t)
        scores_ = p_exp / (p_exp + torch.exp(n / t).sum(dim=1, keepdim=True))
        scores_ = scores_[scores_ > 1e-7]
        return -torch.log(scores_).mean() if len(scores_) else torch.zeros((), dtype=p.dtype)

    terms = []
    for i, mask in enumerate(masks):
        if opt["use_same_and_similar_class"] and i != 0:
            mask = masks[-1]
            for j in range(len(masks) - 1):
                mask = mask | masks[j]
            l_neg[mask & ~threshold_masks[i]] = -float("inf")
            cur = l_class_pos.clone()
            cur[~mask] = -float("inf")
            cur[threshold_masks[i]] = -float("inf")
        elif use_all_above or (opt["use_same_and_similar_class"] and i == 0):
            l_neg[mask & ~threshold_masks[i]] = -float("inf")
            cur = l_class_pos.clone()
            cur[~mask] = -float("inf")
            cur[threshold_masks[i]] = -float("inf")
        else:
            l_neg[mask] = -float("inf")
            cur = l_class_pos.clone()
            cur[~mask] = -float("inf")
        t = taus[i].view(-1, 1)
        if i == 0:
            cur = torch.cat([l_pos, cur], dim=1)
        if opt["mixed_out_in"] and i == 0:
            terms.append(sum_out_log(cur, l_neg, t))
        elif opt["do_sum_in_log"]:
            terms.append(sum_in_log(cur, l_neg, t))
        else:
            terms.append(sum_out_log(cur, l_neg, t))
        if opt["use_same_and_similar_class"] and i != 0:
            break
    return sum(terms) / len(terms)


RINCE_README = dict(min_tau=0.1, max_tau=0.6, similarity_threshold=0.5, n_sim_classes=5, one_loss_per_rank=True,
                    use_same_and_similar_class=True, do_sum_in_log=True, mixed_out_in=False)
SCL_README = dict(min_tau=0.1, max_tau=0.1, similarity_threshold=0.0, n_sim_classes=1, one_loss_per_rank=False,
                  use_same_and_similar_class=False, do_sum_in_log=True, mixed_out_in=False)


@pytest.mark.parametrize("overrides, opt", [
    ([], RINCE_README),  # README "RINCE in"
    (["method.variant=out"], {**RINCE_README, "do_sum_in_log": False}),  # README "RINCE out"
    (["method.variant=out_in"], {**RINCE_README, "mixed_out_in": True}),  # out-in as the loss reads it
    # the cifar code with its argparse default use_same_and_similar_class=False: rank 2 = siblings only
    (["method.cumulative_ranks=false"], {**RINCE_README, "use_same_and_similar_class": False}),
    (["method.rank_similarities=[1.0]", "method.temperature_max=0.1"], SCL_README),  # README "SCL in"
    (["method.rank_similarities=[1.0]", "method.temperature_max=0.1", "method.variant=out"],
     {**SCL_README, "do_sum_in_log": False}),  # README "SCL out"
], ids=["rince_in", "rince_out", "rince_out_in", "rince_siblings", "scl_in", "scl_out"])
def test_rince_preset_steps_equal_the_reference_ranking_loss(overrides, opt):
    """Two training steps of the rince preset (15 classes in 3 superclasses of 5, as CIFAR-100's 20 of 5;
    an 18-row bank, two batches written): the loss and the query encoder's gradients equal the reference's, in
    float64 from the same embeddings, and each step's keys enter the bank with their labels."""
    group_of_class = torch.arange(15) % 3
    cfg = compose_train(["method=rince", "backbone.widths=[4,8]", "method.projector_hidden_dims=[16]",
                         "method.projector_dim=8", "method.bank_size=18", *overrides])
    torch.manual_seed(0)
    method = build_method(cfg, DatasetFacts(num_samples=100, num_classes=15, coarse_of_class=group_of_class)).train()
    g = torch.Generator().manual_seed(4)
    batches = [(F.normalize(torch.randn(6, 8, generator=g), dim=1), torch.randint(0, 6, (6,), generator=g))
               for _ in range(2)]
    for rows, row_labels in batches:  # two earlier batches of keys; 6 rows still random, label -1
        method.queue.push(rows, row_labels)
    # the reference's bank holds the same rows newest first (it prepends)
    bank = torch.cat([batches[1][0], batches[0][0], method.queue.embeddings[12:]]).double()
    bank_labels = torch.cat([batches[1][1], batches[0][1], method.queue.labels[12:]])
    params = method.query_parameters()
    for step in range(2):
        x1, x2 = images(6, seed=20 + step)
        labels = torch.randint(0, 7, (6,), generator=g)
        out = method((x1, x2), labels)
        grads = torch.autograd.grad(out.loss, params)
        q = F.normalize(method.projector(method.backbone(x1)), dim=1).double()
        k = method.key_encoder(x2).double()
        ref = authors_rince_loss(q, k, labels, bank, bank_labels, group_of_class.tolist(), opt)
        ref_grads = torch.autograd.grad(ref, params)
        assert out.loss.item() == pytest.approx(ref.item(), rel=1e-5)
        for a, b in zip(grads, ref_grads):
            torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)  # float32 convolutions on both sides
        method.after_step(out.memory, step, 2)
        bank = torch.cat([k, bank[:-6]])  # the reference's enqueue: prepend, drop the oldest rows
        bank_labels = torch.cat([labels, bank_labels[:-6]])
        # the same rows (in another order: the suite's FIFO pointer, the reference's prepend)
        order = lambda e, y: sorted(zip(y.tolist(), e.double().flatten(1).tolist()))  # noqa: E731
        ours = order(method.queue.embeddings, method.queue.labels)
        for (la, ea), (lb, eb) in zip(ours, order(bank, bank_labels)):
            assert la == lb and ea == pytest.approx(eb, abs=1e-6)


def test_rince_bank_not_a_multiple_of_the_batch_evicts_other_rows_of_the_oldest_batch_than_the_reference():
    """README's RINCE text: with a bank of 10 and batches of 4 both banks hold the 10 newest keys of two
    whole batches and the oldest one's two rows, but the reference (prepend, then cut the last rows:
    ``ContrastiveRanking.enqueue``) keeps that batch's first two rows, the suite's FIFO pointer its last two."""
    cfg = compose_train(["method=rince", "backbone.widths=[4,8]", "method.projector_hidden_dims=[16]",
                         "method.projector_dim=8", "method.bank_size=10"])
    torch.manual_seed(0)
    method = build_method(cfg, DatasetFacts(num_samples=100, num_classes=15,
                                            coarse_of_class=torch.arange(15) % 3)).train()
    bank, bank_labels = method.queue.embeddings.clone(), method.queue.labels.clone()
    batches = [(F.normalize(torch.randn(4, 8), dim=1), torch.arange(4) + 4 * b) for b in range(3)]
    for rows, labels in batches:
        method.after_step((rows, labels), 0, 1)
        bank, bank_labels = torch.cat([rows, bank[:-4]]), torch.cat([labels, bank_labels[:-4]])
    assert sorted(bank_labels.tolist()) == [0, 1, *range(4, 12)]
    assert sorted(method.queue.labels.tolist()) == [2, 3, *range(4, 12)]
    for label in [*range(4, 12)]:  # the two whole batches: the same rows
        torch.testing.assert_close(method.queue.embeddings[method.queue.labels == label], bank[bank_labels == label])


# ---- SupCon preset against a transcription of HobbitLong/SupContrast losses.py SupConLoss ----
#
# Restated for labels and contrast_mode 'all': features [bsz, n_views, d] unbound along the views and
# stacked (view 1 rows first) as both anchors and contrast set; logits = anchor . contrast / t minus each
# row's (detached) maximum; the label-equality mask tiled n_views x n_views with the diagonal zeroed; the
# log-probability over every column but the anchor itself; the mean of it over the positives (a count
# below 1e-6 replaced by 1); the loss -(t / base_t) times that, averaged over all anchors.

def authors_supcon_loss(features, labels, temperature, base_temperature=0.07):
    bsz, n_views = features.shape[:2]
    mask = (labels.view(-1, 1) == labels.view(1, -1)).to(features.dtype)
    contrast = torch.cat(torch.unbind(features, dim=1), dim=0)
    logits = contrast @ contrast.T / temperature
    logits = logits - logits.max(dim=1, keepdim=True).values.detach()
    mask = mask.repeat(n_views, n_views)
    logits_mask = torch.ones_like(mask).scatter(1, torch.arange(bsz * n_views).view(-1, 1), 0)
    mask = mask * logits_mask
    log_prob = logits - torch.log((torch.exp(logits) * logits_mask).sum(1, keepdim=True))
    pairs = mask.sum(1)
    pairs = torch.where(pairs < 1e-6, torch.ones_like(pairs), pairs)
    loss = -(temperature / base_temperature) * (mask * log_prob).sum(1) / pairs
    return loss.view(n_views, bsz).mean()


def test_supcon_preset_equals_the_authors_loss_up_to_the_documented_t_over_base_t_factor():
    """README's fidelity table: the suite leaves out the code's t / base_t factor (base_t = 0.07), so at
    the preset's t = 0.1 the code's loss and gradients are 0.1 / 0.07 times the suite's; with
    base_t = t they are equal."""
    from helpers import RawFeatures

    cfg = compose_train(["method=supcon"])
    t = cfg.method.temperature
    assert t == 0.1 and cfg.method.bank_size == 0
    method = build_method(cfg, DatasetFacts(num_samples=100, num_classes=10))
    method.backbone, method.projector = RawFeatures(6), torch.nn.Identity()
    g = torch.Generator().manual_seed(5)
    x1, x2 = torch.randn(8, 6, generator=g), torch.randn(8, 6, generator=g)
    labels = torch.tensor([0, 1, 0, 2, 1, 0, 3, 2])  # class 3 has one image: its two views are each other's only positive
    a, b = x1.clone().requires_grad_(), x2.clone().requires_grad_()
    out = method((a, b), labels)
    ga, gb = torch.autograd.grad(out.loss, (a, b))
    for base, factor in [(0.07, 0.1 / 0.07), (t, 1.0)]:
        c, d = x1.double().requires_grad_(), x2.double().requires_grad_()
        features = torch.stack([F.normalize(c, dim=1), F.normalize(d, dim=1)], dim=1)
        ref = authors_supcon_loss(features, labels, t, base)
        ha, hb = torch.autograd.grad(ref, (c, d))
        assert out.loss.item() * factor == pytest.approx(ref.item(), rel=1e-5)
        torch.testing.assert_close(ga.double() * factor, ha, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(gb.double() * factor, hb, rtol=1e-4, atol=1e-6)
