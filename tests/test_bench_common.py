"""benchmarks/_common.py: the ``--tmp`` option and the scratch folder every benchmark
runs in (made inside ``--tmp``, gone afterwards, also after a failure)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from _common import bench_parser, run_in_scratch, scratch_folder  # noqa: E402


def test_the_scratch_folder_is_made_inside_tmp_and_removed_after_a_failure(tmp_path):
    seen = []

    def bench(args, tmp):
        assert tmp.parent == tmp_path and tmp.name.startswith("cloudhop-durability-")
        (tmp / "data").mkdir()
        (tmp / "data" / "file").write_bytes(b"x" * 100)
        seen.append(tmp)
        raise RuntimeError("the benchmark failed")

    args = bench_parser("doc", data="the hub's data").parse_args(["--tmp", str(tmp_path)])
    with pytest.raises(RuntimeError, match="the benchmark failed"):
        run_in_scratch(args, "durability", bench)
    assert seen and not seen[0].exists()
    assert list(tmp_path.iterdir()) == []


def test_a_run_returns_0_and_leaves_nothing(tmp_path):
    args = bench_parser(None).parse_args(["--tmp", str(tmp_path)])
    assert run_in_scratch(args, "preemption", lambda a, tmp: (tmp / "f").write_text("1")) == 0
    assert list(tmp_path.iterdir()) == []


def test_without_tmp_the_folder_is_in_the_systems_temporary_folder():
    import tempfile

    args = bench_parser(None).parse_args([])
    assert args.tmp is None
    with scratch_folder("bench", args.tmp) as tmp:
        assert tmp.is_dir() and tmp.parent == Path(tempfile.gettempdir())
    assert not tmp.exists()


def test_the_benchmarks_use_it(capsys, monkeypatch):
    """The scripts that had this boilerplate each import it now (their --help shows the
    shared option)."""
    import runpy

    for name in ("durability", "preemption", "migration"):
        with pytest.raises(SystemExit) as exit_:
            monkeypatch.setattr(sys, "argv", [f"{name}.py", "--help"])
            runpy.run_path(str(Path(__file__).resolve().parent.parent / "benchmarks" / f"{name}.py"),
                           run_name="__main__")
        assert exit_.value.code == 0
        assert "--tmp DIR" in capsys.readouterr().out, name
