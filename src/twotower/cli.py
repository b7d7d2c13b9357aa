"""What the console scripts share: bad input and a folder that cannot be written become one
line on stderr and exit status 2; Ctrl-C and SIGTERM become an orderly stop (exit 130);
command-line arguments are made safe before Hydra parses them."""

from __future__ import annotations

import errno
import os
import re
import signal
import sys
from typing import Any

from omegaconf.errors import OmegaConfBaseException

from twotower.errors import CheckpointError, ConfigError, DataError, UnsafeArtifactError

# Refusals of bad input: the message says what to fix, a traceback would only bury it.
USER_ERRORS = (ConfigError, DataError, CheckpointError, UnsafeArtifactError, OmegaConfBaseException)
# A folder that cannot be written (permissions, a read-only or full file system).
WRITE_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT}
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # the shell's status for a command stopped by Ctrl-C

# An override whose key names a secret: its value never reaches argv, a file or a folder name.
SECRET_KEY = re.compile(r"(?:^|[._])(?:api_?key|key|token|secret|password|passwd|credentials?)$", re.IGNORECASE)
SECRET_NAME = re.compile(r"(_KEY|_TOKEN|_SECRET|PASSWORD)$", re.IGNORECASE)  # environment variables
REDACTED = "<redacted>"
SECRET_ENV = "TWOTOWER_ARG_{}_SECRET"  # ends in _SECRET, so redact_secrets replaces the value wherever it is written


def is_write_error(err: BaseException) -> bool:
    return isinstance(err, OSError) and err.errno in WRITE_ERRNOS


def is_refusal(err: BaseException) -> bool:
    """What the export, retrieve, evaluate and serve commands report in one line (exit 2):
    bad input, a missing file, and a folder that cannot be written."""
    return isinstance(err, (ValueError, KeyError, FileNotFoundError, FileExistsError)) or is_write_error(err)


def one_line(err: BaseException) -> str:
    """An error's message on one line: a write error as ``path: cause``, Hydra's and
    OmegaConf's multi-line reports joined, without their advice about HYDRA_FULL_ERROR."""
    if isinstance(err, OSError) and err.strerror:
        where = f"{err.filename}: " if err.filename else ""
        if is_write_error(err):
            return f"{where}{err.strerror}; expected a folder that can be written, with free space"
        return f"{where}{err.strerror}"
    text = str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
    text = text.split("Config search path:")[0].split("Set the environment variable HYDRA_FULL_ERROR")[0]
    if isinstance(err, OmegaConfBaseException):
        text = text.split("\n    full_key:")[0]
    cause = err.__cause__
    if cause is not None and str(cause).strip() and str(cause).strip().splitlines()[0] not in text:
        text += "; " + str(cause).strip().splitlines()[0]
    text = text.replace(":\n\t", ": ").replace("\n\t", ", ")
    return "; ".join(line.strip().rstrip(".") for line in text.splitlines() if line.strip()) or type(err).__name__


def report(prog: str, err: BaseException) -> int:
    """Print ``prog: error: <one line>``; returns the exit status, 2."""
    print(f"{prog}: error: {one_line(err)}", file=sys.stderr)
    return EXIT_USAGE


def fail(prog: str, err: BaseException) -> None:
    """Print ``prog: error: <one line>`` and exit with status 2."""
    sys.exit(report(prog, err))


# ----------------------------------------------------------------------------- arguments


def prepared_arguments(args: list[str], environ: dict | None = None) -> list[str]:
    """The command line as Hydra should parse it:

    - ``resume=PATH`` quoted, so a sweep job's folder (``3_loss.temperature=0.2,sampler=uniform``)
      can be pasted as the sweep printed it: unquoted, ``=`` and ``,`` are Hydra syntax;
    - the value of an override whose key names a secret (``+logger.wandb.api_key=...``) moved
      into an environment variable of this process and its children, the override reading it
      back through ``${oc.env:...}``: the value never reaches Hydra's files (``multirun.yaml``),
      a job folder's name, W&B's record of the command line, and the saved config, checkpoints
      and W&B config get ``<redacted>`` (the variable's name marks it as a secret)."""
    environ = os.environ if environ is None else environ
    prepared = []
    for arg in args:
        key, sep, value = arg.partition("=")
        if arg.startswith("-") or not sep:
            prepared.append(arg)
        elif key == "resume" and value and value[0] not in "'\"":
            prepared.append(f"resume='{_escape_quoted(value)}'")
        elif SECRET_KEY.search(key.lstrip("+~")) and value and not value.startswith("${"):
            name = SECRET_ENV.format(sum(1 for k in environ if re.fullmatch(SECRET_ENV.format(r"\d+"), k)) + 1)
            environ[name] = value
            prepared.append(f"{key}=${{oc.env:{name}}}")
        else:
            prepared.append(arg)
    return prepared


def redact_secrets(value: Any, environ: dict | None = None) -> Any:
    """Replace every string that holds the value of a secret environment variable
    (``*_KEY``, ``*_TOKEN``, ``*_SECRET``, ``*PASSWORD``) by ``<redacted>``, recursively."""
    environ = os.environ if environ is None else environ
    secrets = [v for k, v in environ.items() if SECRET_NAME.search(k) and len(v) >= 6]
    if not secrets:
        return value

    def scrub(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: scrub(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return type(v)(scrub(x) for x in v)
        if isinstance(v, str):
            for s in secrets:
                v = v.replace(s, REDACTED)
        return v

    return scrub(value)


def _escape_quoted(text: str) -> str:
    """``text`` inside a single-quoted Hydra string: backslashes before quotes and at the end
    doubled, quotes escaped (Hydra's grammar for quoted values)."""
    text = re.sub(r"(\\+)(?='|$)", lambda m: m.group(1) * 2, text)
    return text.replace("'", "\\'")


# ----------------------------------------------------------------------------- interrupts

INTERRUPT = {"signal": None}  # the signal that stopped this process, once one did


def _interrupted(signum, frame) -> None:
    INTERRUPT["signal"] = signum
    raise KeyboardInterrupt(signal.Signals(signum).name)


def stop_on_signals() -> None:
    """Ctrl-C and SIGTERM both raise ``KeyboardInterrupt`` and are remembered in
    ``INTERRUPT``: the running job is recorded as interrupted and a sweep still writes its
    summary (Lightning turns the interrupt inside ``fit`` into ``SystemExit(1)``, so the
    flag, not the exception type, says what happened)."""
    signal.signal(signal.SIGINT, _interrupted)
    signal.signal(signal.SIGTERM, _interrupted)


def was_interrupted() -> bool:
    return INTERRUPT["signal"] is not None


def interruption() -> KeyboardInterrupt:
    """What stopped the process, as an exception to record: ``KeyboardInterrupt: SIGTERM``."""
    signum = INTERRUPT["signal"]
    return KeyboardInterrupt(signal.Signals(signum).name if signum is not None else "SIGINT")
