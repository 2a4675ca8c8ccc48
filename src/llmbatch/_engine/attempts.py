"""One job's attempts: reserve, wait for a slot, send, then retry, repair or fall back.

``JobRunner.run`` is the one place where budgets, rate limits, retries, schema
repair and fallback meet. Every request sent is one ``AttemptEnded`` event, under
the model it went to, whether or not its job ends up written.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anyio

from llmbatch._budget.context import Budgets, Stopper
from llmbatch._budget.ledger import Refusal
from llmbatch._cache.store import CachedAnswer, ResponseCache, cache_key_for, hit_result
from llmbatch._config.settings import RunConfig
from llmbatch._core.clock import Clock
from llmbatch._core.events import AttemptEnded, AttemptStarted, BudgetStopped, CacheHit, EventBus
from llmbatch._core.exceptions import OtherProviderError, ProviderError
from llmbatch._core.headers import RateLimitHint
from llmbatch._core.jobs import Request, estimate_input_tokens
from llmbatch._core.models import ModelRef
from llmbatch._core.pricing import PriceBook
from llmbatch._core.results import JobResult
from llmbatch._core.schema import validate_answer
from llmbatch._core.usage import Usage
from llmbatch._engine.plan import PreparedJob
from llmbatch._engine.takeover import BatchSeed
from llmbatch._engine.tally import NOT_WRITTEN, NotWritten, Reservation, Sent, Tally, repair_request
from llmbatch._limits.breaker import Breaker
from llmbatch._limits.ratelimit import RateLimiter
from llmbatch.providers._base import Answer, Provider
from llmbatch.providers._errors import redact, translate_errors

AUTH_FAILURES_TO_STOP = 3

# Stops after which a job cut mid-retry is left unwritten (it runs again on resume).
_HARD_STOPS = frozenset({"signal", "auth", "output_closed", "shared_store"})


@dataclass(slots=True)
class JobRunner:
    """Runs prepared jobs to their results, sharing the run's limits, budgets and events."""

    config: RunConfig
    clock: Clock
    bus: EventBus
    prices: PriceBook
    provider: Callable[[str], Provider]
    gates: dict[ModelRef, RateLimiter]
    breakers: dict[ModelRef, Breaker]
    budgets: Budgets
    stopper: Stopper
    backoff: Callable[[int, float | None], float]
    cache: ResponseCache | None = None
    fatal: str | None = None
    resets_at: float | None = None  # a full rolling window frees enough then (wall clock)
    auth_withheld: int = 0  # jobs not written because the key looked wrong
    seeds: dict[str, BatchSeed] = field(default_factory=dict)  # jobs the batches left
    _auth_failures: int = 0
    _answered: set[str] = field(default_factory=set)  # providers that answered once

    async def run(self, pj: PreparedJob) -> JobResult | None:
        seed = self.seeds.pop(pj.job.id, None) if self.seeds else None
        if seed is not None and seed.fingerprint not in (None, pj.fingerprint):
            seed = None  # the job changed since its batch: it starts anew
        if seed is None or not seed.repairs:
            hit = self._from_cache(pj)
            if hit is not None:
                return hit  # before any budget or rate-limit slot: a hit costs nothing
        tally = Tally(pj)
        chain, first = pj.chain, None
        if seed is not None:
            chain, begun = seed.begin(tally, self.config.repair_attempts)
            if isinstance(begun, JobResult):
                begun.batch = seed.batch
                return begun
            first = begun
        result = await self._on_chain(tally, chain, first)
        if seed is not None and result is not None and seed.repairs:
            result.batch = seed.batch  # part of the answer came from the batch
        return result

    async def _on_chain(
        self, tally: Tally, chain: list[ModelRef], first: Request | None
    ) -> JobResult | None:
        """The models in turn; ``first`` (a repair turn) opens on the first of them."""
        last_ref = chain[0]
        for position, ref in enumerate(chain):
            has_next = position + 1 < len(chain)
            if has_next and not self.breakers[ref].allow():
                continue  # the model is failing for everyone: go straight to the fallback
            if position > 0:
                tally.fallbacks += 1
            last_ref = ref
            outcome = await self._on_model(tally, ref, has_next, first if position == 0 else None)
            if isinstance(outcome, NotWritten):
                return None
            if outcome is not None:
                return outcome
        return tally.result("failed", last_ref)

    async def _on_model(
        self, tally: Tally, ref: ModelRef, has_next: bool, first: Request | None = None
    ) -> JobResult | NotWritten | None:
        """Attempts on one model; None: give up on it (the fallback, if any, is next)."""
        cfg = self.config
        request = first or tally.pj.request
        tries = 0
        repairs_left = cfg.repair_attempts - (first is not None)
        while tries < cfg.max_attempts:
            if self.stopper.stopping and (
                tally.attempts == tally.carried or self.stopper.stopped_by in _HARD_STOPS
            ):
                return NOT_WRITTEN
            sent = await self._attempt(tally, ref, request, request is not tally.pj.request)
            if sent is None:
                continue  # stopped while waiting: the checks above decide
            if isinstance(sent, Refusal):
                return self._refused(sent, tally, ref)
            answer = sent.outcome
            if isinstance(answer, ProviderError) and answer.retry_now:
                self._emit_attempt(tally, ref, sent, 0.0)
                tally.errors[answer.error_type] += 1
                continue  # a setting of ours was refused and changed: send again at once
            tries += 1
            if isinstance(answer, ProviderError):
                verdict = self._judge(answer, tally, ref, tries, has_next)
                delay = verdict if isinstance(verdict, float) else None
                self._emit_attempt(tally, ref, sent, delay)
                if delay is None:
                    return verdict  # type: ignore[return-value]
                with self.stopper.interruptible():
                    await self.clock.sleep(delay)
                continue
            self._emit_attempt(tally, ref, sent, None)
            common = {
                "output": answer.text,
                "latency_ms": answer.latency_ms,
                "ttft_ms": answer.ttft_ms,
                "stop_reason": answer.stop_reason,
            }
            if request.schema is None:
                return self._to_cache(tally, ref, answer, None, common)
            parsed, problem = validate_answer(answer.text, request.schema)
            if problem is None:
                return self._to_cache(tally, ref, answer, parsed, common)
            if repairs_left > 0:
                repairs_left -= 1
                tally.repairs += 1
                request = repair_request(request, answer.text, problem)
                tries = 0  # a repair is a new question, with its own retries
                continue
            error = {
                "type": "schema_invalid",
                "message": f"the answer does not match the schema: {problem}",
                "status": None,
            }
            return tally.result("failed", ref, error=error, **common)
        return None

    def _from_cache(self, pj: PreparedJob) -> JobResult | None:
        """The first model of the chain with a cached answer answers the job."""
        if self.cache is None:
            return None
        for ref in pj.chain:
            found = self.cache.lookup(cache_key_for(self.config, ref, pj.request, pj.job.id))
            if found is not None:
                now = self.clock.time()
                self.bus.emit(CacheHit(now, pj.job.id, ref.provider, ref.model, found.cost_usd))
                return hit_result(
                    found, job_id=pj.job.id, metadata=pj.job.metadata, fingerprint=pj.fingerprint
                )
        return None

    def _to_cache(
        self, tally: Tally, ref: ModelRef, answer: Answer, parsed: Any, common: dict[str, Any]
    ) -> JobResult:
        """A complete, valid answer: keep it under the job's own question, then the result."""
        complete = answer.stop_reason not in ("max_tokens", "length")
        if self.cache is not None and complete:
            pj = tally.pj
            kept = CachedAnswer(
                answer.text,
                parsed,
                answer.usage,
                tally.cost,
                answer.stop_reason,
                ref.model,
                ref.provider,
            )
            self.cache.store(cache_key_for(self.config, ref, pj.request, pj.job.id), kept)
        return tally.result("ok", ref, parsed=parsed, **common)

    def reservation(self, ref: ModelRef, request: Request) -> Reservation:
        """Worst case for the budget; the providers' own count for the rate limits."""
        out_tokens = request.max_tokens or self.config.max_tokens
        worst_in = estimate_input_tokens(request, conservative=True)
        price = self.prices.price(ref)
        cost = 0.0 if price is None else price.cost(Usage(worst_in, out_tokens))
        return Reservation(cost, worst_in + out_tokens, estimate_input_tokens(request), out_tokens)

    async def _attempt(
        self, tally: Tally, ref: ModelRef, request: Request, repair: bool
    ) -> Sent | Refusal | None:
        """One request: hold budget room and a slot, send, book what it cost.

        None: a stop came while waiting, nothing was sent.
        """
        res = self.reservation(ref, request)
        held = await self.budgets.reserve(res.cost, res.budget_tokens)
        if held is None or isinstance(held, Refusal):
            return held
        gate = self.gates[ref]
        try:
            with self.stopper.interruptible() as waiting:
                await gate.acquire(res.input_tokens, res.output_tokens)
            if waiting.cancelled_caught:
                gate.settle(res.input_tokens, res.output_tokens, 0, 0)
                held.spend(0.0, 0)
                return None
            tally.attempts += 1
            started = self.clock.time()
            job_id = tally.pj.job.id
            self.bus.emit(AttemptStarted(started, job_id, ref.provider, ref.model, tally.attempts))
            outcome = await self._send(ref, request)
            usage = outcome.usage if isinstance(outcome, Answer) else _usage_of(outcome)
            cost = self.prices.cost(ref, usage) if usage is not None else 0.0
            if usage is not None:
                tally.add_spend(usage, cost)
            real = usage or Usage()
            held.spend(cost or 0.0, real.total)
            gate.settle(res.input_tokens, res.output_tokens, real.input_tokens, real.output_tokens)
        finally:
            await self.budgets.settle(held)  # however the attempt ends
        if isinstance(outcome, Answer):
            self._auth_failures = 0
            self._answered.add(ref.provider)
            self.breakers[ref].record_success()
            gate.on_success(outcome.limits)
            tally.last_text = outcome.text
        kept = request if self.config.log_prompts else None
        return Sent(outcome, started, usage, cost, repair, kept)

    async def _send(self, ref: ModelRef, request: Request) -> Answer | ProviderError:
        """Send once; every failure, foreign ones included, becomes a ProviderError."""
        timeout = self.config.timeout
        try:
            with translate_errors(
                timeout_message=f"no complete answer within --timeout {timeout:g} s"
            ):
                with anyio.fail_after(timeout):
                    return await self.provider(ref.provider).send(ref.model, request, timeout)
        except ProviderError as exc:
            return exc
        except Exception as exc:  # a bug of ours: one job's attempt, never the whole run
            message = redact(f"{type(exc).__name__}: {exc}", None)
            err = OtherProviderError(f"internal error while sending: {message}")
            err.retryable = True
            return err

    def _judge(
        self, err: ProviderError, tally: Tally, ref: ModelRef, tries: int, has_next: bool
    ) -> JobResult | NotWritten | float | None:
        """After a failed attempt: the job's end, a delay before retrying, or None to give
        up on this model."""
        tally.errors[err.error_type] += 1
        tally.last_error = err.to_dict()
        if err.error_type == "rate_limited":
            hint = err.limits if isinstance(err.limits, RateLimitHint) else None
            self.gates[ref].on_rate_limited(err.retry_after, hint)
        if err.error_type == "auth":
            return self._auth_failed(err, tally, ref)
        if not err.retryable:
            return tally.result("failed", ref)
        breaker = self.breakers[ref]
        breaker.record_failure()
        if tries >= self.config.max_attempts or (has_next and not breaker.allow()):
            return None
        delay = float(self.backoff(tries, err.retry_after))
        stats = getattr(self.gates[ref], "stats", None)
        if stats is not None:
            stats.backoff_s += delay
        return delay

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
            self.stopper.stop("auth")
        if ref.provider in self._answered:
            return tally.result("failed", ref)  # the key works: this job or model is refused
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
        if refusal.reason == "budget_window" and self.resets_at is None:
            self.resets_at = refusal.resets_at
        self.stopper.stop(refusal.reason)
        if tally.attempts == tally.carried:  # nothing sent by this run: it stays resumable
            return NOT_WRITTEN
        error = {
            "type": "budget",
            "message": "the budget cap was reached before this job finished",
            "status": None,
        }
        return tally.result("failed", ref, error=error)

    def _emit_attempt(self, tally: Tally, ref: ModelRef, sent: Sent, backoff: float | None) -> None:
        out = sent.outcome
        answer = out if isinstance(out, Answer) else None
        err = out if isinstance(out, ProviderError) else None
        u = sent.usage or Usage()
        self.bus.emit(
            AttemptEnded(
                ts=self.clock.time(),
                started_ts=sent.started,
                job_id=tally.pj.job.id,
                provider=ref.provider,
                model=ref.model,
                n=tally.attempts,
                outcome=err.error_type if err else "ok",
                http_status=err.status if err else 200,
                latency_ms=answer.latency_ms if answer else None,
                ttft_ms=answer.ttft_ms if answer else None,
                input_tokens=u.input_tokens,
                output_tokens=u.output_tokens,
                cost_usd=sent.cost,
                retry_after_s=err.retry_after if err else None,
                backoff_s=None if backoff is None else round(backoff, 3),
                message=err.message if err else None,
                finish_reason=answer.stop_reason if answer else None,
                repair=sent.repair,
                request_id=out.request_id,
                prompt=_prompt(sent.request),
            )
        )


def _prompt(request: Request | None) -> Any:
    """What --log-prompts puts in the attempt's event: the system prompt and messages sent."""
    if request is None:
        return None
    return {"system": request.system, "messages": request.messages}


def _usage_of(err: object) -> Usage | None:
    spent = getattr(err, "usage", None)
    return spent if isinstance(spent, Usage) else None
