"""`python -m rrt.sweeps.status`: every record gets a line, whatever state it was left in; bad input gets one line."""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from rrt.sweeps.status import main, sweep_status


def write_record(run_dir: Path, **fields) -> Path:
    """A record.json as a trainer (or a crash, or a hand edit) may leave it: the required fields plus ``fields``."""
    run_dir.mkdir(parents=True)
    data = {"schema": 1, "run_id": run_dir.name, "status": "running", "setting": {}, **fields}
    (run_dir / "record.json").write_text(json.dumps(data))
    return run_dir


def ago(seconds: float) -> str:
    """An ISO UTC time ``seconds`` ago, as the trainer writes its heartbeat."""
    return (dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=seconds)).isoformat(timespec="seconds")


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def states(root: Path, stale_after_s: float = 600.0) -> dict[str, str]:
    table = sweep_status(root, stale_after_s)
    return dict(zip(table["run"], table["state"]))


def test_null_sections_show_as_empty(tmp_path, capsys):
    write_record(tmp_path / "a", metrics=None, budget=None, evals=None, cluster=None)
    write_record(
        tmp_path / "b", metrics=[None, {"step": 3, "tokens": 96, "loss": 2.5}], evals=[{"task": "piqa", "value": None}]
    )
    table = sweep_status(tmp_path).set_index("run")
    assert table.loc["a", ["state", "step", "tokens"]].tolist() == ["running", "0/?", 0]
    assert table.loc["b", ["step", "tokens", "loss"]].tolist() == ["3/?", 96, 2.5]
    assert table["eval_avg"].isna().all() and table["slurm_job"].isna().all()
    assert main([str(tmp_path)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "2 running"


def test_missing_root_is_one_line_naming_it(tmp_path, capsys):
    missing = tmp_path / "sweeps" / "f1_init"
    assert main([str(missing)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.splitlines()) == 1
    assert err.startswith(f"error: {missing} ")


def test_corrupt_record_is_shown_corrupt_with_its_reason(tmp_path, capsys):
    write_record(tmp_path / "good", status="complete")
    (tmp_path / "cut").mkdir()
    (tmp_path / "cut" / "record.json").write_text('{"schema": 1, "run_id": "cut", "sta')
    (tmp_path / "list").mkdir()
    (tmp_path / "list" / "record.json").write_text("[]")
    assert states(tmp_path) == {"cut": "corrupt", "good": "complete", "list": "corrupt"}
    assert main([str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert ["cut", "corrupt", "-", "-", "-", "-", "-"] in [line.split() for line in lines]
    assert any(line.startswith("cut: corrupt: unreadable: ") for line in lines)
    assert "list: corrupt: not a record (JSON list)" in lines
    assert lines[-1] == "1 complete, 2 corrupt"


def test_running_record_with_an_old_heartbeat_is_stale(tmp_path, capsys):
    write_record(tmp_path / "old", heartbeat=ago(11 * 60), pid=1, host="node-elsewhere")
    write_record(tmp_path / "fresh", heartbeat=ago(5), pid=1, host="node-elsewhere")
    write_record(tmp_path / "done", status="complete", heartbeat=ago(3600))
    write_record(tmp_path / "legacy")  # written before records had heartbeats: cannot be judged
    assert states(tmp_path) == {"done": "complete", "fresh": "running", "legacy": "running", "old": "stale"}
    assert states(tmp_path, 3600.0)["old"] == "running"
    assert main([str(tmp_path), "--stale-after", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith("fresh: stale: last heartbeat ") for line in lines)
    assert lines[-1] == "1 complete, 1 running, 2 stale"


def test_running_record_whose_pid_died_on_this_host_is_stale(tmp_path):
    pid, host = dead_pid(), socket.gethostname()
    write_record(tmp_path / "dead", heartbeat=ago(5), pid=pid, host=host)
    write_record(tmp_path / "alive", heartbeat=ago(5), pid=os.getpid(), host=host)
    write_record(tmp_path / "elsewhere", heartbeat=ago(5), pid=pid, host=f"{host}-other")  # not ours to check
    assert states(tmp_path) == {"alive": "running", "dead": "stale", "elsewhere": "running"}
    assert sweep_status(tmp_path).set_index("run").loc["dead", "note"] == f"pid {pid} is not running on {host}"


@pytest.mark.parametrize("value", ["0", "-5", "soon"])
def test_stale_after_must_be_positive_seconds(tmp_path, capsys, value):
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path), "--stale-after", value])
    assert exit_info.value.code == 2
    last_line = capsys.readouterr().err.splitlines()[-1]
    assert last_line.endswith(f"argument --stale-after: '{value}' is not a positive number of seconds")
