"""The README's quick start stays true: CI runs exactly its test command."""

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _code_lines(text: str) -> list[str]:
    out, inside = [], False
    for line in text.splitlines():
        if line.startswith("```"):
            inside = not inside
        elif inside:
            out.append(line.strip())
    return out


def test_ci_runs_exactly_the_readme_test_command():
    readme = _code_lines((ROOT / "README.md").read_text())
    assert "pip install -e . && cloudhop up" in readme
    test_cmd = next(line for line in readme if "pytest" in line)
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert test_cmd in ci, f"{test_cmd!r} must appear verbatim in .ci/run"
    assert any('"$rc" -eq 5' in line for line in ci), ".ci/run must handle pytest's exit code 5"
