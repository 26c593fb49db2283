"""ResumableRandomSampler: exact resume and disjoint rank shards."""

from __future__ import annotations

from itertools import islice

import pytest
import torch

from idvid.data.sampler import ResumableRandomSampler


def take(sampler, count):
    return list(islice(iter(sampler), count))


def test_draws_follow_seeded_epoch_permutations():
    stream = take(ResumableRandomSampler(5, seed=3), 15)
    assert [draw for draw, _ in stream] == list(range(15))
    for epoch in range(3):
        expected = torch.randperm(5, generator=torch.Generator().manual_seed(3 + epoch)).tolist()
        assert [index for _, index in stream[epoch * 5 : (epoch + 1) * 5]] == expected
    assert take(ResumableRandomSampler(5, seed=4), 15) != stream


def test_resume_continues_the_stream_exactly():
    full = take(ResumableRandomSampler(7, seed=1), 40)
    for start in (1, 7, 13):
        assert take(ResumableRandomSampler(7, seed=1, start=start), 40 - start) == full[start:]


def test_ranks_are_disjoint_and_cover_the_stream():
    world, per_rank, start = 3, 10, 6
    full = take(ResumableRandomSampler(4, seed=0, start=start), world * per_rank)
    shards = [
        take(ResumableRandomSampler(4, seed=0, start=start, rank=rank, world_size=world), per_rank)
        for rank in range(world)
    ]
    draws = [{draw for draw, _ in shard} for shard in shards]
    for a in range(world):
        for b in range(a + 1, world):
            assert not draws[a] & draws[b]
    assert sorted(item for shard in shards for item in shard) == sorted(full)


def test_is_infinite_without_len():
    sampler = ResumableRandomSampler(2)
    with pytest.raises(TypeError):
        len(sampler)
    assert len(take(sampler, 1000)) == 1000


def test_rejects_bad_rank():
    with pytest.raises(ValueError, match="rank=2, world_size=2"):
        ResumableRandomSampler(4, rank=2, world_size=2)
