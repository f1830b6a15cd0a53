import itertools

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset, DistributedSampler

from discobox.data.loader import (
    PIXEL_MEAN,
    GroupedBatchSampler,
    aspect_groups,
    build_test_loader,
    build_train_loader,
    collate,
)
from discobox.data.transforms import RandomHorizontalFlip
from discobox.structures import Instances


class TinyDataset(Dataset):
    """Items whose image encodes the index; landscape for even indices, portrait for odd ones."""

    def __init__(self, n, flip=True):
        self.n = n
        self.loads = 0
        self.flip = RandomHorizontalFlip(p=0.5) if flip else None

    def __len__(self):
        return self.n

    @property
    def aspect_ratios(self):
        return [1.5 if i % 2 == 0 else 0.5 for i in range(self.n)]

    def __getitem__(self, i):
        self.loads += 1
        h, w = (8, 12) if i % 2 == 0 else (12, 8)
        image = np.zeros((h, w, 3), dtype=np.uint8)
        image[:, 0] = 255  # the marked left column shows flips
        image[:, 1] = i
        inst = Instances(boxes=torch.tensor([[0.0, 0.0, 2.0, 2.0]]), labels=torch.tensor([i % 3]))
        sample = {"image": image, "instances": inst, "image_id": i, "orig_size": (h, w)}
        return self.flip(sample) if self.flip else sample


def _sample(h, w, value, image_id):
    image = np.full((h, w, 3), value, dtype=np.uint8)
    return {
        "image": image,
        "instances": Instances.empty(),
        "image_id": image_id,
        "file_name": f"{image_id}.png",
        "orig_size": (2 * h, 2 * w),
    }


def test_collate_pads_with_pixel_mean_to_multiples_of_32():
    batch = collate([_sample(50, 70, 7, 3), _sample(33, 97, 200, 4)])
    assert batch.images.dtype == torch.float32 and batch.images.shape == (2, 3, 64, 128)
    assert batch.image_sizes == [(50, 70), (33, 97)]
    assert batch.orig_sizes == [(100, 140), (66, 194)]
    assert batch.image_ids == [3, 4] and batch.file_names == ["3.png", "4.png"]
    assert len(batch.targets) == 2
    assert (batch.images[0, :, :50, :70] == 7).all()
    assert (batch.images[1, :, :33, :97] == 200).all()
    mean = torch.tensor(PIXEL_MEAN).view(3, 1)
    torch.testing.assert_close(batch.images[0, :, 50:, :].reshape(3, -1), mean.expand(3, 14 * 128))
    torch.testing.assert_close(batch.images[0, :, :, 70:].reshape(3, -1), mean.expand(3, 64 * 58))
    torch.testing.assert_close(batch.images[1, :, 33:, :].reshape(3, -1), mean.expand(3, 31 * 128))
    # exact multiples are not padded further; RGB order kept
    image = np.zeros((32, 64, 3), dtype=np.uint8)
    image[..., 0] = 1
    one = collate([{"image": image, "instances": Instances.empty(), "orig_size": (32, 64)}])
    assert one.images.shape == (1, 3, 32, 64) and one.image_ids == [-1]
    assert (one.images[0, 0] == 1).all() and (one.images[0, 1:] == 0).all()
    with pytest.raises(ValueError, match="empty"):
        collate([])


def test_grouped_batch_sampler_groups_and_determinism():
    ds = TinyDataset(23)
    groups = aspect_groups(ds)
    shard = DistributedSampler(ds, num_replicas=1, rank=0, shuffle=True, seed=5)
    sampler = GroupedBatchSampler(sampler=shard, group_ids=groups, batch_size=4)
    assert len(sampler) == 5
    sampler.set_epoch(0)
    first = list(sampler)
    assert len(first) == 5 and all(len(b) == 4 for b in first)
    assert all(len({groups[i] for i in b}) == 1 for b in first)
    assert list(sampler) == first  # same epoch, same batches
    sampler.set_epoch(1)
    assert list(sampler) != first
    sampler.set_epoch(0)
    assert list(sampler) == first


def test_grouped_sampler_completes_short_epochs():
    # 3 landscape + 3 portrait with batch 4: only leftovers, but 1 batch is owed
    groups = [1, 1, 1, 0, 0, 0]
    sampler = GroupedBatchSampler(sampler=range(6), group_ids=groups, batch_size=4)
    (batch,) = list(sampler)
    assert batch == [0, 1, 2, 0]
    single = GroupedBatchSampler(sampler=[3], group_ids=groups, batch_size=2, num_batches=2)
    assert list(single) == [[3, 3], [3, 3]]


def _run(loader, n):
    return [(b.image_ids, b.images.clone()) for b in itertools.islice(loader, n)]


def _assert_same(a, b):
    assert len(a) == len(b)
    for (ids_a, img_a), (ids_b, img_b) in zip(a, b):
        assert ids_a == ids_b
        assert torch.equal(img_a, img_b)


def test_train_loader_is_infinite_deterministic_and_resumes_exactly():
    ds = TinyDataset(16)
    loader = build_train_loader(ds, batch_size=2, num_workers=0, seed=3)
    assert loader.iters_per_epoch == 8
    full = _run(loader, 20)  # two and a half epochs
    for ids, _ in full:
        assert len({i % 2 for i in ids}) == 1  # one orientation per batch
    epoch0 = sorted(i for ids, _ in full[:8] for i in ids)
    assert epoch0 == list(range(16))  # 8 + 8 per group: an epoch visits every image once
    flips = [bool(img[0, 0, 0, 11 if ids[0] % 2 == 0 else 7] == 255) for ids, img in full]
    assert any(flips) and not all(flips)

    _assert_same(_run(build_train_loader(ds, batch_size=2, num_workers=0, seed=3), 20), full)
    other = _run(build_train_loader(ds, batch_size=2, num_workers=0, seed=4), 20)
    assert [ids for ids, _ in other] != [ids for ids, _ in full]

    for start in (5, 8, 17):
        ds.loads = 0
        resumed = build_train_loader(ds, batch_size=2, num_workers=0, seed=3, start_iter=start)
        _assert_same(_run(resumed, 20 - start), full[start:])
        assert ds.loads == 2 * (20 - start)  # skipped batches load no image


def test_train_loader_same_with_workers():
    ds = TinyDataset(12)
    ref = _run(build_train_loader(ds, batch_size=2, num_workers=0, seed=1, start_iter=3), 6)
    got = _run(build_train_loader(ds, batch_size=2, num_workers=2, seed=1, start_iter=3), 6)
    _assert_same(got, ref)


def test_train_loader_ranks_are_disjoint():
    ds = TinyDataset(16, flip=False)
    ids = []
    for rank in range(2):
        loader = build_train_loader(
            ds, batch_size=2, num_workers=0, seed=0, rank=rank, world_size=2
        )
        assert loader.iters_per_epoch == 4
        ids.append({i for b in itertools.islice(loader, 4) for i in b.image_ids})
    assert not ids[0] & ids[1]


def test_test_loader_shards_without_duplicates():
    ds = TinyDataset(10, flip=False)
    seen = []
    for rank in range(3):
        loader = build_test_loader(ds, batch_size=1, num_workers=0, rank=rank, world_size=3)
        seen.append([i for b in loader for i in b.image_ids])
        assert len(loader) == len(seen[-1])
    assert sorted(itertools.chain(*seen)) == list(range(10))
    assert [len(s) for s in seen] == [4, 3, 3]
    assert seen[0] == [0, 1, 2, 3]  # order kept within a shard
