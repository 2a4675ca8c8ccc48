"""One job's attempts: reserve, take a slot, send, then retry, repair or fall back.

``JobRunner.run`` is the one place where budgets, rate limits, retries, schema
repair and fallback meet; what to do after each attempt is the synchronous
``_engine.policy``. Every request sent is one ``AttemptEnded`` event, under the
model it went to, whether or not its job ends up written.

The common case awaits once per job — the provider's ``send``: budget and pace
are taken synchronously when there is room (``Budgets.reserve_now``,
``RateLimiter.acquire_now``), and only a real wait awaits. Built-in providers
honour the deadline they are given, so no cancel scope or timer is set up per
attempt; a provider that does not say so (``honours_deadline``) gets one.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio

from llmbatch._budget.context import Budgets, Held, Stopper
from llmbatch._budget.ledger import Refusal
from llmbatch._core.clock import Clock
from llmbatch._core.events import AttemptStarted, BudgetStopped, EventBus
from llmbatch._core.exceptions import OtherProviderError, ProviderError
from llmbatch._core.headers import RateLimitHint
from llmbatch._core.jobs import Request, estimate_input_tokens
from llmbatch._core.models import ModelRef
from llmbatch._core.pricing import Price, PriceBook
from llmbatch._core.results import JobResult, ResultError
from llmbatch._core.schema import validate_answer
from llmbatch._core.states import Status
from llmbatch._core.stops import HARD_STOPS, StopReason
from llmbatch._core.usage import Usage
from llmbatch._engine.answers import AnswerCache
from llmbatch._engine.events import emit_attempt
from llmbatch._engine.plan import BatchSeed, PreparedJob
from llmbatch._engine.policy import Repair, RetryPolicy, Step, after_schema_miss
from llmbatch._engine.settings import EngineSettings
from llmbatch._engine.tally import (
    NOT_WRITTEN,
    NotWritten,
    Reservation,
    Sent,
    Tally,
    begin_from_seed,
    repair_request,
)
from llmbatch._engine.warmup import PrefixWarmup, warmup_key
from llmbatch._limits.breaker import Breaker
from llmbatch._limits.ratelimit import RateLimiter
from llmbatch.providers._base import Answer, Provider
from llmbatch.providers._errors import redact, translate_exception

AUTH_FAILURES_TO_STOP = 3


@dataclass(slots=True)
class JobRunner:
    """Runs prepared jobs to their results, sharing the run's limits, budgets and events."""

    settings: EngineSettings
    clock: Clock
    bus: EventBus
    prices: PriceBook
    provider: Callable[[str], Provider]
    gates: dict[ModelRef, RateLimiter]
    breakers: dict[ModelRef, Breaker]
    budgets: Budgets
    stopper: Stopper
    policy: RetryPolicy
    answers: AnswerCache
    warmup: PrefixWarmup = field(default_factory=PrefixWarmup)
    fatal: str | None = None
    resets_at: float | None = None  # a full rolling window frees enough then (wall clock)
    auth_withheld: int = 0  # jobs not written because the key looked wrong
    _auth_failures: int = 0
    _answered: set[str] = field(default_factory=set)  # providers that answered once

    async def run(self, pj: PreparedJob) -> JobResult | None:
        seed = pj.seed
        if seed is not None and seed.fingerprint not in (None, pj.fingerprint):
            seed = None  # the job changed since its batch: it starts anew
        answers = self.answers
        if answers.on and (seed is None or not seed.repairs):
            hit = answers.hit(pj)
            if hit is not None:
                return hit  # before any budget or rate-limit slot: a hit costs nothing
            if answers.shareable(pj):
                return await answers.single_flight(pj, lambda: self._run(pj, seed))
        if seed is None:  # the common case, one coroutine less
            chain = pj.chain
            if len(chain) == 1:  # one model, no fallback: straight to its attempts
                tally = Tally(pj)
                outcome = await self._on_model(tally, chain[0], False)
                if outcome is None:
                    return tally.result(Status.FAILED, chain[0])
                return None if outcome is NOT_WRITTEN else outcome  # type: ignore[return-value]
            return await self._on_chain(Tally(pj), chain, None)
        return await self._run(pj, seed)

    async def _run(self, pj: PreparedJob, seed: BatchSeed | None) -> JobResult | None:
        tally = Tally(pj)
        if seed is None:
            return await self._on_chain(tally, pj.chain, None)
        chain, begun = begin_from_seed(seed, tally, self.settings.repair_attempts)
        if isinstance(begun, JobResult):
            begun.batch = seed.batch
            return begun
        result = await self._on_chain(tally, chain, begun)
        if result is not None and seed.repairs:
            result.batch = seed.batch  # part of the answer came from the batch
        return result

    async def _on_chain(
        self, tally: Tally, chain: list[ModelRef], first: Request | None
    ) -> JobResult | None:
        """The models in turn; ``first`` (a repair turn) opens on the first of them."""
        last_ref = chain[0]
        last = len(chain) - 1
        for position, ref in enumerate(chain):
            has_next = position < last
            if has_next and not self.breakers[ref].allow():
                continue  # the model is failing for everyone: go straight to the fallback
            if position > 0:
                tally.fallbacks += 1
            last_ref = ref
            outcome = await self._on_model(tally, ref, has_next, first if position == 0 else None)
            if outcome is NOT_WRITTEN:
                return None
            if outcome is not None:
                return outcome  # type: ignore[return-value]
        return tally.result(Status.FAILED, last_ref)

    async def _on_model(
        self, tally: Tally, ref: ModelRef, has_next: bool, first: Request | None = None
    ) -> JobResult | NotWritten | None:
        """Attempts on one model; None: give up on it (the fallback, if any, is next)."""
        request = first or tally.pj.request
        tries = 0
        repairs_left = self.settings.repair_attempts - (first is not None)
        stopper = self.stopper
        while tries < self.policy.max_attempts:
            if stopper.stopping and (
                tally.attempts == tally.carried or stopper.stopped_by in HARD_STOPS
            ):
                return NOT_WRITTEN
            repair = request is not tally.pj.request
            if tally.pj.prefix is None:
                sent = await self._attempt_now(tally, ref, request, repair)
            else:
                sent = await self._attempt(tally, ref, request, repair)
            if sent is None:
                continue  # stopped while waiting: the checks above decide
            if isinstance(sent, Refusal):
                return self._refused(sent, tally, ref)
            answer = sent.outcome
            if isinstance(answer, ProviderError):
                if answer.retry_now:
                    self._emit_attempt(tally, ref, sent, 0.0)
                    tally.failed_attempt(answer.error_type)
                    continue  # a setting of ours was refused and changed: send again at once
                tries += 1
                end = await self._after_error(answer, tally, ref, sent, tries, has_next)
                if end is _RETRY:
                    continue
                return end  # type: ignore[return-value]
            self._emit_attempt(tally, ref, sent, None)
            if request.schema is None:
                return self._ok(tally, ref, answer, None)
            parsed, problem = validate_answer(answer.text, request.schema)
            if problem is None:
                return self._ok(tally, ref, answer, parsed)
            if after_schema_miss(repairs_left) is Repair.ASK_AGAIN:
                repairs_left -= 1
                tally.repairs += 1
                request = repair_request(request, answer.text, problem)
                tries = 0  # a repair is a new question, with its own retries
                continue
            return tally.answered(
                Status.FAILED, ref, answer, error=ResultError.schema_invalid(problem)
            )
        return None

    async def _after_error(
        self,
        err: ProviderError,
        tally: Tally,
        ref: ModelRef,
        sent: Sent,
        tries: int,
        has_next: bool,
    ) -> JobResult | NotWritten | None | object:
        """Book a failed attempt, then carry out the policy's verdict (waiting if it says so)."""
        tally.failed_attempt(err.error_type)
        tally.last_error = ResultError.of(err)
        gate = self.gates[ref]
        if err.error_type == "rate_limited" and getattr(err, "teaches_limit", True):
            hint = err.limits if isinstance(err.limits, RateLimitHint) else None
            gate.on_rate_limited(err.retry_after, hint)
        breaker = self.breakers[ref]
        if err.retryable and err.error_type != "auth":
            breaker.record_failure()
        verdict = self.policy.after_error(
            err, tries, has_next=has_next, breaker_open=has_next and not breaker.allow()
        )
        step = verdict.step
        delay = verdict.delay if step is Step.RETRY else None
        self._emit_attempt(tally, ref, sent, delay)
        if step is Step.AUTH:
            return self._auth_failed(err, tally, ref)
        if step is Step.FAIL:
            return tally.result(Status.FAILED, ref)
        if step is Step.NEXT_MODEL:
            return None
        stats = getattr(gate, "stats", None)
        if stats is not None:
            stats.backoff_s += verdict.delay
        with self.stopper.interruptible():
            await self.clock.sleep(verdict.delay)
        return _RETRY

    def _ok(self, tally: Tally, ref: ModelRef, answer: Answer, parsed: Any) -> JobResult:
        """A complete, valid answer: kept in the cache, then the job's result."""
        self.answers.keep(tally.pj, ref, answer, parsed, tally.cost)
        return tally.answered(Status.OK, ref, answer, parsed)

    def reservation(self, request: Request, tally: Tally, price: Price | None) -> Reservation:
        """Worst case for the budget (at ``price``, the model's); the providers' own count
        for the rate limits."""
        out_tokens = request.max_tokens or self.settings.max_tokens
        if request is tally.pj.request:
            worst_in, est_in = tally.pj.input_estimates()
        else:  # a repair turn
            worst_in = estimate_input_tokens(request, conservative=True)
            est_in = estimate_input_tokens(request)
        cost = 0.0 if price is None else price.plain_cost(worst_in, out_tokens)
        return Reservation(cost, worst_in + out_tokens, est_in, out_tokens)

    async def _attempt(
        self, tally: Tally, ref: ModelRef, request: Request, repair: bool
    ) -> Sent | Refusal | None:
        """One request: hold budget room and a slot, send, book what it cost.

        Prompt caching: the first request of a prefix group goes alone, the others of
        the group wait for its answer before they hold any budget or slot
        (``_engine.warmup``). None: a stop came while waiting, nothing was sent.
        """
        prefix = tally.pj.prefix
        key = None if prefix is None else warmup_key(prefix, ref.provider, ref.model)
        if key is None:
            return await self._attempt_now(tally, ref, request, repair)
        with self.stopper.interruptible() as waiting:
            lead = await self.warmup.before_send(key)
        if waiting.cancelled_caught:
            return None
        sent: Sent | Refusal | None = None
        try:
            sent = await self._attempt_now(tally, ref, request, repair)
        finally:
            warmed = isinstance(sent, Sent) and isinstance(sent.outcome, Answer)
            self.warmup.after_send(key, warmed, lead)
        return sent

    async def _attempt_now(
        self, tally: Tally, ref: ModelRef, request: Request, repair: bool
    ) -> Sent | Refusal | None:
        price = self.prices.price(ref)  # for the reservation and for what the answer cost
        res = self.reservation(request, tally, price)
        held: Held | Refusal | None = self.budgets.reserve_now(res.cost, res.budget_tokens)
        if held is None:  # a shared ledger, or no room yet: the path that may wait
            held = await self.budgets.reserve(res.cost, res.budget_tokens)
        if held is None or isinstance(held, Refusal):
            return held
        gate = self.gates[ref]
        outcome: Answer | ProviderError | None = None
        try:
            if not gate.acquire_now(res.input_tokens, res.output_tokens):
                with self.stopper.interruptible() as waiting:
                    await gate.acquire(res.input_tokens, res.output_tokens)
                if waiting.cancelled_caught:
                    gate.settle(res.input_tokens, res.output_tokens, 0, 0)
                    held.spend(0.0, 0)
                    return None
            tally.attempts += 1
            started = self.clock.time()
            if self.bus.wants_started:
                job_id = tally.pj.job.id
                self.bus.emit(
                    AttemptStarted(started, job_id, ref.provider, ref.model, tally.attempts)
                )
            try:
                outcome = await self._send(ref, request)
            except ProviderError as exc:
                outcome = exc
            except Exception as exc:
                outcome = self._foreign(exc)
            usage = outcome.usage if isinstance(outcome, Answer) else _usage_of(outcome)
            cost: float | None = 0.0  # no usage: nothing spent; unpriced: not known
            if usage is not None:
                cost = None if price is None else price.cost(usage)
                tally.add_spend(usage, cost)
            real = usage or _NO_USAGE
            held.spend(cost or 0.0, real.input_tokens + real.output_tokens)
            gate.settle(res.input_tokens, res.output_tokens, real.input_tokens, real.output_tokens)
        finally:
            if not self.budgets.settle_now(held):  # however the attempt ends
                await self.budgets.settle(held)
        if isinstance(outcome, Answer):
            self._auth_failures = 0
            self._answered.add(ref.provider)
            self.breakers[ref].record_success()
            gate.on_success(outcome.limits)
            tally.last_text = outcome.text
        kept = request if self.settings.log_prompts else None
        return Sent(outcome, started, usage, cost, repair, kept)

    def _send(self, ref: ModelRef, request: Request) -> Awaitable[Answer]:
        """One send, within --timeout: a provider that honours the deadline it is given is
        awaited as it is (no coroutine of ours around it); any other gets a timer."""
        timeout = self.settings.timeout
        provider = self.provider(ref.provider)
        sending = provider.send(ref.model, request, timeout)
        if getattr(provider, "honours_deadline", False):
            return sending
        return _within(sending, timeout)

    def _foreign(self, exc: Exception) -> ProviderError:
        """A failure that is not a ProviderError, as one: never the whole run's end."""
        timeout = self.settings.timeout
        err = translate_exception(
            exc, timeout_message=f"no complete answer within --timeout {timeout:g} s"
        )
        if err is not None:
            return err
        # A bug of ours: one job's attempt, never the whole run.
        message = redact(f"{type(exc).__name__}: {exc}", None)
        other = OtherProviderError(f"internal error while sending: {message}")
        other.retryable = True
        return other

    def _auth_failed(
        self, err: ProviderError, tally: Tally, ref: ModelRef
    ) -> JobResult | NotWritten:
        self._auth_failures += 1
        if self._auth_failures >= AUTH_FAILURES_TO_STOP and not self.stopper.stopping:
            self.fatal = (
                f"stopped after {self._auth_failures} authentication failures in a row from "
                f"{ref.provider}: {err.message} — check the API key and run the same command "
                "again (jobs refused this way were not recorded, so they run then)"
            )
            self.stopper.stop(StopReason.AUTH)
        if ref.provider in self._answered:
            return tally.result(Status.FAILED, ref)  # the key works: this job or model is refused
        self.auth_withheld += 1
        return NOT_WRITTEN

    def _refused(self, refusal: Refusal, tally: Tally, ref: ModelRef) -> JobResult | NotWritten:
        if not self.stopper.stopping:
            message = refusal.message
            if self.budgets.in_flight == 0 and tally.attempts == tally.carried:
                message += f"; job {tally.pj.job.id!r} alone needs more than the room left"
            self.fatal = self.fatal or message
            now = self.clock.time()
            self.bus.emit(BudgetStopped(now, refusal.reason, message, refusal.resets_at))
        if refusal.reason == StopReason.BUDGET_WINDOW and self.resets_at is None:
            self.resets_at = refusal.resets_at
        self.stopper.stop(StopReason(refusal.reason))
        if tally.attempts == tally.carried:  # nothing sent by this run: it stays resumable
            return NOT_WRITTEN
        return tally.result(Status.FAILED, ref, error=ResultError.budget())

    def _emit_attempt(self, tally: Tally, ref: ModelRef, sent: Sent, backoff: float | None) -> None:
        emit_attempt(self.bus, tally, ref, sent, backoff, self.clock.time())


async def _within(sending: Awaitable[Answer], limit_s: float) -> Answer:
    with anyio.fail_after(limit_s):
        return await sending


_RETRY = object()  # _after_error: the wait is over, try the same model again
_NO_USAGE = Usage()


def _usage_of(err: object) -> Usage | None:
    spent = getattr(err, "usage", None)
    return spent if isinstance(spent, Usage) else None
