"""Circular replay buffer of chunk-level transitions, preallocated on the training device."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor


class Transitions(NamedTuple):
    """A batch of macro transitions; ``discount`` is gamma^k for a macro step of k env steps.

    ``terminal`` is 1.0 when the episode ended by success termination (no bootstrap) and 0.0 otherwise
    (time-limit truncation still bootstraps from ``next_obs``).
    """

    obs: Tensor  # (B, obs_dim)
    action: Tensor  # (B, action_dim)
    reward: Tensor  # (B,)
    next_obs: Tensor  # (B, obs_dim)
    terminal: Tensor  # (B,)
    discount: Tensor  # (B,)


class ReplayBuffer:
    """Fixed-capacity FIFO of :class:`Transitions`; the oldest entries are overwritten once full."""

    def __init__(self, capacity: int, obs_dim: int, action_dim: int, device: torch.device | str = "cpu"):
        if capacity < 1:
            raise ValueError(f"Replay buffer capacity must be >= 1, got {capacity}.")
        self.capacity = capacity
        self.device = torch.device(device)
        self.storage = Transitions(
            obs=torch.zeros(capacity, obs_dim, device=self.device),
            action=torch.zeros(capacity, action_dim, device=self.device),
            reward=torch.zeros(capacity, device=self.device),
            next_obs=torch.zeros(capacity, obs_dim, device=self.device),
            terminal=torch.zeros(capacity, device=self.device),
            discount=torch.zeros(capacity, device=self.device),
        )
        self.pos = 0  # next slot to write
        self.size = 0

    def __len__(self) -> int:
        return self.size

    @property
    def bytes_per_transition(self) -> int:
        """Memory of one stored chunk transition (obs and next obs, action, reward, terminal, discount)."""
        return sum(store[0].numel() * store.element_size() for store in self.storage)

    def add(self, batch: Transitions) -> None:
        """Append a batch of transitions (any device; copied to the buffer's device)."""
        n = batch.obs.shape[0]
        if n > self.capacity:  # only the newest `capacity` entries would survive anyway
            batch = Transitions(*(field[-self.capacity:] for field in batch))
            n = self.capacity
        idx = (self.pos + torch.arange(n)) % self.capacity
        idx = idx.to(self.device)
        for store, values in zip(self.storage, batch, strict=True):
            store[idx] = values.to(self.device, store.dtype).reshape(n, *store.shape[1:])
        self.pos = (self.pos + n) % self.capacity
        self.size = min(self.size + n, self.capacity)

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> Transitions:
        """Uniform sample with replacement (``generator`` on the buffer's device, or None for the global RNG)."""
        if self.size == 0:
            raise RuntimeError("Cannot sample from an empty replay buffer; collect transitions first.")
        idx = torch.randint(self.size, (batch_size,), generator=generator, device=self.device)
        return Transitions(*(store[idx] for store in self.storage))

    def state_dict(self) -> dict:
        """Filled slots of the storage (in slot order) plus the write position; tensors on the CPU.

        The slices are cloned: a slice of a CPU buffer shares the whole preallocated storage, and
        ``torch.save`` writes a tensor's entire storage, so 258 transitions of a 3M-slot buffer would
        cost hundreds of MB in every checkpoint.
        """
        filled = {name: store[: self.size].to("cpu", copy=True)
                  for name, store in zip(Transitions._fields, self.storage, strict=True)}
        return {"capacity": self.capacity, "pos": self.pos, "size": self.size, **filled}

    def load_state_dict(self, state: dict) -> None:
        if state["capacity"] != self.capacity or state["obs"].shape[1:] != self.storage.obs.shape[1:] \
                or state["action"].shape[1:] != self.storage.action.shape[1:]:
            raise ValueError(
                f"Checkpointed replay buffer (capacity {state['capacity']}, obs {tuple(state['obs'].shape[1:])}, "
                f"action {tuple(state['action'].shape[1:])}) does not match this one (capacity {self.capacity}, "
                f"obs {tuple(self.storage.obs.shape[1:])}, action {tuple(self.storage.action.shape[1:])}); resume "
                "with the same buffer_capacity, steering and policy_path as the checkpointed run.")
        self.pos, self.size = state["pos"], state["size"]
        for name, store in zip(Transitions._fields, self.storage, strict=True):
            store[: self.size] = state[name].to(self.device)
