"""A data file that does not parse is one line naming the file, the line and the fix, with none of the readers'
own log lines (datasets once printed the pandas error twice, then a line without it)."""

from __future__ import annotations

import pytest

from loratune.cli import main


@pytest.mark.parametrize(
    ("content", "said"),
    [
        ("text,label\ngood film,pos\nbad, film,neg\nok,pos\n", "line 3 has 3 fields but the header has 2"),
        ("text,label\nfine,pos\nok,neg\nworse,film,neg,x\n", "line 4 has 4 fields but the header has 2"),
        ('text,label\n"unclosed quote,pos\nbad film,neg\n', "a double quote opened on line 2 is never closed"),
    ],
)
def test_a_malformed_csv_is_one_line_with_its_line_number(tmp_path, capsys, content, said):
    data = tmp_path / "data.csv"
    data.write_text(content)
    assert main(["check-data", "--data", str(data)]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert lines == [lines[0]] and lines[0].startswith(f"error: Could not read {data} as CSV: {said}"), lines
    assert captured.out == ""


def test_the_command_prints_nothing_else(tmp_path):
    """In a real process, where the libraries' log handlers write to the terminal."""
    import os
    import subprocess
    import sys

    data = tmp_path / "data.csv"
    data.write_text("text,label\ngood film,pos\nbad, film,neg\nok,pos\n")
    done = subprocess.run(
        [sys.executable, "-m", "loratune", "check-data", "--data", str(data)],
        capture_output=True,
        text=True,
        env=os.environ | {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"},
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"error: Could not read {data} as CSV: line 3 has 3 fields but the header has 2; put a text that contains "
        'the separator in double quotes ("like, this").'
    ]
