"""Infinite, exactly resumable random sampler that also shards draws across ranks."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class ResumableRandomSampler(Sampler[tuple[int, int]]):
    """Yields (draw, index) forever; draw k maps to permutation(seed + k // n)[k % n].

    Draws form one global stream; rank r takes draws start + r, start + r + world_size, ...
    so ranks never share a draw and resuming with start = draws already consumed
    (global_step * batch_size * accumulate * world_size) continues the stream exactly.
    The draw is passed on so the dataset can seed per-item randomness with it.
    """

    def __init__(self, num_items: int, seed: int = 0, start: int = 0, rank: int = 0, world_size: int = 1):
        if num_items < 1:
            raise ValueError(f"num_items must be >= 1, got {num_items}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        if start < 0 or seed < 0:
            raise ValueError(f"start and seed must be >= 0, got start={start}, seed={seed}")
        self.num_items, self.seed, self.start = int(num_items), int(seed), int(start)
        self.rank, self.world_size = int(rank), int(world_size)

    def permutation(self, epoch: int) -> torch.Tensor:
        """The order of items in one pass over the data."""
        generator = torch.Generator().manual_seed(self.seed + epoch)
        return torch.randperm(self.num_items, generator=generator)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        draw = self.start + self.rank
        epoch, perm = -1, None
        while True:
            if draw // self.num_items != epoch:
                epoch = draw // self.num_items
                perm = self.permutation(epoch)
            yield draw, int(perm[draw % self.num_items])
            draw += self.world_size
