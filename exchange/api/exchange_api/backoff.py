"""Capped exponential backoff with jitter, as the reconnect loops use it."""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass
class Backoff:
    """Delays base, 2*base, 4*base, ... capped at ``cap``, each drawn from
    [delay * (1 - jitter), delay] so that many clients do not retry in step."""

    base: float = 0.2
    cap: float = 5.0
    jitter: float = 0.5
    attempt: int = 0
    _rng: random.Random = field(default_factory=random.Random, repr=False)

    def next_delay(self) -> float:
        delay = min(self.cap, self.base * (2**self.attempt))
        self.attempt += 1
        return delay * (1.0 - self.jitter * self._rng.random())

    def reset(self) -> None:
        self.attempt = 0
