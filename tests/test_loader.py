"""Training batch order: seeded per epoch, resumable mid-epoch, and split evenly across DDP ranks."""
import pytest
import torch

from cl_suite.data.loader import TrainBatches
from cl_suite.data.types import ImageSplit


def split(n=50):
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 3, 2, 2).contiguous()
    return ImageSplit(labels=torch.arange(n) % 5, images=images)


def indices(batches, epoch, start=0):
    return [b.indices.tolist() for b in batches.epoch(epoch, start_step=start)]


def test_epochs_are_seeded_permutations_without_the_incomplete_tail():
    b = TrainBatches(split(), batch_size=8, device=torch.device("cpu"), seed=3)
    e0 = indices(b, 0)
    assert len(e0) == len(b) == 6 and all(len(x) == 8 for x in e0)
    assert len({i for x in e0 for i in x}) == 48
    assert e0 == indices(TrainBatches(split(), 8, torch.device("cpu"), seed=3), 0)
    assert e0 != indices(b, 1)
    assert e0[2:] == indices(b, 0, start=2)  # a mid-epoch resume sees the remaining batches


def test_batches_carry_the_images_and_labels_of_their_indices():
    b = TrainBatches(split(), batch_size=8, device=torch.device("cpu"), seed=0)
    for batch in b.epoch(0):
        assert torch.equal(batch.images[:, 0, 0, 0].long(), batch.indices)
        assert torch.equal(batch.labels, batch.indices % 5)


def test_ranks_split_each_global_batch_into_contiguous_slices():
    single = indices(TrainBatches(split(), 8, torch.device("cpu"), seed=1), 0)
    ranks = [indices(TrainBatches(split(), 8, torch.device("cpu"), seed=1, rank=r, world_size=2), 0) for r in (0, 1)]
    for step, global_batch in enumerate(single):
        assert ranks[0][step] + ranks[1][step] == global_batch


def test_lazy_split_goes_through_workers_with_the_same_order():
    s = split()
    lazy = ImageSplit(labels=s.labels, read_image=lambda i: s.images[i])
    a = TrainBatches(s, 8, torch.device("cpu"), seed=2)
    b = TrainBatches(lazy, 8, torch.device("cpu"), seed=2, num_workers=0)
    for x, y in zip(a.epoch(0), b.epoch(0)):
        assert torch.equal(x.images, y.images) and torch.equal(x.indices, y.indices)


def test_bad_batch_sizes_are_named():
    with pytest.raises(ValueError, match="divisible"):
        TrainBatches(split(), 9, torch.device("cpu"), seed=0, world_size=2)
    with pytest.raises(ValueError, match="larger than the 50"):
        TrainBatches(split(), 64, torch.device("cpu"), seed=0)


def test_every_seed_and_epoch_has_its_own_order():
    """The order depends on the seed as well as the epoch, and (seed, epoch) pairs never share one: seed 3's
    epoch 1 is not seed 4's epoch 0 (runs of a multi-seed sweep would see shifted copies of one order)."""
    orders = {}
    for seed in range(5):
        b = TrainBatches(split(), batch_size=8, device=torch.device("cpu"), seed=seed)
        for epoch in range(5):
            orders[(seed, epoch)] = tuple(i for x in indices(b, epoch) for i in x)
    assert len(set(orders.values())) == len(orders)


def test_a_resolved_cuda_device_carries_the_index_its_tensors_report(monkeypatch):
    """``trainer.device=auto``/``cuda`` on a GPU: the loader keeps the data on the device and indexes it
    there only when ``images.device == device``; a tensor on the GPU reports ``cuda:0``, and
    ``torch.device("cuda") != torch.device("cuda:0")``, so an index-less device sent every batch through
    the host-data branch (a CPU index copied to the GPU and a host sync per step)."""
    from cl_suite.distributed import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    assert torch.device("cuda") != torch.device("cuda", 0)  # why the index matters
    assert resolve_device("auto") == torch.device("cuda", 0)
    assert resolve_device("cuda") == torch.device("cuda", 0)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    assert resolve_device("cpu") == torch.device("cpu")


# ---- positive_pairs=same_class (HCL's cifar100_true_label: oracle positives) ----

def pairs(batches, epoch, start=0):
    return [(b.indices.tolist(), b.images[:, 0, 0, 0].tolist(), b.pair_images[:, 0, 0, 0].tolist())
            for b in batches.epoch(epoch, start_step=start)]


def test_same_class_partners_share_the_class_and_are_seeded_resumable_and_split_like_the_images():
    b = TrainBatches(split(), 8, torch.device("cpu"), seed=3, positive_pairs="same_class")
    e0 = pairs(b, 0)
    assert [x[0] for x in e0] == indices(TrainBatches(split(), 8, torch.device("cpu"), seed=3), 0)  # same order
    for idx, first, second in e0:
        assert first == idx and [p % 5 for p in second] == [i % 5 for i in idx]  # the image's class (labels i % 5)
    assert e0 == pairs(TrainBatches(split(), 8, torch.device("cpu"), seed=3, positive_pairs="same_class"), 0)
    assert e0 != pairs(b, 1) and e0[2:] == pairs(b, 0, start=2)  # a mid-epoch resume draws the same partners
    ranks = [pairs(TrainBatches(split(), 8, torch.device("cpu"), seed=3, rank=r, world_size=2,
                                positive_pairs="same_class"), 0) for r in (0, 1)]
    for step, (idx, _, second) in enumerate(e0):
        assert ranks[0][step][2] + ranks[1][step][2] == second
    lazy = ImageSplit(labels=split().labels, read_image=lambda i: split().images[i])
    files = TrainBatches(lazy, 8, torch.device("cpu"), seed=3, num_workers=0, positive_pairs="same_class")
    for x, y in zip(b.epoch(0), files.epoch(0)):
        assert torch.equal(x.images, y.images) and torch.equal(x.pair_images, y.pair_images)
        assert torch.equal(x.indices, y.indices) and torch.equal(x.labels, y.labels)


def test_same_class_partners_are_uniform_over_the_class_the_image_itself_included():
    """HCL draws ``sample(label_index[target], 1)``: every image of the class, the anchor's own included,
    with probability 1 / class size. 40 images in 4 classes of 10; 2,000 epochs of draws for image 0."""
    from cl_suite.data.loader import same_class_partners

    labels = torch.arange(40) % 4
    order = torch.arange(40)
    counts = torch.zeros(40)
    for epoch in range(2000):
        counts[same_class_partners(labels, order, seed=0, epoch=epoch)[0]] += 1
    members = (labels == 0).nonzero().flatten()
    assert counts[labels != 0].sum() == 0 and counts[members].sum() == 2000
    expected = 2000 / 10
    assert ((counts[members] - expected).abs() < 5 * expected ** 0.5).all()  # each ~200 +- 14
    assert counts[0] > 0  # itself included


def test_same_class_pairs_need_every_label_and_a_known_value():
    s = split()
    unlabelled = ImageSplit(labels=torch.where(s.labels == 0, -1, s.labels), images=s.images)
    with pytest.raises(ValueError, match=r"same_class needs a label for every pre-training image; 10 of the 50"):
        TrainBatches(unlabelled, 8, torch.device("cpu"), seed=0, positive_pairs="same_class")
    with pytest.raises(ValueError, match=r"trainer.positive_pairs='other' is not allowed"):
        TrainBatches(s, 8, torch.device("cpu"), seed=0, positive_pairs="other")
    plain = next(TrainBatches(s, 8, torch.device("cpu"), seed=0).epoch(0))
    assert plain.pair_images is None


def test_a_run_with_same_class_pairs_augments_each_second_view_from_the_partners(tmp_path, monkeypatch):
    """A real HCL run on digits: every training step augments its second view from a second source (the
    partners; that they share the anchors' classes is tested above), and other frameworks and bad values
    are refused at start-up."""
    from cl_suite.data.augment import TwoViewAugment
    from cl_suite.engine.trainer import train
    from cl_suite.engine.validation import validate_train_config
    from cl_suite.errors import ConfigError
    from helpers import TINY, compose_train

    seen = []
    original = TwoViewAugment.__call__

    def spy(self, images, generator, second_images=None):
        seen.append((images.clone(), None if second_images is None else second_images.clone()))
        return original(self, images, generator, second_images)

    monkeypatch.setattr(TwoViewAugment, "__call__", spy)
    cfg = compose_train(TINY + ["method=hcl", "trainer.positive_pairs=same_class", "trainer.eval_at_init=false",
                                "evaluation.linear.epochs=1"], tmp_path)
    assert train(cfg)["step"] == 2 * (1437 // 64)  # digits: 1,437 training images
    assert len(seen) == 44 and all(second is not None for _, second in seen)
    assert any(not torch.equal(first, second) for first, second in seen)  # other images of the classes
    for overrides, message in [(["method=moco"], r"trainer.positive_pairs=same_class is not allowed with method"),
                               (["method=simclr", "trainer.positive_pairs=pairs"],
                                r"trainer.positive_pairs='pairs' is not one of")]:
        bad = compose_train(TINY + overrides + ["trainer.positive_pairs=same_class"] * (len(overrides) == 1))
        with pytest.raises(ConfigError, match=message):
            validate_train_config(bad)
