"""Aspect-ratio grouped batch sampling, for one process or many.

Each epoch, images are shuffled within their aspect group (landscape / portrait) and cut
into *global* batches of ``batch_size x world_size`` images from one group (a group's last
batch is filled up with random images of the same group); the batch order is shuffled.
Process ``rank`` takes its ``batch_size`` slice of every global batch. The order depends only
on the seed, the epoch and the global batch size, so 8 processes x 2 images see the same
batches as 1 process x 16 images, and a resumed run continues with the same batches.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import torch
from torch.utils.data import Sampler


class GroupedBatchSampler(Sampler[list[tuple[int, int]]]):
    """Yields lists of ``(index, epoch)`` keys (see ``CocoInstances.__getitem__``)."""

    def __init__(
        self,
        group_ids: Sequence[int],
        batch_size: int,
        world_size: int = 1,
        rank: int = 0,
        seed: int = 0,
        shuffle: bool = True,
    ):
        if batch_size < 1:
            raise ValueError(f"batch size must be at least 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        if len(group_ids) == 0:
            raise ValueError("no images to sample from")
        self.group_ids = list(group_ids)
        self.batch_size = batch_size
        self.world_size = world_size
        self.rank = rank
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0
        self.start_batch = 0

    @property
    def global_batch_size(self) -> int:
        return self.batch_size * self.world_size

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch's order; skip its first ``start_batch`` batches (to resume)."""
        self.epoch = epoch
        self.start_batch = start_batch

    def num_batches(self) -> int:
        """Batches per epoch (the same on every process)."""
        total = 0
        for group in set(self.group_ids):
            count = self.group_ids.count(group)
            total += -(-count // self.global_batch_size)
        return total

    def global_batches(self, epoch: int) -> list[list[int]]:
        """The epoch's global batches, each of ``batch_size x world_size`` indices."""
        generator = torch.Generator().manual_seed(self.seed * 100003 + epoch)
        size = self.global_batch_size
        batches: list[list[int]] = []
        ids = torch.tensor(self.group_ids)
        for group in sorted(set(self.group_ids)):
            members = (ids == group).nonzero().squeeze(1)
            if self.shuffle:
                members = members[torch.randperm(len(members), generator=generator)]
            missing = -len(members) % size
            if missing:
                fill = torch.randint(len(members), (missing,), generator=generator)
                members = torch.cat([members, members[fill]])
            batches += members.view(-1, size).tolist()
        if self.shuffle:
            batches = [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]
        return batches

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        lo, hi = self.rank * self.batch_size, (self.rank + 1) * self.batch_size
        for batch in self.global_batches(self.epoch)[self.start_batch:]:
            yield [(index, self.epoch) for index in batch[lo:hi]]

    def __len__(self) -> int:
        return max(self.num_batches() - self.start_batch, 0)
