"""The console script and ``python -m random_ltd`` both answer --help."""
from __future__ import annotations

import subprocess
import sys

from random_ltd.cli import main


def test_help_in_process(capsys):
    assert main([]) == 0
    assert "random-ltd" in capsys.readouterr().out


def test_python_m_help():
    result = subprocess.run([sys.executable, "-m", "random_ltd", "--help"], capture_output=True, text=True, check=False)
    assert result.returncode == 0 and "usage: random-ltd" in result.stdout


def test_unknown_flag_is_one_line_exit_2(capsys):
    import pytest

    with pytest.raises(SystemExit) as exit_info:
        main(["plan", "--no-such-flag"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--no-such-flag" in err
