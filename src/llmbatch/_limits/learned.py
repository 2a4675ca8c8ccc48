"""A request rate learned from 429s: cut on evidence that our pace causes them, recover when not.

The old rule (x0.7 per 429, +0.1% per success) drove the rate to zero under any
steady share of 429s, because 429s that our pace does not cause (a shared key, a
busy provider, a proxy) kept cutting it. Here:

* Only *pace* 429s count: a 429 whose rate-limit headers say quota remains is
  noise (``ModelGate`` tells us so; its own request waits its retry-after).
* **A spent quota is measured, not guessed.** Quota headers at zero, a run of
  pace 429s among the last ``RECENT`` answers longer than tolerated noise gives
  but once in ``1 / SPENT_P`` (6 of 12 at 5%), or a ``STRONG`` share of them,
  say a quota is spent. Then nothing is sent until it frees: a ``HORIZON`` after
  the oldest request sent within one (the provider counted it on arrival; those
  after it free as fast as they were sent), or the retry-after if later. The
  successes that arrive from that oldest send until then are what one quota let
  through, so the limit is that count over that span (at least a ``HORIZON``;
  a retry-after less its whole-second rounding), and the rate becomes
  ``MARGIN`` of it. 429s of requests sent before the hold ended are no evidence
  against the new rate. If every request sent before the hold is answered and
  fewer than ``MIN_OK`` got through, the 429s were not a quota we spent (someone
  else's, or a burst of random ones): the hold ends at once and the rate goes
  back to what it was.
* Otherwise a cut needs a share of pace 429s significantly (two standard errors)
  above the tolerated one among at least ``MIN_SAMPLE`` outcomes since the last
  hold, at least ``MIN_EVIDENCE`` of them. At most one cut per ``WINDOW``. Such a
  cut keeps ``BETA`` of the pace, never less than the success rate achieved at it.
* Each such cut is an experiment. A genuine limit lets a fixed number through, so
  sending less lowers the 429 share; random 429s keep their share whatever we
  send. ``JUDGE_SAMPLE`` outcomes after a cut are compared with both predictions;
  if they look like noise the cut is undone and about twice that share is
  tolerated from then on (decaying slowly back to ``THRESHOLD``).
* Each window within the tolerance recovers: straight back to the last rate that
  went a whole window clean, then additively in steps of 10% of the rate that
  last drew 429s (doubling if none did); within 10% of it, by 2% at most once per
  ``PROBE_QUIET`` seconds without excess 429s, and a probe that draws them steps
  back at once (fast recovery, slow probing).
"""

from __future__ import annotations

import math
from collections import deque

from llmbatch._limits.learned_records import Measure, RateChange, Trial, Window
from llmbatch._limits.outcomes import NOISE, OK, PACE, Outcomes


class RateLearner:
    """The learned request rate of one model; every method takes the current time."""

    WINDOW = 2.0  # seconds: at most one cut, and one recovery step, per window
    HORIZON = 5.0  # seconds of outcomes read as evidence and as the achieved rate
    THRESHOLD = 0.05  # share of pace 429s tolerated before it counts as evidence
    MIN_EVIDENCE = 3  # pace 429s within the horizon before a cut (unless quota is at zero)
    MIN_SAMPLE = 10  # outcomes within the horizon before their share is read as a ratio
    JUDGE_SAMPLE = 40  # outcomes after a cut before it is judged (or a minute)
    STRONG = 0.3  # a share of pace 429s no noise explains: a spent quota
    BETA = 0.7  # a cut keeps this share of the pace, at least
    MIN_RATE = 0.05  # requests per second: never learn our way down to a halt
    PROBE_QUIET = 30.0  # seconds without pace 429s beyond the noise before probing higher
    RECENT = 12  # the last answers (successes and pace 429s) read for a run of 429s
    SPENT_P = 1e-4  # a run of pace 429s this unlikely as tolerated noise: a spent quota
    MIN_OK = 5  # successes within the horizon before a spent quota is measured by them
    MARGIN = 0.95  # a measured limit is paced at this share of it
    ARRIVAL_S = 0.2  # a request reaches the provider up to this long after we send it

    def __init__(self) -> None:
        self.rate: float | None = None  # None: open, only concurrency bounds it
        self.ceiling: float | None = None  # stated by rate-limit headers
        self.tolerated = self.THRESHOLD
        self.cuts = 0
        self._log = Outcomes(max(self.HORIZON, self.WINDOW))
        self._last_cut = -math.inf
        self._last_probe = -math.inf
        self._last_excess = -math.inf  # the end of the last window with more pace 429s than noise
        self._window: Window | None = None
        self._trial: Trial | None = None
        self._clean_rate: float | None = None  # highest paced rate that drew no pace 429s
        self._hot_rate: float | None = None  # the pace that last drew pace 429s
        self._recent: deque[int] = deque(maxlen=self.RECENT)  # the last answers' kinds
        self._hold_until = -math.inf  # 429s before this were sent before the last hold
        self._measure: Measure | None = None

    # -- what happened ----------------------------------------------------------------

    def sent(self, now: float) -> RateChange | None:
        change = self._tick(now)
        self._log.sent(now)
        assert self._window is not None
        self._window.sends += 1
        if self._trial is not None:
            self._count(now, 3)
        return change

    def succeeded(self, now: float) -> RateChange | None:
        return self._outcome(now, OK)

    def noise_429(self, now: float) -> RateChange | None:
        return self._outcome(now, NOISE)

    def pace_429(
        self, now: float, exhausted: bool = False, in_flight: int = 0
    ) -> RateChange | None:
        """A 429 that our pace may have caused; returns the cut, if one is due.

        ``in_flight``: requests sent and not yet answered (their successes may be
        what spent the quota).
        """
        change = self._outcome(now, PACE)
        if now < self._hold_until:
            return change  # sent before the last hold ended: no evidence against its rate
        ok, pace, noise = self._log.counts(now, min(self.HORIZON, now - self._hold_until))
        n = ok + pace + noise
        ratio = pace / max(1, n)
        strong = n >= 2 * self.MIN_SAMPLE and ratio >= max(self.STRONG, 2 * self.tolerated)
        if exhausted or strong or self._recent.count(PACE) >= self._run_needed():
            return self._spent(now, in_flight) or change
        if self._recent.count(PACE) >= self.MIN_EVIDENCE:
            return change  # a run of them is building: let it decide
        if now - self._last_cut < self.WINDOW or self._trial is not None:
            return change  # one experiment at a time
        if pace < self.MIN_EVIDENCE or ratio <= self._significant(n):
            return change
        if n >= self.MIN_SAMPLE:
            return self._cut(now, ratio, trial=True) or change
        if ratio >= 0.5:
            # A few outcomes, most of them 429s: cut by BETA only, and do not judge
            # the cut by so few.
            return self._cut(now, 0.0, trial=False, sampled=False) or change
        return change

    @property
    def holding(self) -> bool:
        """Whether a hold is measuring what gets through (``answered`` may end it)."""
        return self._measure is not None

    def answered(self, now: float, in_flight: int) -> RateChange | None:
        """After an answer: if all sent before a hold are in and too few got through to
        measure, the hold ends now (``hold_until``) and the rate is what it was."""
        m = self._measure
        if m is None or in_flight > 0 or m.ok >= self.MIN_OK:
            return None
        return self._unmeasured(now, m)

    def _unmeasured(self, now: float, m: Measure) -> RateChange:
        """Not a quota we spent (a burst of someone else's 429s, a quota spent
        elsewhere): stop holding and go back to the rate we had. If they go on, their
        share decides as for any other 429s."""
        self._measure = None
        self._hold_until = min(self._hold_until, now)
        held, self.rate = self.rate, m.rate_before
        return RateChange(held, self.rate, "not a spent quota", hold_until=now)

    def stated(self, ceiling: float) -> RateChange | None:
        """Headers stated a limit (per second): the rate never goes above it."""
        self.ceiling = ceiling
        if self.rate is None or self.rate > ceiling:
            return self._set(ceiling, "headers")
        return None

    def paused(self, now: float, until: float) -> None:
        """The model sends nothing until ``until``: 429s before then are no evidence."""
        self._log.pause = (now, until)
        self._hold_until = max(self._hold_until, until)
        self._recent.clear()
        if self._trial is not None:
            self._trial.at = max(self._trial.at, until)
        m = self._measure
        if m is not None and until - now < 1.0:
            # A sub-second retry-after is precise (nobody rounds up to it): the quota
            # frees then, so the window is shorter than a horizon; measure over it.
            m.until = m.span_end = until + self.ARRIVAL_S
            m.precise = True
            self._hold_until = m.until
        elif m is not None:
            # Providers round a retry-after up to whole seconds: the quota may free up to
            # a second earlier, so measure over the shorter span (MARGIN covers the rest).
            m.until = max(m.until, until)
            m.span_end = max(m.span_end, until - 1.0)

    # -- deciding ---------------------------------------------------------------------

    def _spent(self, now: float, in_flight: int) -> RateChange | None:
        """A quota is spent: send nothing until it frees, then measure what it let through."""
        oks = self._log.oks_within(now, self.HORIZON)
        sends = self._log.sends_within(now, self.HORIZON)
        self._recent.clear()
        if len(oks) + in_flight < self.MIN_OK or not sends:
            # Refused before much got through (a burst of someone else's 429s, a quota
            # spent elsewhere): nothing to measure, so cut by BETA and recover fast.
            if now - self._last_cut < self.WINDOW:
                return None
            return self._cut(now, 0.0, trial=False, sampled=False)
        # The provider counted our oldest request within a horizon when it arrived; a
        # horizon later its slot is free again, and those after it free as fast as
        # they were sent, faster than we will send again.
        first = sends[0]
        until = first + self.HORIZON + self.ARRIVAL_S
        self._measure = Measure(first, until, first + self.HORIZON, len(oks), self.rate)
        self._hold_until = max(self._hold_until, until)
        self._last_cut = now
        self._trial = None
        self.cuts += 1
        self._clean_rate = None
        # Until it is measured, pace as if all in flight get through, over the horizon.
        got = len(oks) + in_flight
        guess = self._capped(max(self.MIN_RATE, self.MARGIN * got / self.HORIZON))
        before = self.rate
        self.rate = guess
        return RateChange(before, guess, "rate_limited", hold_until=until)

    def _measured(self, m: Measure) -> RateChange | None:
        """The hold is over: the limit is what one quota let through, over its span."""
        if m.ok < self.MIN_OK:
            return self._unmeasured(m.until, m)
        self._measure = None
        span = m.span_end - m.first
        limit = m.ok / (max(span, self.ARRIVAL_S) if m.precise else max(self.HORIZON, span))
        self._hot_rate = limit
        return self._set(self._capped(max(self.MIN_RATE, self.MARGIN * limit)), "limit measured")

    def _capped(self, rate: float) -> float:
        return rate if self.ceiling is None else min(rate, self.ceiling)

    def _cut(
        self, now: float, ratio: float, trial: bool, sampled: bool = True
    ) -> RateChange | None:
        sent_rate = self._log.send_rate(now, self.WINDOW)
        # The pace that drew them: what we really sent (a pause or thin demand can keep
        # it under the rate we allow), but never read as less than half that rate.
        current = sent_rate if self.rate is None else min(self.rate, max(sent_rate, self.rate / 2))
        new = max(self.MIN_RATE, self.BETA * current, self._achieved(now))
        new = min(new, current)
        if self.ceiling is not None:
            new = min(new, self.ceiling)
        self._last_cut = now
        self.cuts += 1
        self._trial = None
        if trial:
            self._trial = Trial(now, self.rate, self._hot_rate, ratio, sent_rate, [0, 0, 0, 0])
        if sampled:  # a handful of 429s says too little about which pace draws them
            self._hot_rate = current
        if self._clean_rate is not None and self._clean_rate >= current:
            self._clean_rate = None  # that rate is not clean any more
        return self._set(new, "rate_limited")

    def _close(self, w: Window) -> RateChange | None:
        end = w.start + self.WINDOW
        change = None
        n = w.ok + w.pace + w.noise
        if w.pace > (self.tolerated - self.THRESHOLD) * n:
            self._last_excess = end
            clean = self._clean_rate
            if self.rate is not None and clean is not None and self.rate > clean:
                # Above the last rate that went a window clean, 429s came back: step back.
                self._hot_rate = self.rate
                return self._set(clean, "rate_limited")
        t = self._trial
        if t is not None and end >= t.at + self.HORIZON:
            if sum(t.counts[:3]) >= self.JUDGE_SAMPLE or end >= t.at + 60.0:
                change = self._judge(t, end)
                self._trial = None
        self.tolerated = max(self.THRESHOLD, self.tolerated * 0.99)
        if change is None and self.rate is not None and w.pace <= self.tolerated * n:
            change = self._recover(w, end)
        return change

    def _judge(self, t: Trial, now: float) -> RateChange | None:
        """Did sending less lower the share of 429s, as it would under a genuine limit?"""
        ok, pace, noise, sends = t.counts
        n = ok + pace + noise
        sent_rate = sends / (now - t.at)
        if n < self.MIN_SAMPLE or sent_rate <= 0 or sent_rate >= t.sent_rate:
            return None  # too little to go on, or we did not send less: no experiment
        ratio = pace / n
        if_genuine = max(0.0, 1.0 - (1.0 - t.ratio) * t.sent_rate / sent_rate)
        if_noise = t.ratio
        if if_noise - if_genuine < 0.03 or ratio <= (if_genuine + if_noise) / 2:
            return None  # it did: keep the cut
        if ratio > 1.5 * if_noise + 0.02:
            return None  # worse than before: a limit we are still over, not noise
        self.tolerated = min(0.5, max(self.tolerated, 2 * ratio + 0.02))
        self._hot_rate = None  # the cut's evidence was noise
        restored = t.rate_before
        if restored is not None and self.ceiling is not None:
            restored = min(restored, self.ceiling)
        return self._set(restored, "429s do not follow our pace")

    def _recover(self, w: Window, end: float) -> RateChange | None:
        assert self.rate is not None
        rate = self.rate
        used = w.sends >= 0.85 * rate * self.WINDOW  # the pace was really used
        if used and w.pace == 0:
            self._clean_rate = max(self._clean_rate or 0.0, rate)
        if self._clean_rate is not None and rate < self._clean_rate:
            new = self._clean_rate
        elif not used:
            return None  # not using the pace we have: no point going above it
        elif self._hot_rate is None:
            new = 2 * rate  # nothing known above us: find the demand fast
        elif rate < 0.9 * self._hot_rate:
            new = rate + 0.1 * self._hot_rate
        elif end - max(self._last_excess, self._last_probe) >= self.PROBE_QUIET:
            new = rate + 0.02 * self._hot_rate
            self._last_probe = end
        else:
            return None  # close to the pace that drew 429s: probe above it only now and then
        if self.ceiling is not None:
            new = min(new, self.ceiling)
        return self._set(new, "recovering") if new > rate else None

    # -- bookkeeping ------------------------------------------------------------------

    def _outcome(self, now: float, kind: int) -> RateChange | None:
        change = self._tick(now)
        self._log.answered(now, kind)
        assert self._window is not None
        if kind == OK:
            self._window.ok += 1
            self._recent.append(OK)
            if self._measure is not None and now < self._measure.until:
                self._measure.ok += 1
        elif kind == PACE:
            self._window.pace += 1
            if now >= self._hold_until:
                self._recent.append(PACE)
        else:
            self._window.noise += 1
        if self._trial is not None:
            self._count(now, kind)
        return change

    def _run_needed(self) -> int:
        """Pace 429s among ``RECENT`` answers that tolerated noise reaches under ``SPENT_P``."""
        p, n = max(self.tolerated, self.THRESHOLD), self.RECENT
        tail = 0.0
        for k in range(n, 0, -1):
            tail += math.comb(n, k) * p**k * (1.0 - p) ** (n - k)
            if tail > self.SPENT_P:
                return max(self.MIN_EVIDENCE + 2, k + 1)  # n + 1: no run is enough
        return n + 1

    def _significant(self, n: int) -> float:
        """The pace-429 share above which ``n`` outcomes say more than tolerated noise."""
        p = self.tolerated
        return p + 2.0 * math.sqrt(p * (1.0 - p) / max(1, n))

    def _count(self, now: float, index: int) -> None:
        if self._trial is not None and now >= self._trial.at:
            self._trial.counts[index] += 1

    def _tick(self, now: float) -> RateChange | None:
        """Close every window that has ended; forget what is older than the horizon."""
        change = None
        if self._measure is not None and now >= self._measure.until:
            change = self._measured(self._measure)
        if self._window is None:
            self._window = Window(now)
        while now >= self._window.start + self.WINDOW:
            closed = self._window
            start = closed.start + self.WINDOW
            if now >= start + self.WINDOW:
                start = now  # a long silence: the next window starts now
            self._window = Window(start)
            change = self._close(closed) or change
        self._log.forget(now)
        return change

    def _achieved(self, now: float) -> float:
        """Successes per second at the present pace: since the last cut, within the horizon."""
        since = self._last_cut if self._last_cut > -math.inf else self._log.first_send
        return self._log.ok_rate(now, now if since is None else since, self.WINDOW)

    def _set(self, rate: float | None, reason: str) -> RateChange | None:
        if rate == self.rate:
            return None
        change = RateChange(self.rate, rate, reason)
        self.rate = rate
        return change
