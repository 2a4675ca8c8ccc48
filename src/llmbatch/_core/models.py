"""Model specs: ``provider:model`` or a bare model name whose provider is inferred."""

from __future__ import annotations

from collections.abc import Collection

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


class ModelRef:
    """A model at a provider, e.g. ``anthropic:claude-haiku-4-5``. Immutable.

    One object per (provider, model): ``ModelRef("sim", "m") is ModelRef("sim", "m")``.
    So equality and hashing are the object's own, done in C: a ref keys the limits,
    breakers, prices and cache keys of every job, several times each, and a hash
    method of ours would be a Python call each time. Pickled as its two names, so
    another process finds (or makes) its own.
    """

    __slots__ = ("_text", "model", "provider")
    provider: str
    model: str
    _text: str

    def __new__(cls, provider: str, model: str) -> ModelRef:
        ref = _REFS.get((provider, model))
        if ref is None:
            ref = object.__new__(cls)
            object.__setattr__(ref, "provider", provider)
            object.__setattr__(ref, "model", model)
            object.__setattr__(ref, "_text", f"{provider}:{model}")
            ref = _REFS.setdefault((provider, model), ref)  # two threads: one wins
        return ref

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"ModelRef is immutable: cannot set {name!r}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"ModelRef is immutable: cannot delete {name!r}")

    def __reduce__(self) -> tuple[type[ModelRef], tuple[str, str]]:
        return ModelRef, (self.provider, self.model)

    def __copy__(self) -> ModelRef:
        return self

    def __deepcopy__(self, memo: object) -> ModelRef:
        return self

    def __repr__(self) -> str:
        return f"ModelRef(provider={self.provider!r}, model={self.model!r})"

    def __str__(self) -> str:
        return self._text


_REFS: dict[tuple[str, str], ModelRef] = {}  # every ModelRef made, by its names


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
