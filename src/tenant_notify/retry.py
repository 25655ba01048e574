"""One retry policy, applied the same way by every transport.

The dispatcher asks :meth:`RetryPolicy.delay_for` after a failed attempt; the
transport only carries out the answer (sleep, re-queue, or Celery's countdown).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from .config import RetrySettings
from .errors import AmbiguousDeliveryError, NotifyError, TransientDeliveryError

__all__ = ["RetryPolicy"]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with jitter; honours a provider's Retry-After.

    Attributes:
        max_attempts: Attempts in all, the first included.
        initial_delay: Seconds before the second attempt (before jitter).
        max_delay: Upper bound of any delay, Retry-After included.
        multiplier: Growth factor between attempts.
        jitter: Fraction of each delay drawn at random (0.2: 80-100% of it), so
            many failed sends do not come back at the same instant.
        retry_ambiguous: Retry errors after which the provider may have accepted
            the message. Off by default: a retry could deliver it twice.
    """

    max_attempts: int = 5
    initial_delay: float = 1.0
    max_delay: float = 300.0
    multiplier: float = 2.0
    jitter: float = 0.2
    retry_ambiguous: bool = False

    @classmethod
    def from_settings(cls, settings: RetrySettings) -> RetryPolicy:
        return cls(**settings.model_dump())

    def is_retryable(self, error: BaseException) -> bool:
        """Whether the error's type says another attempt can help."""
        if isinstance(error, AmbiguousDeliveryError):
            return self.retry_ambiguous
        return isinstance(error, TransientDeliveryError)

    def backoff(self, attempt: int) -> float:
        """The delay after failed attempt number ``attempt`` (1-based), with jitter."""
        base = min(self.max_delay, self.initial_delay * self.multiplier ** (attempt - 1))
        return base * (1 - self.jitter * random.random())

    def delay_for(self, attempt: int, error: NotifyError) -> float | None:
        """Seconds to wait before the next attempt, or None when there is none.

        A provider's ``retry_after`` is a floor: we never come back sooner than it
        asked, and never later than ``max_delay``.
        """
        if attempt >= self.max_attempts or not self.is_retryable(error):
            return None
        delay = self.backoff(attempt)
        retry_after = getattr(error, "retry_after", None)
        if retry_after is not None:
            delay = max(delay, float(retry_after))
        return min(delay, self.max_delay)
