"""Jobs from columns: Parquet, CSV and Hugging Face datasets, read in batches.

Each row becomes the JSON object a JSONL line would be, so the one parser, the
check pass and every error (``FILE:ROW: message``) work unchanged:

- ``--prompt-column C``: the row's C is the ``prompt`` (``input`` for embeddings);
  ``--id-column I`` its id; ``--include-columns A,B`` go to ``metadata``.
- no prompt column: the row as it is (columns ``id``, ``prompt``, ``model``…, or a
  record for ``--template``), with ``--id-column`` as its ``id``.

Memory stays flat: rows are read ``BATCH`` at a time (Parquet row groups, CSV
blocks, a dataset's Arrow batches). ``hf://datasets/NAME[:split]`` loads NAME as a
local dataset directory when there is one (``save_to_disk``, or Parquet files),
else from the hub with streaming.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from llmbatch._core.exceptions import UsageError

BATCH = 4096
HF_PREFIX = "hf://datasets/"


@dataclass(frozen=True, slots=True)
class Columns:
    """Which columns make a job."""

    id_column: str | None = None
    prompt_column: str | None = None
    include: tuple[str, ...] = ()
    embed: bool = False  # the prompt column is an embedding's input
    source: str | None = None  # the jobs as given (an hf:// URI, which a Path would fold)


def source_name(path: Path | str) -> str:
    """The jobs source as given: a path, or an ``hf://`` URI (a Path folds its ``//``)."""
    text = str(path)
    if text.startswith("hf:/datasets/"):
        return HF_PREFIX + text[len("hf:/datasets/") :]
    return text


def is_columnar(path: Path | str) -> bool:
    text = source_name(path)
    return text.startswith(HF_PREFIX) or Path(text).suffix.lower() in (".parquet", ".pq", ".csv")


def iter_rows(path: Path | str, columns: Columns | None = None) -> Iterator[tuple[int, bytes]]:
    """(row number from 1, the row as a JSON object) for every row of a columnar source."""
    cols = columns or Columns()
    text = cols.source or source_name(path)
    if text.startswith(HF_PREFIX):
        batches = _hf_batches(text[len(HF_PREFIX) :])
    elif text.lower().endswith(".csv"):
        batches = _csv_batches(Path(text))
    else:
        batches = _parquet_batches(Path(text))
    n = 0
    for rows in batches:
        for row in rows:
            n += 1
            yield n, orjson.dumps(_record(row, cols, n), default=str)


def _record(row: dict[str, Any], cols: Columns, n: int) -> dict[str, Any]:
    for name in (cols.id_column, cols.prompt_column, *cols.include):
        if name is not None and name not in row:
            raise UsageError(f"row {n} has no column {name!r} (it has: {', '.join(row)})")
    if cols.prompt_column is None:
        record = dict(row)
    else:
        record = {"input" if cols.embed else "prompt": row[cols.prompt_column]}
        for key in ("model", "dimensions"):
            if key in row and row[key] is not None:
                record[key] = row[key]
    if cols.id_column is not None:
        record["id"] = row[cols.id_column]
    if cols.include:
        record["metadata"] = {name: row[name] for name in cols.include}
    return record


def _pyarrow() -> Any:
    try:
        import pyarrow
    except ImportError:
        raise UsageError(
            "Parquet and CSV jobs need pyarrow: pip install 'llmbatch[parquet]'"
        ) from None
    return pyarrow


def _parquet_batches(path: Path) -> Iterator[list[dict[str, Any]]]:
    _pyarrow()
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except FileNotFoundError:
        raise UsageError(f"jobs file not found: {path}") from None
    except Exception as exc:
        raise UsageError(f"cannot read {path} as Parquet: {exc}") from None
    for batch in pf.iter_batches(batch_size=BATCH):
        yield batch.to_pylist()


def _csv_batches(path: Path) -> Iterator[list[dict[str, Any]]]:
    pa = _pyarrow()
    import csv

    from pyarrow import csv as pacsv

    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            header = next(csv.reader(f), [])
    except FileNotFoundError:
        raise UsageError(f"jobs file not found: {path}") from None
    # Every column a string, as written: an id "007" stays "007".
    convert = pacsv.ConvertOptions(
        column_types={name: pa.string() for name in header}, strings_can_be_null=False
    )
    reader = pacsv.open_csv(
        path, read_options=pacsv.ReadOptions(block_size=1 << 20), convert_options=convert
    )
    for batch in reader:
        yield batch.to_pylist()


def _hf_batches(spec: str) -> Iterator[list[dict[str, Any]]]:
    try:
        import datasets
    except ImportError:
        raise UsageError(
            "hf:// jobs need the datasets library: pip install 'llmbatch[hf]'"
        ) from None
    name, split = spec, None
    head, sep, tail = spec.rpartition(":")
    if sep and head and "/" not in tail:
        name, split = head, tail
    local = Path(name)
    if local.is_dir():
        ds = _local_dataset(datasets, local, split)
    else:
        ds = datasets.load_dataset(name, split=split or "train", streaming=True)
    for batch in ds.iter(batch_size=BATCH):
        keys = list(batch)
        yield [dict(zip(keys, values, strict=True)) for values in zip(*batch.values(), strict=True)]


def _local_dataset(datasets: Any, path: Path, split: str | None) -> Any:
    parquet = sorted(path.rglob("*.parquet"))
    if (path / "dataset_dict.json").exists() or (path / "dataset_info.json").exists():
        ds = datasets.load_from_disk(str(path))
        if isinstance(ds, datasets.DatasetDict):
            if split is None:
                split = "train" if "train" in ds else next(iter(ds))
            if split not in ds:
                raise UsageError(f"hf://datasets/{path}: no split {split!r} (has {', '.join(ds)})")
            ds = ds[split]
        return ds
    if parquet:
        files = [str(p) for p in parquet if split is None or split in p.name]
        return datasets.load_dataset("parquet", data_files=files, split="train", streaming=True)
    raise UsageError(f"hf://datasets/{path}: not a saved dataset nor a folder of Parquet files")
