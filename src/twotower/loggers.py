"""Lightning's loggers for a run: the run's CSV always; Weights & Biases (the run started by
:mod:`twotower.wandb_runs`) through Lightning's W&B logger; and Lightning's start-up noise
filtered out."""

from __future__ import annotations

import csv
import io
import logging
import re
import warnings
from pathlib import Path

from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers import CSVLogger, Logger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

from twotower.fsutil import append_bytes_whole, remove_stale_temporaries, write_bytes_atomic
from twotower.wandb_runs import start_wandb_run



class LightningNoise(logging.Filter):
    """Drops Lightning's start-up lines that say nothing about the run: the advertisement of
    its cloud logger, and accelerators that are absent (``TPU available: False, ...``). An
    accelerator that is present (``GPU available: True, used: False``) is still reported."""

    ABSENT = re.compile(r"(GPU|TPU|HPU) available: False\b")

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (message.startswith("\N{ELECTRIC LIGHT BULB} Tip:") or self.ABSENT.match(message))


def quiet_lightning() -> None:
    """Install :class:`LightningNoise` on the loggers Lightning's ``rank_zero_info`` writes to (once),
    and ignore two warnings Lightning raises on every run that say nothing about the user's run:
    a torch 2.13 deprecation inside Lightning, and a note about worker processes (batches are
    built in-process)."""
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
    warnings.filterwarnings("ignore", message=r"Your `IterableDataset` has `__len__` defined")
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, LightningNoise) for f in logger.filters):
            logger.addFilter(LightningNoise())


def _read_metrics_csv(path: Path) -> tuple[list[str], list[dict]]:
    """The header and the rows; a torn row (more or fewer fields than the header: what a
    killed writer, or an interrupted one of an older version, left) is dropped."""
    with open(path, newline="") as file:
        reader = csv.DictReader(file)
        rows = [row for row in reader if None not in row and None not in row.values()]
        return list(reader.fieldnames or []), rows


def _csv_bytes(header: list[str], rows: list[dict], with_header: bool = True) -> bytes:
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=header)
    if with_header:
        writer.writeheader()
    writer.writerows(rows)
    return text.getvalue().encode()


def drop_metrics_after(run_dir: Path, step: int) -> None:
    """Remove the rows of ``csv/metrics.csv`` logged after global step ``step``: what a
    killed run logged past the checkpoint it resumes from, and will log again (and the
    temporary file of a save it was killed in)."""
    path = Path(run_dir) / "csv" / ExperimentWriter.NAME_METRICS_FILE
    remove_stale_temporaries(path.parent)
    if not path.is_file():
        return
    header, rows = _read_metrics_csv(path)
    kept = [row for row in rows if row.get("step") and int(float(row["step"])) <= step]
    write_bytes_atomic(path, _csv_bytes(header, kept))  # also ends a line a killed write tore


class _ContinuingWriter(ExperimentWriter):
    """Lightning's CSV writer, except that
    - it continues an existing ``metrics.csv`` (Lightning's deletes it): one run writes its
      CSV from several processes, when it is resumed, and in the test of a ``ddp_spawn`` run
      (new workers after those of ``fit``);
    - a save's rows land whole or not at all (Lightning's writes them through a buffered file,
      and Ctrl-C can cut it between two pieces, leaving a torn line that the save of the
      interrupted run's teardown then extends and the resumed run cannot read): appended with
      one ``write`` call, or, when new keys change the header, the whole file replaced
      through a rename; the header is only taken as changed once the file has it."""

    def _check_log_dir_exists(self) -> None:  # called by __init__
        if self._fs.isfile(self.metrics_file_path):
            self.metrics_keys = _read_metrics_csv(Path(self.metrics_file_path))[0]

    def save(self) -> None:
        if not self.metrics:
            return
        path = Path(self.metrics_file_path)
        keys = sorted(set(self.metrics_keys).union(*self.metrics))
        if keys != self.metrics_keys or not path.is_file():
            saved = _read_metrics_csv(path)[1] if path.is_file() else []
            write_bytes_atomic(path, _csv_bytes(keys, saved + self.metrics))
        else:
            append_bytes_whole(path, _csv_bytes(keys, self.metrics, with_header=False))
        self.metrics_keys, self.metrics = keys, []


class RunCSVLogger(CSVLogger):
    """``RUN_DIR/csv/metrics.csv``: continued, never deleted, by every process that logs
    to it, and written out whenever a checkpoint is, so a killed run's CSV covers what
    its last checkpoint covers."""

    def __init__(self, run_dir: str):
        super().__init__(save_dir=run_dir, name="csv", version="")

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _ContinuingWriter(self.log_dir)
        return self._experiment

    def after_save_checkpoint(self, checkpoint_callback) -> None:
        self.save()


def build_loggers(cfg: dict, run_dir: Path, config: dict, group: str | None = None, tags: list[str] | None = None) -> list[Logger]:
    """``cfg``: the ``logger`` config; ``config``: the resolved run config (secrets redacted)."""
    loggers: list[Logger] = []
    if cfg.get("csv", {}).get("enabled", True):
        loggers.append(RunCSVLogger(str(run_dir)))
    wb = cfg.get("wandb", {})
    if wb.get("enabled", False):
        run = start_wandb_run(wb, run_dir, config, group or wb.get("group"), list(tags or []))
        if run is not None:
            from lightning.pytorch.loggers import WandbLogger

            loggers.append(WandbLogger(experiment=run, save_dir=str(run_dir)))
    return loggers


