"""Prepare reads its sources with datasets' loaders and works a batch at a time: the records are those of a plain
record-by-record read, and a file prepares under a memory cap that holding the file whole cannot meet."""

from __future__ import annotations

import copy
import csv
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import TINY_MODEL, ftj_spec
from gptops.pipeline import configs_from_spec
from gptops.pipeline.data import load_records
from gptops.pipeline.data.sources import _records, file_format
from pipeline_corpus import documents


def _loaded(tmp_path: Path, data: Path, **dataset) -> list[dict]:
    config = configs_from_spec(ftj_spec(data, dataset=dataset), copy.deepcopy(TINY_MODEL), tmp_path / "run").prepare
    records, _ = load_records(config)
    return records.to_list()


def _read_one_by_one(tmp_path: Path, data: Path, **dataset) -> list[dict]:
    config = configs_from_spec(ftj_spec(data, dataset=dataset), copy.deepcopy(TINY_MODEL), tmp_path / "run").prepare
    rows = list(_records(data, str(data), file_format(data, str(data), config), config))
    if config.format == "text" and data.suffix == ".txt":  # the record reader only checks text files' encoding
        rows = [{"text": line} for line in data.read_text(encoding="utf-8-sig").splitlines() if line.strip()]
    return rows


def test_the_loaders_give_the_records_of_a_plain_read_on_every_format(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    docs = documents(40)
    files = {}
    files["a.txt"] = tmp_path / "a.txt"
    files["a.txt"].write_bytes(("\ufeff" + "\n".join(docs[:10]) + "\n\n   \r\n" + "\r\n".join(docs[10:20])).encode())
    files["b.jsonl"] = tmp_path / "b.jsonl"
    files["b.jsonl"].write_text("\n".join(json.dumps({"text": t, "n": i}) for i, t in enumerate(docs)) + "\n\n")
    files["c.json"] = tmp_path / "c.json"
    files["c.json"].write_text(json.dumps({"data": [{"text": t} for t in docs]}, indent=1))
    files["d.csv"] = tmp_path / "d.csv"
    with open(files["d.csv"], "w", newline="", encoding="utf-8-sig") as f:
        w = csv.writer(f)
        w.writerow(["id", "text"])
        w.writerows([i, t] for i, t in enumerate(docs[:20] + ["", "42", "007", "1.50", "multi\nline cell"]))
    files["f.csv"] = tmp_path / "f.csv"  # a column of numbers only: still its text, "007" and all
    files["f.csv"].write_text("text\n" + "".join(f"{n:03d}\n" for n in range(7, 30)) + "1.50\n")
    files["e.parquet"] = tmp_path / "e.parquet"
    pq.write_table(pa.table({"text": docs, "other": list(range(40))}), files["e.parquet"])
    for name, path in files.items():
        loaded = _loaded(tmp_path / f"run-{name}", path)
        assert loaded == _read_one_by_one(tmp_path / f"run-{name}", path), name
        assert len(loaded) >= 20
    assert _loaded(tmp_path / "run-f", files["f.csv"])[0]["text"] == "007"

    chat = tmp_path / "chat.jsonl"  # extra keys in a message are not the model's: dropped
    chat.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"about {d.split()[0]}", "name": "u"},
                                                    {"role": "assistant", "content": d}]}) + "\n" for d in docs))
    assert _loaded(tmp_path / "run-chat", chat, format="chat") == _read_one_by_one(tmp_path / "run-chat", chat,
                                                                                    format="chat")
    assert _loaded(tmp_path / "run-chat2", chat, format="chat")[0]["messages"][0] == {"role": "user",
                                                                                   "content": f"about {docs[0].split()[0]}"}


CHILD = textwrap.dedent("""
    import copy, json, resource, sys
    from pathlib import Path
    sys.path.insert(0, sys.argv[3])
    from conftest import TINY_MODEL, ftj_spec
    from gptops.pipeline import configs_from_spec, run_prepare

    tmp, budget = Path(sys.argv[1]), int(sys.argv[2]) << 20
    def prepare(data, root):
        return run_prepare(configs_from_spec(ftj_spec(data), copy.deepcopy(TINY_MODEL), root).prepare)

    prepare(tmp / "small.jsonl", tmp / "run-small")  # every import and the code paths warmed up
    data = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmData:")) << 10
    resource.setrlimit(resource.RLIMIT_DATA, (data + budget, resource.getrlimit(resource.RLIMIT_DATA)[1]))
    report = prepare(tmp / "big.jsonl", tmp / "run-big")
    print(json.dumps({"read": report.manifest["documents"]["read"]}))
    try:  # what the stage did before: the whole file in memory, then one object per line
        rows = [json.loads(line) for line in (tmp / "big.jsonl").read_bytes().decode().splitlines()]
    except MemoryError:
        print(json.dumps({"wholeFile": "MemoryError"}))
    else:
        print(json.dumps({"wholeFile": len(rows)}))
""")


@pytest.mark.slow
def test_a_file_prepares_under_a_memory_cap_that_holding_it_whole_exceeds(tmp_path):
    """RLIMIT_DATA caps the process's own (anonymous) memory, not the memory-mapped Arrow files: 80 MiB above the
    warmed-up process for a 24 MiB JSONL, which prepare must fit in and a whole-file read does not."""
    import random

    rng = random.Random(0)
    names, things = ["alice", "bob", "carol", "dave", "erin"], ["cats", "dogs", "birds", "boats", "books", "lamps"]

    def doc() -> str:
        return " ".join(f"{rng.choice(names)} has {rng.randint(1, 99)} {rng.choice(things)} in room {rng.randint(1, 9)}."
                        for _ in range(rng.randint(2, 12)))

    (tmp_path / "small.jsonl").write_text("".join(json.dumps({"text": doc()}) + "\n" for _ in range(300)))
    with open(tmp_path / "big.jsonl", "w") as f:
        f.writelines("".join(json.dumps({"text": doc()}) + "\n" for _ in range(1000)) for _ in range(120))
    assert (tmp_path / "big.jsonl").stat().st_size > 20 << 20

    proc = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path), "80", str(Path(__file__).parent)],
                          capture_output=True, text=True, env=os.environ, timeout=900, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert lines[0] == {"read": 120_000}
    assert lines[1] == {"wholeFile": "MemoryError"}  # the cap is real: the old way does not fit under it


def _rss_file_kib() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("RssFile:"))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status; the releaser is Linux-only")
def test_pages_of_a_memory_mapped_arrow_file_read_by_prepare_leave_its_resident_memory(tmp_path):
    """A pass over a memory-mapped Arrow file counts the file in the process's RSS until its pages are dropped; under
    ReleasedMappings they are, the data reads back the same, and a mapping outside the stage's root keeps its pages."""
    import numpy as np
    import pyarrow as pa
    from gptops.pipeline.data.mapped import ReleasedMappings

    def arrow_file(path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        table = pa.table({"x": np.arange(16 * 2**20 // 8, dtype=np.int64)})  # 16 MiB
        with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
        return path

    inside, outside = arrow_file(tmp_path / "run" / "cache" / "a.arrow"), arrow_file(tmp_path / "elsewhere" / "b.arrow")
    with pa.memory_map(str(inside)) as a, pa.memory_map(str(outside)) as b:
        ta, tb = pa.ipc.open_stream(a).read_all(), pa.ipc.open_stream(b).read_all()
        base = _rss_file_kib()
        total = int(pa.compute.sum(ta["x"]).as_py()) + int(pa.compute.sum(tb["x"]).as_py())  # touches every page
        touched = _rss_file_kib() - base
        assert touched > 28 * 1024, f"reading two 16 MiB mapped files added only {touched} KiB of RssFile"
        with ReleasedMappings(tmp_path / "run", interval=0.05) as released:
            pass
        assert released.released >= 1
        remaining = _rss_file_kib() - base
        assert remaining < touched - 12 * 1024, f"RssFile went from +{touched} to +{remaining} KiB"
        assert remaining > 12 * 1024, "the mapping outside the root lost its pages too"
        assert int(pa.compute.sum(ta["x"]).as_py()) + int(pa.compute.sum(tb["x"]).as_py()) == total


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="maps memory at a fixed address; the releaser is "
                    "Linux-only")
def test_a_mapping_that_went_and_was_replaced_before_its_pages_were_released_keeps_its_data(tmp_path):
    """The releaser reads /proc/self/maps, then advises each range; in between, another thread can unmap a file and
    the allocator can map its own memory at the same address. That memory must keep its data (MADV_DONTNEED zeroes it:
    a corrupted heap, and a stage that dies with SIGSEGV long after)."""
    import ctypes
    import mmap

    from gptops.pipeline.data.mapped import ReleasedMappings, read_only_file_mappings

    released = ReleasedMappings(tmp_path)
    if released._madvise is None:
        pytest.skip("this kernel has no MADV_PAGEOUT (Linux 5.4 or later): the releaser does nothing here")
    size = 64 * mmap.PAGESIZE
    path = tmp_path / "blocks.arrow"
    path.write_bytes(b"\x01" * size)
    with open(path, "rb") as f:
        mapped = mmap.mmap(f.fileno(), size, access=mmap.ACCESS_READ)
    assert mapped[:] == b"\x01" * size
    ranges = read_only_file_mappings((tmp_path,))
    assert len(ranges) == 1 and ranges[0][1] - ranges[0][0] == size
    mapped.close()  # the file goes ...

    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    map_fixed_noreplace = 0x100000
    start = ranges[0][0]
    address = libc.mmap(start, size, mmap.PROT_READ | mmap.PROT_WRITE,
                        mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | map_fixed_noreplace, -1, 0)
    if address != start:
        pytest.skip(f"could not map anonymous memory at {start:#x} again (errno {ctypes.get_errno()})")
    try:
        ctypes.memset(address, 0x5A, size)  # ... and the heap's memory takes its place, written
        released.advise(ranges)  # the list read before
        assert ctypes.string_at(address, size) == b"\x5a" * size, "anonymous memory lost its data to the releaser"
    finally:
        libc.munmap(address, size)
