"""``cloudhop usage`` (cloudhop.hub.usage_cli) reads the spend ledger of a data folder:
per user, per server of one user, per member of a group, as a table or CSV; a bad flag
exits 2 naming it."""

from __future__ import annotations

import csv
import io
import time

import pytest

from cloudhop.hub.cli import main
from cloudhop.spawner.ledger import Ledger, Wanted


@pytest.fixture
def data_dir(tmp_path):
    ledger = Ledger(str(tmp_path / "ledger.sqlite"))
    now = time.time()
    for user, server, group, usd in (("ada", "", "lab", 3.0), ("ada", "big", "lab", 7.0), ("bo", "", "class", 1.5)):
        node = Wanted("aws", f"i-{user}-{server}", "notebook", "r", "aws/r/x", usd, now - 3600)
        ledger.sync_server(user, server, [group], [node], now=now - 3600)
        ledger.sync_server(user, server, [group], [], now=now)
    ledger.close()
    return tmp_path


def test_every_user_then_one_user_then_a_group(data_dir, capsys):
    assert main(["usage", "--data-dir", str(data_dir)]) == 0
    out = capsys.readouterr().out
    assert "Spend of all users since" in out and "$11.50" in out
    lines = out.splitlines()[2:]
    assert lines[0].split() == ["ada", "10.00"] and lines[1].split() == ["bo", "1.50"]
    assert main(["usage", "--data-dir", str(data_dir), "--user", "ada", "--csv"]) == 0
    rows = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert rows == [["server", "usd"], ["big", "7.0000"], ["(default)", "3.0000"]]
    assert main(["usage", "--ledger", str(data_dir / "ledger.sqlite"), "--group", "class"]) == 0
    assert "bo" in capsys.readouterr().out


@pytest.mark.parametrize("argv, flag", [
    (["--since", "yesterday"], "--since:"),
    (["--user", "ada", "--group", "lab"], "--group:"),
    (["--data-dir", "/nonexistent-folder"], "--data-dir:"),
])
def test_bad_flags_exit_2_naming_the_flag(data_dir, capsys, argv, flag):
    argv = argv if "--data-dir" in argv else ["--data-dir", str(data_dir), *argv]
    assert main(["usage", *argv]) == 2
    assert capsys.readouterr().err.startswith(f"cloudhop usage: {flag}")
