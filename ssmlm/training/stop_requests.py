"""Stopping a run cleanly: SIGINT or SIGTERM (Ctrl-C) while training asks the loop to stop after the current step,
with a checkpoint; the loop reads the request in the same reduction over processes as its divergence check."""

from __future__ import annotations

import signal


class StopRequests:
    """SIGINT and SIGTERM while training ask to stop after the current step, with a checkpoint. In a single process a
    second signal of the same kind stops at once, as it would without this. Under a multi-process launcher every
    signal only repeats the request: a terminal's Ctrl-C reaches every rank and the launcher forwards it again at
    once, and it kills the ranks itself if they take too long (torchrun: after 30 s)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, announce, second_stops_at_once: bool):
        self.requested = False
        self.announce = announce
        self.second_stops_at_once = second_stops_at_once
        self.previous = {}

    def __enter__(self):
        for number in self.SIGNALS:
            self.previous[number] = signal.signal(number, self.handle)
        return self

    def handle(self, number, frame):
        if self.second_stops_at_once:
            signal.signal(number, self.previous[number])
        if not self.requested:
            again = " (the same signal again stops at once, without one)" if self.second_stops_at_once else ""
            self.announce(f"{signal.Signals(number).name}: stopping after this step, with a checkpoint{again}")
        self.requested = True

    def __exit__(self, *exc):
        for number, handler in self.previous.items():
            signal.signal(number, handler)
