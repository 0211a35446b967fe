"""Read back a wandb offline run (``run-<id>.wandb``) without a server, for tests.

wandb >= 0.31 no longer ships a Python reader. The file is a LevelDB-style log: a 7-byte header
(``:W&B``, a 2-byte magic, a 1-byte version), then 32 KiB blocks of chunks, each with a 7-byte header
(crc32, little-endian uint16 length, type FULL=1 / FIRST=2 / MIDDLE=3 / LAST=4); a chunk never crosses
a block boundary and a block tail shorter than a header is zero padding. Every reassembled payload is
a ``wandb_internal_pb2.Record``. The format is internal to wandb, so this reader stays small and the
tests that use it check only what a dashboard shows: config, summary, history, group, job type, exit code.
"""
from __future__ import annotations

import json
import struct
import time
from pathlib import Path

_HEADER = 7
_BLOCK = 32 * 1024
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def read_records(path: Path) -> list:
    from wandb.proto import wandb_internal_pb2

    data = Path(path).read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path} is not a wandb run log (header {data[:4]!r})")
    records, pending, pos = [], b"", _HEADER
    while pos + _HEADER <= len(data):
        left_in_block = _BLOCK - pos % _BLOCK
        if left_in_block < _HEADER:  # zero padding at the end of a block
            pos += left_in_block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + _HEADER])
        chunk = data[pos + _HEADER:pos + _HEADER + length]
        pos += _HEADER + length
        if kind in (_FULL, _FIRST):
            pending = chunk
        elif kind in (_MIDDLE, _LAST):
            pending += chunk
        else:  # a zeroed tail (a run still being written)
            break
        if kind in (_FULL, _LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
    return records


def finished_records(path: Path, wait_s: float = 60.0) -> list:
    """The records of a run that has ended (``run.finish`` returned, or its process exited): wandb's
    service writes the offline file after ``finish`` returns (on a busy machine the file was seen holding
    only its header right after the call, and complete a second later), so wait up to ``wait_s`` seconds
    for the exit record. A run that never wrote one (killed) gives what is there after the wait."""
    deadline = time.monotonic() + wait_s
    while True:
        records = read_records(path)
        if any(r.WhichOneof("record_type") == "exit" for r in records) or time.monotonic() > deadline:
            return records
        time.sleep(0.2)


def run_contents(path: Path) -> dict:
    """``{"group", "job_type", "name", "config": {key: value}, "summary": {key: value}, "history": [{key: value}],
    "exit_code"}`` of one run log, of a run that has ended (``finished_records``).

    Config, summary and history items hold JSON values; nested keys (``nested_key``) are joined with
    ``/``, as the wandb UI shows them. Later records win, as in the run. ``history`` has one dict per
    history row (``_step`` is the step a row was logged at); ``exit_code`` is None until the run finished.
    """
    out: dict = {"group": None, "job_type": None, "name": None, "config": {}, "summary": {}, "history": [],
                 "exit_code": None}
    for record in finished_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "exit":
            out["exit_code"] = record.exit.exit_code
            continue
        if kind == "history":
            out["history"].append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                                   for item in record.history.item})
            continue
        if kind == "run":
            out["group"], out["job_type"], out["name"] = record.run.run_group, record.run.job_type, record.run.display_name
            items = record.run.config.update
        elif kind == "config":
            items = record.config.update
        elif kind == "summary":
            for item in record.summary.update:
                out["summary"][item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
            continue
        else:
            continue
        for item in items:
            out["config"][item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
    return out
