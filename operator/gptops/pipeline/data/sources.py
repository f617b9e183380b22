"""Loading: every source (local path, URL, S3, Hugging Face) becomes one Arrow Dataset with the format's normalized
columns, read by `datasets`' own loaders into a cache on disk (memory-mapped, never whole in memory).

Checks run on the Arrow columns; when one fails, or a loader cannot parse a file, the file is read again record by
record to name the file, line and field of the first bad record. No torch here.
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import os
import shutil
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from gptops.pipeline.config import PrepareConfig
from gptops.pipeline.errors import PipelineError

log = logging.getLogger(__name__)

SUFFIX_FORMATS = {".txt": "text", ".text": "text", ".md": "text", ".jsonl": "jsonl", ".ndjson": "jsonl",
                  ".json": "json", ".csv": "csv", ".parquet": "parquet"}
BUILDERS = {"text": "text", "jsonl": "json", "json": "json", "csv": "csv", "parquet": "parquet"}
"""File format -> the `datasets` packaged loader that reads it."""
JSON_CHUNK_BYTES = 1 << 20  # the json loader's block: its memory is a small multiple of it


@contextlib.contextmanager
def offline() -> Iterator[None]:
    """No hub reads while a packaged loader reads local files (no download counts, no lookups). Scoped to the call:
    the environment is left alone, so a later stage in the same process may still fetch a hub model."""
    from datasets import config

    before = config.HF_HUB_OFFLINE
    config.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        config.HF_HUB_OFFLINE = before


def columns(fmt: str) -> tuple[str, ...]:
    """The normalized columns of a dataset format."""
    return {"text": ("text",), "chat": ("messages",), "prompt-completion": ("prompt", "completion")}[fmt]


def wanted_fields(config: PrepareConfig) -> dict[str, str]:
    """normalized column -> the field name in the user's data."""
    if config.format == "text":
        return {"text": config.text_field}
    if config.format == "chat":
        return {"messages": config.messages_field}
    return {"prompt": config.prompt_field, "completion": config.completion_field}


def load_records(config: PrepareConfig):
    """The raw documents as a Dataset with the format's normalized columns, and a description of where they came from."""
    from datasets import concatenate_datasets

    source = config.source
    cache = config.artifact_root / "cache" / "datasets"
    if source.kind == "huggingface":
        return _load_hub(config), source.describe()
    if source.kind == "path":
        files = _list_files(Path(source.location), config)
    else:
        download_dir = config.artifact_root / "cache" / "raw"
        if download_dir.exists():
            shutil.rmtree(download_dir)
        download_dir.mkdir(parents=True)
        files = _download_url(source.location, download_dir) if source.kind == "url" else \
            _download_s3(source.location, source.endpoint_url, download_dir, config)
    origin = source.location
    parts = [ds for path, shown in files if (ds := _load_file(path, shown, config, cache)) is not None and len(ds)]
    if not parts:
        raise PipelineError(f"{origin}: no records found; expected {config.format} data")
    return (parts[0] if len(parts) == 1 else concatenate_datasets(parts)), origin


def _list_files(path: Path, config: PrepareConfig) -> list[tuple[Path, str]]:
    if path.is_file():
        return [(path, str(path))]
    if not path.exists():
        raise PipelineError(f"{path}: no such file or directory; expected the dataset file or a directory of them")
    files = sorted(p for p in path.rglob("*") if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts))
    if config.file_format == "auto":
        files = [p for p in files if p.suffix.lower() in SUFFIX_FORMATS]
    if not files:
        raise PipelineError(f"{path}: an empty directory; expected files ending in {', '.join(sorted(SUFFIX_FORMATS))}")
    return [(p, str(p)) for p in files]


def _download_url(url: str, target: Path) -> list[tuple[Path, str]]:
    name = Path(urllib.parse.urlparse(url).path).name or "data"
    path = target / name
    log.info("Downloading dataset url=%s", url)
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(path, "wb") as f:
            shutil.copyfileobj(response, f)
    except OSError as e:
        raise PipelineError(f"{url}: cannot download ({e}); expected a reachable http(s) URL") from e
    return [(path, url)]


def _download_s3(uri: str, endpoint_url: str | None, target: Path, config: PrepareConfig) -> list[tuple[Path, str]]:
    import s3fs

    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": endpoint_url} if endpoint_url else {})
    key = uri.removeprefix("s3://").rstrip("/")
    try:
        if fs.isdir(key):
            keys = sorted(k for k in fs.find(key) if config.file_format != "auto" or Path(k).suffix.lower() in SUFFIX_FORMATS)
        else:
            keys = [key]
        if not keys:
            raise PipelineError(f"{uri}: no data files under this prefix; expected files ending in {', '.join(sorted(SUFFIX_FORMATS))}")
        files = []
        for i, k in enumerate(keys):
            local = target / f"{i:05d}-{Path(k).name}"
            fs.get(k, str(local))
            files.append((local, "s3://" + k))
        return files
    except FileNotFoundError as e:
        raise PipelineError(f"{uri}: no such object or prefix; expected an existing s3://bucket/key") from e
    except PipelineError:
        raise
    except Exception as e:  # botocore and aiohttp errors vary; the message is what a person needs
        raise PipelineError(f"{uri}: cannot read from S3 ({type(e).__name__}: {e})") from e


def _load_hub(config: PrepareConfig):
    from datasets import load_dataset

    s = config.source
    try:
        ds = load_dataset(s.location, s.hf_config, split=s.hf_split, revision=s.hf_revision,
                          token=os.environ.get("HF_TOKEN") or None)
    except Exception as e:
        raise PipelineError(f"{s.location}: cannot load the Hugging Face dataset ({type(e).__name__}: {e})") from e
    wanted = wanted_fields(config)
    missing = [f for f in wanted.values() if f not in ds.column_names]
    if missing:
        raise PipelineError(f"{s.location}: no column {missing[0]!r} (dataset.fields); found columns: {', '.join(ds.column_names)}")
    return _normalized(ds, wanted, lambda: _rows(ds, wanted, s.location), s.location)


# ---------------------------------------------------------------------------------------------------------------
# One file: the datasets loader, then checks on the Arrow columns


def file_format(path: Path, shown: str, config: PrepareConfig) -> str:
    """The file's format: dataset.fileFormat, or its suffix."""
    fmt = config.file_format if config.file_format != "auto" else SUFFIX_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise PipelineError(f"{shown}: cannot tell the file format from the suffix {path.suffix!r}; "
                            f"expected one of {', '.join(sorted(SUFFIX_FORMATS))} or dataset.fileFormat")
    if fmt not in BUILDERS:
        raise PipelineError(f"{shown}: unknown file format {fmt!r} (dataset.fileFormat)")
    return fmt


def _load_file(path: Path, shown: str, config: PrepareConfig, cache: Path):
    """One file as a Dataset of normalized columns (None when it holds no records), read by datasets' loader."""
    from datasets import load_dataset

    fmt = file_format(path, shown, config)
    first = _first_content_byte(path, shown, fmt)
    if fmt == "text" and config.format != "text":
        raise PipelineError(f"{shown}: a plain text file has no fields; dataset.format {config.format} expects "
                            f"jsonl, json, csv or parquet records")
    options: dict[str, Any] = {}
    if fmt in ("text", "jsonl", "json"):
        options["encoding"] = "utf-8-sig"  # strict; a leading byte-order mark is dropped
    if fmt in ("jsonl", "json"):
        # The loader holds a block as bytes, decoded text and Python objects at once (10 MiB by default): 1 MiB
        # keeps that to a few MiB whatever the file's size, at no cost in speed.
        options["chunksize"] = JSON_CHUNK_BYTES
    if fmt == "json" and first == b"{":
        options["field"] = "data"  # an object with a 'data' array of records
    if fmt == "csv":
        options.update(keep_default_na=False, na_filter=False)  # an empty cell is an empty string, as csv reads it
        if header := _csv_header(path):  # every column a string, as csv reads it: "007" stays "007"
            from datasets import Features, Value
            options["features"] = Features({name: Value("string") for name in header})
    wanted = wanted_fields(config)

    def diagnose() -> Iterator[dict[str, Any]]:
        return _records(path, shown, fmt, config)

    try:
        with offline():
            ds = load_dataset(BUILDERS[fmt], data_files=str(path), split="train", cache_dir=str(cache), **options)
    except Exception as e:  # the loader's own message names neither the line nor the field: find them
        _find_bad_record(diagnose)
        raise PipelineError(f"{shown}: cannot load as {fmt} ({type(e).__name__}: {e}); expected {fmt} records") from e
    if fmt == "text":
        # A blank line is no document (the loader yields one row per line).
        ds = ds.filter(lambda batch: [bool(t.strip()) for t in batch["text"]], batched=True, desc="blank lines")
        return ds if len(ds) else None
    if len(ds) == 0:
        return None
    if any(name not in ds.column_names for name in wanted.values()):
        _find_bad_record(diagnose)
        raise PipelineError(f"{shown}: no field {next(n for n in wanted.values() if n not in ds.column_names)!r} "
                            f"(dataset.fields); found fields: {', '.join(ds.column_names)}")
    if fmt == "csv":  # pandas reads a column of numbers as numbers; csv's values are strings
        ds = _strings(ds, [name for column, name in wanted.items() if column != "messages"])
    return _normalized(ds, wanted, diagnose, shown)


def _csv_header(path: Path) -> list[str] | None:
    """The csv file's column names (its first line), or None when they cannot serve as string features (then the
    loader infers the types and the columns are cast to strings afterwards)."""
    try:
        with path.open(encoding="utf-8-sig", newline="") as f:
            header = next(csv.reader(f), None)
    except (OSError, UnicodeDecodeError, csv.Error):
        return None
    if not header or len(set(header)) != len(header) or any(not name for name in header):
        return None
    return header


def _first_content_byte(path: Path, shown: str, fmt: str) -> bytes:
    """The file's first byte that is not whitespace (read until found); a readable, non-empty file or a clear error."""
    try:
        with path.open("rb") as f:
            while chunk := f.read(1 << 20):
                if content := chunk.lstrip().lstrip(b"\xef\xbb\xbf").lstrip():
                    return content[:1]
    except OSError as e:
        raise PipelineError(f"{shown}: cannot read the file ({e.strerror}); expected a readable {fmt} file") from e
    raise PipelineError(f"{shown}: the file is empty; expected {fmt} data")


def _strings(ds, names: list[str]):
    from datasets import Value

    for name in names:
        if ds.features[name] != Value("string") and ds.features[name] != Value("large_string"):
            ds = ds.cast_column(name, Value("string"))
    return ds


def _normalized(ds, wanted: dict[str, str], diagnose, shown: str):
    """The wanted fields under their normalized names, checked on the Arrow columns: strings, and chat messages as
    non-empty lists of {role, content} strings. When a check fails the records are read one by one: the first bad
    one is named; if none is bad (a shape the Arrow checks do not read, such as extra keys in the messages), each
    record is normalized in a batched map."""
    from datasets import Features, List, Value

    features = Features({column: List({"role": Value("string"), "content": Value("string")}) if column == "messages"
                         else Value("string") for column in wanted})
    if not _valid(ds, wanted):
        _find_bad_record(diagnose)
        return ds.map(_Normalize(wanted, shown), batched=True, remove_columns=ds.column_names, features=features,
                      desc="normalize")
    ds = ds.select_columns(list(wanted.values()))
    ds = ds.rename_columns({v: k for k, v in wanted.items() if k != v})
    for column, feature in features.items():
        if ds.features[column] != feature:
            ds = ds.cast_column(column, feature)
    return ds


class _Normalize:
    """Batched: `normalize` on each record (only for records the Arrow checks could not read)."""

    def __init__(self, wanted: dict[str, str], shown: str):
        self.wanted, self.shown = wanted, shown

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        rows = (dict(zip(batch, values, strict=True)) for values in zip(*batch.values(), strict=True))
        out: dict[str, list] = {column: [] for column in self.wanted}
        for row in rows:
            for column, value in normalize(row, self.wanted, self.shown, "a record").items():
                out[column].append(value)
        return out


def _valid(ds, wanted: dict[str, str]) -> bool:
    import pyarrow as pa
    import pyarrow.compute as pc

    table = ds.data.table  # the loader's table: no indices mapping yet
    for column, name in wanted.items():
        values = table.column(name)
        if values.null_count:
            return False
        if column != "messages":
            if not (pa.types.is_string(values.type) or pa.types.is_large_string(values.type)):
                return False
            continue
        if not (pa.types.is_list(values.type) or pa.types.is_large_list(values.type)):
            return False
        item = values.type.value_type
        if not pa.types.is_struct(item) or {"role", "content"} - {f.name for f in item}:
            return False
        if any(not (pa.types.is_string(item.field(f).type) or pa.types.is_large_string(item.field(f).type))
               for f in ("role", "content")):
            return False
        for chunk in values.chunks:
            if len(chunk) and pc.min(pc.list_value_length(chunk)).as_py() == 0:
                return False
            messages = chunk.flatten()
            if messages.null_count or messages.field("role").null_count or messages.field("content").null_count:
                return False
    return True


def _find_bad_record(records) -> None:
    """Iterate `records()`, which raises PipelineError at the first record that breaks a rule."""
    for _ in records():
        pass


# ---------------------------------------------------------------------------------------------------------------
# Record by record: only to name the first bad record, streaming (a line, a Parquet batch at a time)


def _rows(ds, wanted: dict[str, str], name: str) -> Iterator[dict[str, Any]]:
    i = 0
    for batch in ds.select_columns(list(wanted.values())).iter(batch_size=1000):
        for row in (dict(zip(batch, values, strict=True)) for values in zip(*batch.values(), strict=True)):
            yield normalize(row, wanted, name, f"row {i}")
            i += 1


def _records(path: Path, shown: str, fmt: str, config: PrepareConfig) -> Iterator[dict[str, Any]]:
    """Yield normalized records of one file, validating fields and encoding as they come."""
    wanted = wanted_fields(config)
    if fmt == "parquet":
        import pyarrow.parquet as pq

        try:
            batches = pq.ParquetFile(path).iter_batches(batch_size=1000)
            i = 0
            for batch in batches:
                for row in batch.to_pylist():
                    i += 1
                    yield normalize(row, wanted, shown, f"row {i}")
        except PipelineError:
            raise
        except Exception as e:
            raise PipelineError(f"{shown}: not a readable Parquet file ({e}); expected Parquet") from e
        return
    if fmt == "json":
        with path.open("rb") as f:
            text = _decode(f.read(), shown, 0)
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as e:
            raise PipelineError(f"{shown}: line {e.lineno}: not valid JSON ({e.msg}); expected a JSON array of objects") from e
        if isinstance(doc, dict) and isinstance(doc.get("data"), list):
            doc = doc["data"]
        if not isinstance(doc, list):
            raise PipelineError(f"{shown}: the top level is a {type(doc).__name__}; expected a JSON array of objects "
                                f"(or an object with a 'data' array)")
        for i, row in enumerate(doc, 1):
            yield normalize(row, wanted, shown, f"item {i}")
        return
    lines = _lines(path, shown)
    if fmt == "text":
        for _ in lines:
            pass
    elif fmt == "jsonl":
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line.rstrip("\r\n"))
            except json.JSONDecodeError as e:
                raise PipelineError(f"{shown}: line {n}: not valid JSON ({e.msg}); expected one JSON object per line") from e
            yield normalize(row, wanted, shown, f"line {n}")
    else:  # csv
        for n, row in enumerate(csv.DictReader(lines), 2):  # line 1 is the header
            yield normalize(row, wanted, shown, f"line {n}")


def _lines(path: Path, shown: str) -> Iterator[str]:
    """The file's lines, decoded as strict UTF-8 (a leading byte-order mark dropped), one at a time."""
    offset = 0
    with path.open("rb") as f:
        for n, raw in enumerate(f):
            yield _decode(raw, shown, offset, line=n + 1, first=(n == 0))
            offset += len(raw)


def _decode(raw: bytes, shown: str, offset: int, line: int | None = None, first: bool = True) -> str:
    try:
        return raw.decode("utf-8-sig" if first else "utf-8")
    except UnicodeDecodeError as e:
        at = line if line is not None else raw[: e.start].count(b"\n") + 1
        raise PipelineError(f"{shown}: line {at}, byte {offset + e.start}: invalid UTF-8 "
                            f"({raw[e.start:e.start + 1]!r}); expected UTF-8 text") from e


def normalize(row: Any, wanted: dict[str, str], shown: str, where: str) -> dict[str, Any]:
    """One record's wanted fields under their normalized names; a PipelineError naming the field when one is bad."""
    if not isinstance(row, dict):
        raise PipelineError(f"{shown}: {where}: a {type(row).__name__}, expected an object with the field "
                            f"{next(iter(wanted.values()))!r}")
    out = {}
    for column, name in wanted.items():
        if name not in row or row[name] is None:
            # A column-wise reader gives null for a field that only other records have: list the fields with a value.
            found = ", ".join(str(k) for k, v in row.items() if v is not None) or "none"
            raise PipelineError(f"{shown}: {where}: no field {name!r} (dataset.fields.{column}), or it is null; "
                                f"found fields: {found}")
        value = row[name]
        if column == "messages":
            value = _messages(value, shown, where, name)
        elif not isinstance(value, str):
            raise PipelineError(f"{shown}: {where}: field {name!r} is a {type(value).__name__}; expected a string")
        out[column] = value
    return out


def _messages(value: Any, shown: str, where: str, name: str) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise PipelineError(f"{shown}: {where}: field {name!r} is not a non-empty list; expected "
                            f"[{{\"role\": ..., \"content\": ...}}, ...]")
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise PipelineError(f"{shown}: {where}: {name}[{i}] is not an object with string 'role' and 'content'")
        out.append({"role": m["role"], "content": m["content"]})
    return out
