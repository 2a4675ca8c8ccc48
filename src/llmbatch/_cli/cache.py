"""``llmbatch cache stats|clear|prune``: look after the response cache (SPEC §11).

Only typer at module level: cli.py imports this for every command.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from llmbatch._cache.fileid import CacheFile

cache_app = typer.Typer(
    name="cache",
    help="The response cache: stats, clear, prune.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
)

PathOpt = Annotated[
    Path | None,
    typer.Option("--cache", help="Cache file [default: $XDG_CACHE_HOME/llmbatch/cache.sqlite]."),
]


def parse_duration(text: str) -> float:
    """``30d``, ``12h``, ``90m``, ``45s``, ``2w`` or plain seconds, in seconds."""
    from llmbatch._config.modes import duration_seconds

    seconds = duration_seconds(text)
    if seconds is None:
        raise ValueError(f"not a duration: {text!r} (try 30d, 12h, 90m)")
    return seconds


def _path(path: Path | None) -> Path:
    from llmbatch._cache.sqlfile import default_cache_path

    return path if path is not None else default_cache_path()


def _checked(path: Path | None, command: str, deleting: bool = False) -> tuple[Path, CacheFile]:
    """The cache path, and what it holds; a file that is no cache is exit 2, untouched."""
    from llmbatch._cache.fileid import check_cache_file
    from llmbatch._cache.sqlfile import default_cache_path
    from llmbatch._core.exceptions import UsageError

    p = _path(path)
    default = p == default_cache_path()
    try:
        return p, check_cache_file(p, purpose=command, deleting=deleting, default=default)
    except UsageError as exc:
        sys.stderr.write(f"llmbatch: {exc}\n")
        raise typer.Exit(2) from None


def _out(text: str) -> None:
    sys.stdout.write(text + "\n")


@cache_app.command("stats")
def stats(
    path: PathOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON to stdout.")] = False,
) -> None:
    """How many answers the cache holds, its size, and what it has saved."""
    from llmbatch._cache.fileid import CacheFile
    from llmbatch._cache.records import CacheContents
    from llmbatch._cache.store import ResponseCache

    p, found_file = _checked(path, "cache stats")
    if found_file in (CacheFile.ABSENT, CacheFile.EMPTY):
        found: CacheContents | None = CacheContents(str(p), 0, 0, 0, 0.0, None, None)
    else:
        cache = ResponseCache(p)
        found = cache.contents()
        cache.close()
    if found is None:
        raise typer.Exit(1)  # the cache said why, once
    if as_json:
        import dataclasses

        import orjson

        _out(orjson.dumps(dataclasses.asdict(found), option=orjson.OPT_INDENT_2).decode())
        return
    _out(f"cache:    {found.path}")
    _out(f"answers:  {found.entries:,}  ({found.bytes / 1e6:,.1f} MB)")
    _out(f"shared:   {found.shared:,} shared across job ids (temperature 0, sent to the provider)")
    _out(
        f"per job:  {found.per_job:,} for their own job id only (sampled, or the provider "
        "takes no temperature: Anthropic)"
    )
    if found.unrecorded:
        _out(f"          {found.unrecorded:,} stored by an older llmbatch (not recorded which)")
    _out(f"hits:     {found.hits:,}  (${found.saved_usd:,.6f} saved)")
    if found.oldest is not None and found.newest is not None:
        from llmbatch._observe.jsonlog import rfc3339_ms

        _out(f"stored:   {rfc3339_ms(found.oldest)} … {rfc3339_ms(found.newest)}")


@cache_app.command("clear")
def clear(path: PathOpt = None) -> None:
    """Delete every cached answer (removes the file; a corrupt one too at the default path)."""
    from llmbatch._cache.fileid import CacheFile
    from llmbatch._cache.sqlfile import clear_cache

    p, found = _checked(path, "cache clear", deleting=True)
    if found is CacheFile.EMPTY and path is not None:
        _out(f"nothing to clear: {p} is empty (left as it is)")
        return
    freed = clear_cache(p)
    _out(f"cleared {p} ({freed / 1e6:,.1f} MB freed)")


@cache_app.command("prune")
def prune(
    older_than: Annotated[
        str,
        typer.Option("--older-than", help="Drop answers unused for this long: 30d, 12h, 90m."),
    ],
    path: PathOpt = None,
) -> None:
    """Delete answers neither stored nor used within --older-than."""
    from llmbatch._cache.fileid import CacheFile
    from llmbatch._cache.store import ResponseCache

    try:
        seconds = parse_duration(older_than)
    except ValueError as exc:
        sys.stderr.write(f"llmbatch: --older-than: {exc}\n")
        raise typer.Exit(2) from None
    p, found = _checked(path, "cache prune")
    if found in (CacheFile.ABSENT, CacheFile.EMPTY):
        _out(f"no cache at {p}")
        return
    cache = ResponseCache(p)
    removed = cache.prune(seconds)
    usable = cache.usable
    cache.close()
    if not usable:
        raise typer.Exit(1)
    _out(f"pruned {removed:,} answers from {p}")
