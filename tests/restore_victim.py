"""What a restore attack must leave as it was: the ``outside`` folder of
tests/security/conftest.py, its one file, their contents and modes."""

from __future__ import annotations

import os
import stat


def untouched(outside) -> bool:
    victim = outside / "victim.txt"
    return (sorted(os.listdir(outside)) == ["victim.txt"] and victim.read_text() == "hello"
            and stat.S_IMODE(os.lstat(victim).st_mode) == 0o644
            and stat.S_IMODE(os.lstat(outside).st_mode) == 0o755)
