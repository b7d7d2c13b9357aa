"""Writing files and folders so that a crash never leaves a half-written one in place."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path


def swap_in(tmp: Path, target: Path) -> None:
    """Move the finished folder ``tmp`` to ``target``, replacing an older one:
    at every moment ``target`` is either the old complete folder or the new one."""
    if target.exists():
        old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
        os.rename(target, old)
        os.rename(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, target)


def write_json_atomic(path: Path, payload) -> None:
    """Write ``payload`` as JSON to ``path`` through a temporary file and a rename."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str))
    tmp.replace(path)
