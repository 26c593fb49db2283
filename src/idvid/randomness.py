"""Per-sample random draws that do not depend on how the global batch is split across processes.

Every draw is made for the *global* batch (``world_size * local_batch`` samples) from one
generator seeded identically on every rank, and each rank keeps its own slice. So a
data-parallel run draws, sample for sample, what a single process with the same global
batch draws (timesteps, noise, recipe coins, VAE posterior samples), and losses and
gradients agree between the two.
"""

from __future__ import annotations

import torch


class BatchRandom:
    def __init__(self, generator: torch.Generator, rank: int = 0, world_size: int = 1):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank={rank} must be in [0, world_size={world_size}).")
        self.generator, self.rank, self.world_size = generator, rank, world_size

    def _slice(self, draw: torch.Tensor, local_batch: int) -> torch.Tensor:
        return draw[self.rank * local_batch : (self.rank + 1) * local_batch]

    def rand(self, local_batch: int, *shape: int) -> torch.Tensor:
        """Uniform [0, 1) of shape ``[local_batch, *shape]``."""
        draw = torch.rand(self.world_size * local_batch, *shape, generator=self.generator)
        return self._slice(draw, local_batch)

    def randn(self, local_batch: int, *shape: int) -> torch.Tensor:
        """Standard normal of shape ``[local_batch, *shape]``."""
        draw = torch.randn(self.world_size * local_batch, *shape, generator=self.generator)
        return self._slice(draw, local_batch)

    def rand_shared(self, *shape: int) -> torch.Tensor:
        """Uniform [0, 1) of ``shape``, one draw for the whole global batch: the same on every rank
        (e.g. which identity tokens a batch drops)."""
        return torch.rand(*shape, generator=self.generator)

    def randint(self, high: int, local_batch: int) -> torch.Tensor:
        draw = torch.randint(0, high, (self.world_size * local_batch,), generator=self.generator)
        return self._slice(draw, local_batch)

    def randn_like(self, tensor: torch.Tensor) -> torch.Tensor:
        """Normal noise shaped like ``tensor`` (first axis = this rank's batch), on its device and dtype."""
        return self.randn(*tensor.shape).to(tensor)

    def coin(self, probability: float, local_batch: int) -> torch.Tensor:
        """Per-sample booleans, True with ``probability``. Always draws, whatever the probability, so
        switching one knob never shifts another's draws."""
        return self.rand(local_batch) < probability
