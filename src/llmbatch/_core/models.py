"""Model specs: ``provider:model`` or a bare model name whose provider is inferred."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field

BUILTIN_PROVIDERS = ("anthropic", "openai", "gemini", "sim", "azure", "bedrock")

# Bare names we can place without being told (SPEC §1).
_INFERRED_PREFIXES = (
    ("claude-", "anthropic"),
    ("gpt-", "openai"),
    ("o1", "openai"),
    ("o3", "openai"),
    ("o4", "openai"),
    ("gemini-", "gemini"),
    ("text-embedding-", "openai"),
)


@dataclass(frozen=True, slots=True)
class ModelRef:
    """A model at a provider, e.g. ``anthropic:claude-haiku-4-5``."""

    provider: str
    model: str
    # Its hash and its text, computed once: a ref keys the limits, breakers, prices and
    # cache keys of every job, several times each. Not pickled (another process hashes
    # anew).
    _hash: int = field(default=0, init=False, repr=False, compare=False)
    _text: str = field(default="", init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_hash", hash((self.provider, self.model)))
        object.__setattr__(self, "_text", f"{self.provider}:{self.model}")

    def __hash__(self) -> int:
        return self._hash

    def __reduce__(self) -> tuple[type[ModelRef], tuple[str, str]]:
        return ModelRef, (self.provider, self.model)

    def __str__(self) -> str:
        return self._text


class ModelSpecError(ValueError):
    """A model spec that names no known provider and cannot be inferred."""


def infer_provider(model: str) -> str | None:
    for prefix, provider in _INFERRED_PREFIXES:
        if model.startswith(prefix):
            return provider
    return None


def parse_model_spec(spec: str, providers: Collection[str] = BUILTIN_PROVIDERS) -> ModelRef:
    """Parse ``provider:model`` or a bare name.

    Model names may themselves hold colons (``llama3:8b``), so only a prefix that
    names a known provider is taken as one.
    """
    spec = spec.strip()
    if not spec:
        raise ModelSpecError("empty model spec")
    head, sep, tail = spec.partition(":")
    if sep and head in providers:
        if not tail:
            raise ModelSpecError(f"model spec {spec!r} names no model after {head + ':'!r}")
        return ModelRef(head, tail)
    provider = infer_provider(spec)
    if provider is None or provider not in providers:
        known = ", ".join(sorted(providers))
        raise ModelSpecError(
            f"cannot tell the provider of model {spec!r}: write it as PROVIDER:MODEL "
            f"(providers: {known})"
        )
    return ModelRef(provider, spec)
