"""Run ``twotower-train`` (its console entry point) with a write fault, for tests/test_refusals.py:

    python io_faults.py FAULT ROOT [OVERRIDE ...]

- ``read_only``: creating a folder under ROOT fails with EROFS, as on a read-only file system
  (a test running as root cannot make a folder read-only with permissions);
- ``disk_full``: flushing a checkpoint to disk fails with ENOSPC, where a full disk reports it
  (``fsync``), after the temporary file was created and written.
"""

from __future__ import annotations

import errno
import os
import sys

if __name__ == "__main__":
    fault, root, overrides = sys.argv[1], os.path.realpath(sys.argv[2]), sys.argv[3:]
    if fault == "read_only":
        real_mkdir = os.mkdir

        def mkdir(path, *args, **kwargs):
            if os.path.realpath(path).startswith(root + os.sep):
                raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
            return real_mkdir(path, *args, **kwargs)

        os.mkdir = mkdir
    elif fault == "disk_full":
        real_fsync = os.fsync

        def fsync(fd):
            if ".ckpt.tmp-" in os.readlink(f"/proc/self/fd/{fd}"):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return real_fsync(fd)

        os.fsync = fsync
    else:
        sys.exit(f"unknown fault {fault!r}")
    sys.argv = ["twotower-train", *overrides]
    from twotower.train import main

    main()
