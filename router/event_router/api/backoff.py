"""For input plugins: how long to wait before connecting again, on the router's one retry policy.

A broker input loops "connect, consume until it fails, wait, connect again". `Backoff` says how long to
wait: `RetryPolicy.delay` (exponential, full jitter, so a fleet of routers does not reconnect in lockstep
after a broker restart), counting the failures since the input last stayed healthy long enough to count
as recovered. A connection that comes up and drops at once (a broker that takes the connection and then
refuses the subscription, two clients taking over one session) keeps backing off instead of reconnecting
several times a second.
"""

from __future__ import annotations

from collections.abc import Callable

import anyio

from event_router.api.retry import RetryPolicy


class Backoff:
    """The waits between an input's attempts to connect (or to store again after a failure).

    Call `healthy()` once the input works (connected, subscribed, a read answered: calling it again
    changes nothing) and `failed()` when the attempt or the connection ends, then sleep what it returns:

        backoff = Backoff.reconnect(settings.reconnect_max)
        while True:
            try:
                async with connect() as connection:
                    backoff.healthy()
                    await consume(connection)
            except BrokerError as exc:
                delay = backoff.failed()
                log.warning("lost the broker; reconnecting", extra={"error": str(exc), "retry_in": delay})
                await anyio.sleep(delay)

    The count of failures starts again when the input was healthy for at least `healthy_after` seconds
    before it failed; `attempt` is that count (1 for the first failure after a healthy period).
    """

    def __init__(
        self,
        policy: RetryPolicy,
        *,
        healthy_after: float | None = None,
        clock: Callable[[], float] = anyio.current_time,
    ):
        self.policy = policy
        #: seconds of health after which the next failure counts as the first again (default: the policy's
        #: `max_backoff`, the longest wait: a connection that outlives it ends an outage)
        self.healthy_after = policy.max_backoff if healthy_after is None else healthy_after
        #: failures since the input last recovered
        self.attempt = 0
        self._clock = clock
        self._healthy_since: float | None = None

    @classmethod
    def reconnect(cls, maximum: float, *, initial: float = 0.5) -> Backoff:
        """The reconnect backoff of a broker input: from `initial` seconds, doubling, up to `maximum` (its
        `reconnect_max`), full jitter, never giving up."""
        return cls(RetryPolicy(max_age=0, initial_backoff=min(initial, maximum), max_backoff=maximum))

    def healthy(self) -> None:
        """The input works: from now on (unless already healthy) the time counts toward `healthy_after`."""
        if self._healthy_since is None:
            self._healthy_since = self._clock()

    def failed(self) -> float:
        """Count a failure; returns the seconds to wait before the next attempt."""
        if self._healthy_since is not None and self._clock() - self._healthy_since >= self.healthy_after:
            self.attempt = 0
        self._healthy_since = None
        self.attempt += 1
        return self.policy.delay(self.attempt)
