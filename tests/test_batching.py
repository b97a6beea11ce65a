import numpy as np
import pytest
import torch
from torch.utils.data import BatchSampler, DistributedSampler, RandomSampler

from avguide.data.batching import LengthBatchSampler, length_batches


class Items:
    def __init__(self, lengths):
        self.lengths = list(lengths)

    def __len__(self):
        return len(self.lengths)

    def __getitem__(self, i):
        return i


LENGTHS = np.random.default_rng(0).integers(20, 120, 403).tolist()


def padding(batches, lengths):
    sizes = [max(lengths[i] for i in b) * len(b) for b in batches]
    return 1 - sum(lengths[i] for b in batches for i in b) / sum(sizes)


def epochs(sampler, n):
    return [list(sampler) for _ in range(n)]


@pytest.mark.parametrize("drop_last", [False, True])
def test_an_epoch_is_every_drawn_index_once_in_as_many_batches_as_batchsampler(drop_last):
    data = Items(LENGTHS)
    ours = length_batches(data, 16, torch.Generator().manual_seed(3), drop_last=drop_last)
    plain = BatchSampler(RandomSampler(data, generator=torch.Generator().manual_seed(3)), 16, drop_last)
    for batches, reference in zip(epochs(ours, 3), epochs(plain, 3)):
        assert len(batches) == len(ours) == len(reference)
        assert sorted(len(b) for b in batches) == sorted(len(b) for b in reference)
        drawn = sorted(i for b in batches for i in b)
        assert drawn == sorted(i for b in reference for i in b)  # the same draws (drop_last: the same ones left out)
        assert len(set(drawn)) == len(drawn)


def test_batches_have_little_padding_and_change_every_epoch():
    data = Items(LENGTHS)
    ours = epochs(length_batches(data, 16, torch.Generator().manual_seed(0)), 2)
    plain = epochs(BatchSampler(RandomSampler(data, generator=torch.Generator().manual_seed(0)), 16, False), 1)[0]
    assert padding(plain, LENGTHS) > 0.2  # lengths 20-119: random batches of 16 are a quarter padding
    assert padding(ours[0], LENGTHS) < 0.06 and padding(ours[1], LENGTHS) < 0.06
    assert {tuple(sorted(b)) for b in ours[0]} != {tuple(sorted(b)) for b in ours[1]}
    lengths_in_order = [max(LENGTHS[i] for i in b) for b in ours[0]]
    assert lengths_in_order != sorted(lengths_in_order)  # the batch order is shuffled, not short to long


def test_the_seed_fixes_the_batches():
    data = Items(LENGTHS)
    a, b, c = (epochs(length_batches(data, 8, torch.Generator().manual_seed(s)), 2) for s in (5, 5, 6))
    assert a == b and a != c


def test_each_ddp_rank_batches_its_own_shard():
    """Lightning rebuilds the batch sampler as cls(DistributedSampler, batch_size=, drop_last=) under DDP."""
    data = Items(LENGTHS)
    shards = []
    for rank in range(2):
        dist = DistributedSampler(data, num_replicas=2, rank=rank, shuffle=True, seed=1)
        sampler = LengthBatchSampler(dist, batch_size=8, drop_last=True)
        shards.append({i for b in sampler for i in b})
        assert padding(list(sampler), LENGTHS) < 0.05
    assert not shards[0] & shards[1] and len(shards[0]) == len(shards[1]) == 200


def test_a_dataset_without_lengths_is_refused():
    with pytest.raises(TypeError, match="no `lengths`.*list"):
        LengthBatchSampler(RandomSampler(list(range(10))), 4, False)
