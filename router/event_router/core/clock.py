"""The clock the spool keeps its times in: Unix seconds that advance with elapsed time only.

A delivery's due time and first-attempt time are wall-clock values in the spool (they must mean
something after a restart, and to `event-router status`). Read straight from `time.time()`, an NTP
step or a VM resumed from a snapshot would move them all at once: an hour back delays every pending
retry by an hour, a day forward uses up a `max_age` retry budget in an instant. So the router reads
`SpoolClock.now()`: the wall clock at its anchor plus the monotonic time elapsed since, which no step
moves. When the wall clock has moved away from it (a jump), the router rebases: the spool's pending
times, the times it holds in memory and the clock itself all move by the jump at once, so times stay
close to the wall clock and every schedule keeps its length in elapsed time.

The anchor is recorded in the spool (`Spool.claim_clock`, `Spool.rebase`), with the boot it belongs to,
so a restart in the same boot (monotonic time continues) notices a jump that happened while the router
was stopped, and other processes writing to the spool (`dlq replay`) write in the same base as the router.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

#: differences between the wall clock and the spool clock below this are not jumps: reading the two
#: clocks is not one instant, and a leap second is no reason to rewrite the spool
JUMP_THRESHOLD = 1.0
#: one id per boot of the Linux kernel; monotonic time is comparable only within one boot
BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


def current_boot() -> str | None:
    """This boot's id, or None where the system does not tell (monotonic time then counts as new)."""
    try:
        return BOOT_ID.read_text().strip() or None
    except OSError:
        return None


@dataclass(frozen=True, slots=True)
class Anchor:
    """Spool time = `offset` + monotonic time, valid during the boot `boot`."""

    boot: str | None
    offset: float


class SpoolClock:
    """Unix time in seconds that moves only as time elapses (`now`), and notices wall-clock jumps (`jump`).

    `wall` and `elapsed` are injectable so that tests can step them.
    """

    def __init__(
        self,
        *,
        wall: Callable[[], float] = time.time,
        elapsed: Callable[[], float] = time.monotonic,
        boot: str | None = None,
        threshold: float = JUMP_THRESHOLD,
    ) -> None:
        self._wall = wall
        self._elapsed = elapsed
        self.boot = boot if boot is not None else current_boot()
        self.threshold = threshold
        self.offset = wall() - elapsed()

    def now(self) -> float:
        return self.offset + self._elapsed()

    @property
    def anchor(self) -> Anchor:
        return Anchor(self.boot, self.offset)

    def adopt(self, anchor: Anchor | None) -> None:
        """Continue a recorded anchor when it is from this boot (a restart); otherwise keep the wall clock's."""
        if anchor is not None and anchor.boot is not None and anchor.boot == self.boot:
            self.offset = anchor.offset

    def drift(self) -> float:
        """Seconds the wall clock is ahead of this clock (negative: behind)."""
        return self._wall() - self._elapsed() - self.offset

    def jump(self) -> float:
        """How far the wall clock jumped since the anchor, 0.0 when less than the threshold.

        Does not move the clock: the caller rebases it (`shift`) together with everything it keeps.
        """
        drift = self.drift()
        return drift if abs(drift) >= self.threshold else 0.0

    def shift(self, seconds: float) -> None:
        self.offset += seconds
