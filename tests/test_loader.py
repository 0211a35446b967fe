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
