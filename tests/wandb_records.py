"""Reads the records of an offline W&B run file (``run-*.wandb``), so tests can
check what an offline run holds without a server. The file is a LevelDB-style
log: a 7-byte header, then 32 KiB blocks of records (crc32 4 bytes, length 2,
type 1: full / first / middle / last), each a ``wandb_internal_pb2.Record``."""

import struct
import time
from pathlib import Path

from wandb.proto import wandb_internal_pb2

BLOCK = 32 * 1024
HEADER = 7


def read_records(path: Path) -> list:
    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    records, pending, pos = [], b"", HEADER
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < HEADER:  # block trailer padding
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + HEADER])
        if pos + HEADER + length > len(data):  # the writer has not flushed this record yet
            break
        chunk = data[pos + HEADER : pos + HEADER + length]
        pos += HEADER + length
        if kind == 1:
            records.append(chunk)
        elif kind == 2:
            pending = chunk
        elif kind == 3:
            pending += chunk
        elif kind == 4:
            records.append(pending + chunk)
        else:  # zero padding at the end of the file
            break
    return [wandb_internal_pb2.Record.FromString(r) for r in records]


def read_finished_run(path: Path, timeout: float = 20.0) -> list:
    """The records of a run file once its ``exit`` record is on disk: W&B's service
    process may still be flushing the file when ``wandb.finish()`` returns."""
    deadline = time.monotonic() + timeout
    while True:
        records = read_records(path)
        if any(r.WhichOneof("record_type") == "exit" for r in records) or time.monotonic() > deadline:
            return records
        time.sleep(0.2)
