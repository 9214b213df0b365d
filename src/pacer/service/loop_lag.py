"""The event loop's own lateness, so that the limit judges the upstream's latency only.

When pacer's CPU is busy (hundreds of answers a second on two cores), a task whose
answer has arrived runs late, and the rtt it measures grows although the upstream
answered on time. :class:`LoopLag` is a Trio instrument that counts, per task, the
seconds the task was ready to run (rescheduled: its socket readable, its deadline
passed, its event set) but waited for the tasks ahead of it in the loop's batch.
An attempt reads its task's count when it starts and when it ends (the limiter
does: :meth:`LoopLag.task_lag`); the difference is the ``lag`` of its
:class:`~pacer.control.limit.Sample`, and the limit takes it off the rtt.

This is the lateness the answers cause one another (they come in bunches, each
costs CPU, the k-th of a bunch waits for k-1 others), and it is exact. It leaves
out how long an event waited for the loop to poll (the batch before it): that time
is not known per task, and an estimate (half the batch) over-counted in the
simulations and would invent a lower no-load rtt. Counting less than the lag keeps
the limit on the safe side: it may still see some of pacer's own delay, never less
latency than the upstream's. A tick that sleeps and measures its own overshoot would
do worse: the answers *are* the load, so they run late exactly when the loop is
free for the ticks.
"""

from __future__ import annotations

from collections.abc import Callable

import trio
from trio.lowlevel import Task

__all__ = ["LoopLag"]


class LoopLag(trio.abc.Instrument):
    """Per-task lateness while installed (:meth:`install`, inside ``trio.run``)."""

    def __init__(self, clock: Callable[[], float] | None = None) -> None:
        self.clock = clock if clock is not None else trio.current_time
        self._own_clock = clock is None
        self._ready_at: dict[Task, float] = {}  # when a rescheduled task became ready
        self._lag: dict[Task, float] = {}  # seconds each task waited for the loop
        self.worst = 0.0  # the longest wait seen (benchmarks, status)

    def install(self) -> None:
        if self._own_clock:
            # The run's clock itself: its hooks run three times per task step, and
            # trio.current_time goes through two more calls to reach it.
            self.clock = trio.lowlevel.current_clock().current_time
        trio.lowlevel.add_instrument(self)

    def uninstall(self) -> None:
        trio.lowlevel.remove_instrument(self)

    def task_lag(self) -> float:
        """Seconds the current task has waited for the loop so far (a counter: an
        attempt takes the difference between its end and its start)."""
        return self._lag.get(trio.lowlevel.current_task(), 0.0)

    # ---- trio.abc.Instrument

    def task_scheduled(self, task: Task) -> None:
        self._ready_at[task] = self.clock()

    def before_task_step(self, task: Task) -> None:
        ready = self._ready_at.pop(task, None)
        if ready is not None:
            wait = max(0.0, self.clock() - ready)
            if wait:
                self._lag[task] = self._lag.get(task, 0.0) + wait
                self.worst = max(self.worst, wait)

    def task_exited(self, task: Task) -> None:
        self._ready_at.pop(task, None)
        self._lag.pop(task, None)
