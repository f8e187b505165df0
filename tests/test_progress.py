"""Progress outside a terminal: periodic plain lines with stage, step and ETA."""

from __future__ import annotations

import re
import time

from fedlsm.progress import progress_iter


def test_plain_lines_while_a_stage_runs(monkeypatch, capfd):
    monkeypatch.setenv("FEDLSM_PROGRESS", "plain")
    monkeypatch.delenv("FEDLSM_NO_PROGRESS", raising=False)
    monkeypatch.setenv("FEDLSM_PROGRESS_INTERVAL", "1")
    for _ in progress_iter(range(6), "training"):
        time.sleep(0.5)
    err = capfd.readouterr().err
    beats = re.findall(r"^\[\d\d:\d\d:\d\d\] training: (\d)/6, 0m0\ds elapsed, ETA 0m0\ds$", err, re.M)
    assert len(beats) >= 2, err  # about one a second over three seconds of work
    assert re.search(r"training: 6/6, 0m0[23]s elapsed, ETA 0m00s \(done\)$", err, re.M), err
    assert [int(b) for b in beats] == sorted(int(b) for b in beats)


def test_silenced(monkeypatch, capfd):
    monkeypatch.setenv("FEDLSM_PROGRESS", "plain")
    monkeypatch.setenv("FEDLSM_NO_PROGRESS", "1")
    monkeypatch.setenv("FEDLSM_PROGRESS_INTERVAL", "1")
    for _ in progress_iter(range(3), "training"):
        time.sleep(0.5)
    assert capfd.readouterr().err == ""
