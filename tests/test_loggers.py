"""The run's ``csv/metrics.csv``: continued across processes, never torn by an interrupted save."""

import csv

import pytest

from twotower import fsutil
from twotower.loggers import RunCSVLogger, drop_metrics_after


def read_rows(run_dir):
    with open(run_dir / "csv" / "metrics.csv", newline="") as file:
        reader = csv.DictReader(file)
        return reader.fieldnames, [dict(row) for row in reader]


def test_saves_keep_every_row_under_one_header_across_processes(tmp_path):
    first = RunCSVLogger(str(tmp_path))
    first.log_metrics({"loss": 0.5}, step=0)
    first.save()
    first.log_metrics({"val/recall@20": 0.25}, step=1)  # a new key: the header grows
    first.save()
    resumed = RunCSVLogger(str(tmp_path))  # a resumed run continues the file
    resumed.log_metrics({"loss": 0.125}, step=2)
    resumed.save()
    header, rows = read_rows(tmp_path)
    assert header == ["loss", "step", "val/recall@20"]
    assert rows == [
        {"loss": "0.5", "step": "0", "val/recall@20": ""},
        {"loss": "", "step": "1", "val/recall@20": "0.25"},
        {"loss": "0.125", "step": "2", "val/recall@20": ""},
    ]


def test_a_save_cut_short_by_ctrl_c_leaves_the_previous_file_and_the_next_save_writes_each_row_once(tmp_path, monkeypatch):
    """Ctrl-C in a save that rewrites the file (a new key), then in one that appends to it."""
    logger = RunCSVLogger(str(tmp_path))
    logger.log_metrics({"loss": 0.5}, step=0)
    logger.save()

    def interrupt_once(name):
        real = getattr(fsutil.os, name)

        def interrupted(*args):
            monkeypatch.setattr(fsutil.os, name, real)
            raise KeyboardInterrupt

        monkeypatch.setattr(fsutil.os, name, interrupted)

    interrupt_once("fsync")  # the rewrite's temporary file is written, not yet renamed
    logger.log_metrics({"loss": 0.25, "lr": 0.01}, step=1)
    with pytest.raises(KeyboardInterrupt):
        logger.save()
    assert read_rows(tmp_path) == (["loss", "step"], [{"loss": "0.5", "step": "0"}])
    assert sorted(p.name for p in (tmp_path / "csv").iterdir()) == ["metrics.csv"]
    logger.save()  # what Lightning's teardown of the interrupted run does
    interrupt_once("write")
    logger.log_metrics({"loss": 0.125, "lr": 0.01}, step=2)
    with pytest.raises(KeyboardInterrupt):
        logger.save()
    logger.save()
    header, rows = read_rows(tmp_path)
    assert header == ["loss", "lr", "step"]
    assert rows == [
        {"loss": "0.5", "lr": "", "step": "0"},
        {"loss": "0.25", "lr": "0.01", "step": "1"},
        {"loss": "0.125", "lr": "0.01", "step": "2"},
    ]


def test_a_resumed_run_drops_torn_lines_and_the_rows_after_its_checkpoint(tmp_path):
    """A file that interrupted writers left: the third line cut short and extended by the next
    save (an older version's teardown), the last one cut short by a kill; a stale temporary of
    a killed rewrite lies beside it."""
    folder = tmp_path / "csv"
    folder.mkdir()
    (folder / "metrics.csv").write_text("loss,step\r\n0.5,0\r\n0.25,1\r\n0.1,0.125,2\r\n0.0625,3\r\n0.03")
    (folder / ".metrics.csv.tmp-123").write_text("loss,st")
    drop_metrics_after(tmp_path, step=2)
    assert sorted(p.name for p in folder.iterdir()) == ["metrics.csv"]
    resumed = RunCSVLogger(str(tmp_path))
    resumed.log_metrics({"loss": 0.03125}, step=3)
    resumed.save()
    assert read_rows(tmp_path) == (
        ["loss", "step"],
        [{"loss": "0.5", "step": "0"}, {"loss": "0.25", "step": "1"}, {"loss": "0.03125", "step": "3"}],
    )
