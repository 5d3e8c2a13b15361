"""Making a user's system account when the account files are locked for a moment (two
hubs on one machine, or an admin's own useradd at the same time)."""

from __future__ import annotations

import subprocess

import pytest

from cloudhop.spawner.providers import accounts


def _fake_run(results, made):
    calls = []

    def run(cmd, **kw):
        calls.append(cmd)
        code = results.pop(0)
        if code == 0:
            made.append(cmd[-1])
        return subprocess.CompletedProcess(cmd, code, "", "useradd: cannot lock /etc/passwd; try again later."
                                           if code else "")
    return run, calls


def test_a_locked_account_file_is_tried_again(monkeypatch):
    made: list[str] = []
    run, calls = _fake_run([10, 10, 0], made)
    monkeypatch.setattr(accounts.subprocess, "run", run)
    monkeypatch.setattr(accounts, "lookup", lambda name: object() if name in made else None)
    monkeypatch.setattr(accounts.time, "sleep", lambda s: None)
    accounts._useradd("jupyter-ada", "ada")
    assert len(calls) == 3 and made == ["jupyter-ada"]


def test_a_lock_that_stays_fails_with_useradds_reason(monkeypatch):
    made: list[str] = []
    run, calls = _fake_run([10] * accounts.USERADD_TRIES, made)
    monkeypatch.setattr(accounts.subprocess, "run", run)
    monkeypatch.setattr(accounts, "lookup", lambda name: None)
    monkeypatch.setattr(accounts.time, "sleep", lambda s: None)
    with pytest.raises(accounts.AccountError, match="exited with 10: useradd: cannot lock /etc/passwd"):
        accounts._useradd("jupyter-ada", "ada")
    assert len(calls) == accounts.USERADD_TRIES


def test_another_failure_is_not_retried(monkeypatch):
    run, calls = _fake_run([9], [])
    monkeypatch.setattr(accounts.subprocess, "run", run)
    monkeypatch.setattr(accounts, "lookup", lambda name: None)
    with pytest.raises(accounts.AccountError, match="exited with 9"):
        accounts._useradd("jupyter-ada", "ada")
    assert len(calls) == 1
