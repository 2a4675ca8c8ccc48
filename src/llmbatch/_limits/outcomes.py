"""A model's recent sends and answers, kept for a horizon: what ``RateLearner`` reads."""

from __future__ import annotations

from collections import deque

OK, PACE, NOISE = 0, 1, 2  # a success, a 429 our pace may cause, a 429 it does not


class Outcomes:
    """Send times and answers (``OK``, ``PACE``, ``NOISE``) of the last ``keep`` seconds."""

    def __init__(self, keep: float) -> None:
        self.keep = keep
        self.first_send: float | None = None
        self.pause = (0.0, 0.0)  # the last time the model was paused: from, until
        self._sends: deque[float] = deque()
        self._answers: deque[tuple[float, int]] = deque()
        self._totals = [0, 0, 0]  # of ``_answers`` by kind, kept running

    def sent(self, now: float) -> None:
        self._sends.append(now)
        if self.first_send is None:
            self.first_send = now

    def answered(self, now: float, kind: int) -> None:
        self._answers.append((now, kind))
        self._totals[kind] += 1

    def forget(self, now: float) -> None:
        """Drop what is older than ``keep`` seconds."""
        horizon = now - self.keep  # runs twice a request: locals, and a test before a loop
        sends, answers = self._sends, self._answers
        while sends and sends[0] < horizon:
            sends.popleft()
        if answers and answers[0][0] < horizon:
            totals = self._totals
            while answers and answers[0][0] < horizon:
                totals[answers.popleft()[1]] -= 1

    def counts(self, now: float, span: float) -> tuple[int, int, int]:
        """Answers within the last ``span`` seconds: successes, pace 429s, noise 429s."""
        if span >= self.keep:
            return self._totals[OK], self._totals[PACE], self._totals[NOISE]
        counts = [0, 0, 0]
        for t, kind in reversed(self._answers):
            if now - t > span:
                break
            counts[kind] += 1
        return counts[OK], counts[PACE], counts[NOISE]

    def sends_within(self, now: float, span: float) -> list[float]:
        return [t for t in self._sends if now - t <= span]

    def oks_within(self, now: float, span: float) -> list[float]:
        return [t for t, kind in self._answers if kind == OK and now - t <= span]

    def send_rate(self, now: float, span: float) -> float:
        """Sends per second over the last ``span``, not counting time paused or before the
        first send."""
        start = max(now - span, now if self.first_send is None else self.first_send)
        paused_from, paused_until = self.pause
        overlap = max(0.0, min(now, paused_until) - max(start, paused_from))
        return len(self.sends_within(now, span)) / max(now - start - overlap, 0.25)

    def ok_rate(self, now: float, since: float, window: float) -> float:
        """Successes per second from ``since`` (within ``keep``) to ``now``.

        Time paused counts: a provider's window runs on while we wait for it. Under a
        second says too little (a burst into an empty quota would read as a high
        rate): then the count is spread over ``window``.
        """
        start = max(now - self.keep, since)
        ok = sum(1 for t, kind in self._answers if t >= start and kind == OK)
        span = now - start
        return ok / (span if span >= 1.0 else window)
