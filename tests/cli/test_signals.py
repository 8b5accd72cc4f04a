"""SIGTERM ends any command as Ctrl-C does (loratune.cli.signals): one line, its own exit status, and the
process's own SIGTERM handler back afterwards."""

from __future__ import annotations

import os
import signal

import pytest

from loratune.cli import main, parser


@pytest.mark.parametrize(("signum", "status", "line"), [(signal.SIGTERM, 143, "terminated (SIGTERM)")])
def test_a_signal_during_a_command_is_one_line_and_its_own_status(monkeypatch, capsys, signum, status, line):
    def killed(args):
        os.kill(os.getpid(), signum)
        raise AssertionError("the signal should have stopped the command")

    summary, arguments, _ = parser._COMMANDS["report"]
    monkeypatch.setitem(parser._COMMANDS, "report", (summary, arguments, killed))
    before = signal.getsignal(signal.SIGTERM)
    assert main(["report", "some-run"]) == status
    assert capsys.readouterr().err.strip() == line
    assert signal.getsignal(signal.SIGTERM) is before
