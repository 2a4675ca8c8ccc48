"""The offline provider: deterministic answers with realistic tokens and latency.

Same request → same text. Latency is drawn (log-normal) around
``LLMBATCH_SIM_LATENCY_MS`` (default 800 ms); ``0`` answers at once, which the
benchmarks use to measure the engine alone.

``LLMBATCH_SIM_FAIL_RATE`` (0–1, default 0) makes that share of attempts fail
with a transient fault (429, 500, 529), drawn at random, so retries show in the demo.
``LLMBATCH_SIM_INVALID_RATE`` (0–1, default 0) makes that share of first answers
to schema jobs invalid, so the repair path runs.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import os
import random
import statistics
import time
import types
from collections.abc import Generator

import anyio
import orjson

from llmbatch._core.exceptions import (
    Overloaded,
    ProviderTimeout,
    RateLimited,
    ServerError,
    UsageError,
)
from llmbatch._core.jobs import Request, estimate_input_tokens
from llmbatch._core.schema import sample_instance
from llmbatch._core.usage import Usage
from llmbatch.providers._base import Answer

_VOCAB = (
    "the of and to in is that for it as with was on be by this are at from or an which "
    "data model result batch request token latency system signal value report review "
    "summary customer product order service quality analysis feature update support "
    "clear short useful brief strong weak stable fast slow careful accurate simple "
    "because however therefore overall finally also often usually mostly rather"
).split()

# A fixed shuffled word stream; an answer is a slice of it, picked by the request's
# hash. One randrange a job instead of one random.choice a word (the sim's cost
# must not hide the engine's in the benchmarks).
_CORPUS = random.Random(1).choices(_VOCAB, k=8192)
# The stream as one string, and where each word starts in it: an answer is one slice.
_TEXT = " ".join(_CORPUS) + " "
_STARTS = list(itertools.accumulate((len(w) + 1 for w in _CORPUS), initial=0))
_CAPITALS = [w[0].upper() for w in _CORPUS]  # each word's first letter, capitalised


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise UsageError(f"{name} must be a number, got {raw!r}") from None
    if value < 0:
        raise UsageError(f"{name} must be ≥ 0, got {raw!r}")
    return value


# Output lengths, log-normal around 120 tokens (sigma 0.6): 1,024 quantiles, picked by
# the request's hash, so an answer costs no random generator of its own.
_LENGTHS = tuple(
    int(math.exp(math.log(120) + 0.6 * statistics.NormalDist().inv_cdf((i + 0.5) / 1024))) + 5
    for i in range(1024)
)


class SimProvider:
    """Answers locally. Holds no connections; ``aclose`` is a no-op."""

    name = "sim"
    honours_deadline = True  # an answer slower than the attempt's time limit times out

    def __init__(self) -> None:
        self.latency_ms = _env_float("LLMBATCH_SIM_LATENCY_MS", 800.0)
        self.fail_rate = min(1.0, _env_float("LLMBATCH_SIM_FAIL_RATE", 0.0))
        self.invalid_rate = min(1.0, _env_float("LLMBATCH_SIM_INVALID_RATE", 0.0))
        self._faults = random.Random()
        self.notes: set[str] = set()
        self._salts: dict[str, int] = {}  # model → its share of the seed

    async def send(self, model: str, request: Request, time_limit: float) -> Answer:
        """One attempt; raises ProviderError subclasses only, like the HTTP providers."""
        started = time.perf_counter()
        seed = self._seed(model, request)
        max_tokens = request.max_tokens or 1024

        if self.fail_rate and self._faults.random() < self.fail_rate:
            await self._sleep(0.1, time_limit)
            kind = self._faults.choice((RateLimited, ServerError, Overloaded))
            status = {RateLimited: 429, ServerError: 500, Overloaded: 529}[kind]
            raise kind(f"simulated {status}", status=status, retry_after=None)

        if request.schema is not None:
            text = self._structured(request, seed)
            out_tokens = max(1, math.ceil(len(text) / 3.5))
        else:
            out_tokens = min(max_tokens, _LENGTHS[seed & 1023])
            text = _words(seed >> 10, max(1, int(out_tokens / 1.3)))
        stop_reason = "end_turn"
        if out_tokens >= max_tokens:
            out_tokens = max_tokens
            stop_reason = "max_tokens"
        in_tokens = estimate_input_tokens(request)
        if self.latency_ms <= 0:
            await _one_turn()  # as an answer at once would take
            total = 0.0
        else:
            total = await self._sleep(1.0, time_limit)
        latency_ms = (time.perf_counter() - started) * 1000
        # Answer(text, usage, stop_reason, latency_ms, ttft_ms), by position.
        usage = Usage(in_tokens, out_tokens)
        return Answer(text, usage, stop_reason, latency_ms, min(total * 0.3, latency_ms))

    def _seed(self, model: str, request: Request) -> int:
        """The answer's seed: the plan's fingerprint of the request (a repair turn, which
        none was made for, hashes its own), mixed with the model asked."""
        if request.fingerprint is not None and not request.appended:
            base = int(request.fingerprint, 16)
        else:
            material = [request.system, request.messages, request.max_tokens, request.schema,
                        request.appended]  # fmt: skip
            digest = hashlib.blake2b(orjson.dumps(material, option=orjson.OPT_SORT_KEYS))
            base = int.from_bytes(digest.digest()[:8], "big")
        salt = self._salts.get(model)
        if salt is None:
            salted = hashlib.blake2b(model.encode(), digest_size=8).digest()
            salt = self._salts[model] = int.from_bytes(salted, "big")
        return base ^ salt

    def _structured(self, request: Request, seed: int) -> str:
        assert request.schema is not None
        rng = random.Random(seed)
        repairing = bool(request.appended)
        if self.invalid_rate and not repairing and rng.random() < self.invalid_rate:
            return '{"note": "this answer does not follow the schema"'
        return orjson.dumps(sample_instance(request.schema, rng)).decode()

    async def _sleep(self, share: float, time_limit: float) -> float:
        """Sleep a log-normal draw around the mean latency × share; return the ms slept.

        A draw past ``time_limit`` sleeps that long and times out, as a slow server would.
        """
        if self.latency_ms <= 0:
            await _one_turn()  # as an answer at once would take
            return 0.0
        sigma = 0.45
        mu = math.log(self.latency_ms * share) - sigma * sigma / 2
        # Latency is drawn from the clock, not the request: only the text is deterministic.
        ms = random.lognormvariate(mu, sigma)
        if ms / 1000 > time_limit:
            await anyio.sleep(time_limit)
            raise ProviderTimeout(f"no complete answer within --timeout {time_limit:g} s")
        await anyio.sleep(ms / 1000)
        return ms

    async def aclose(self) -> None:
        return None


@types.coroutine
def _one_turn() -> Generator[None, None, None]:
    """One turn of the loop: what ``asyncio.sleep(0)`` does, without its own frame."""
    yield


def _words(seed: int, n: int) -> str:
    """``n`` words of the corpus from a place the seed picks, as a sentence."""
    if n >= len(_CORPUS):
        start, n = 0, len(_CORPUS)
    else:
        start = seed % (len(_CORPUS) - n)
    at = _STARTS[start]
    # The first word capitalised, then the rest: one slice and one join.
    return "".join((_CAPITALS[start], _TEXT[at + 1 : _STARTS[start + n] - 1], "."))
