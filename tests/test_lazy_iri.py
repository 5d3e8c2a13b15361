"""The deferred ``rfc3987_syntax`` import (cloudhop/lazy_iri.py): the hook is installed,
checks give the answers they gave with the eager import, and nothing else changes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from cloudhop import lazy_iri

#: IRIs and non-IRIs, with what jsonschema's iri / iri-reference checks say of them
SAMPLES = ["http://example.org/ä/path?q=1#frag", "http://exa mple.org/", "not an iri", "//example.org/x",
           "mailto:ada@example.org", "http://[::1]:80/", "http://example.org/%zz", "", "urn:isbn:0451450523",
           "relative/ref", "http://example.org/\u00a0"]

CHECK = """
import json, sys, time
t = time.process_time()
import jsonschema
imported = time.process_time() - t
lazy = type(sys.modules.get("rfc3987_syntax")).__name__
answers = {}
for fmt in ("iri", "iri-reference"):
    v = jsonschema.Draft202012Validator({"type": "string", "format": fmt},
                                        format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)
    answers[fmt] = [v.is_valid(s) for s in json.loads(sys.argv[1])]
print(json.dumps({"lazy_before": lazy, "after": type(sys.modules["rfc3987_syntax"]).__name__,
                  "answers": answers}))
"""


def run_check(eager: bool) -> dict:
    env = {k: v for k, v in os.environ.items() if k != lazy_iri.OFF_ENV}
    if eager:
        env[lazy_iri.OFF_ENV] = "1"
    r = subprocess.run([sys.executable, "-c", CHECK, json.dumps(SAMPLES)], env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout)


def test_the_hook_is_installed_in_site_packages():
    """``pip install`` (editable or not) puts the .pth where this Python reads it."""
    pth = Path(sysconfig.get_path("purelib")) / "cloudhop-lazy-iri.pth"
    assert pth.is_file(), f"{pth} is missing: reinstall the package"
    assert "cloudhop.lazy_iri" in pth.read_text()


def test_jsonschema_leaves_the_import_for_later_and_answers_as_before():
    pytest.importorskip("rfc3987_syntax")
    lazy, eager = run_check(eager=False), run_check(eager=True)
    assert lazy["lazy_before"] == "_StandIn", "importing jsonschema imported rfc3987_syntax at once"
    assert eager["lazy_before"] == "module", f"{lazy_iri.OFF_ENV}=1 keeps the import eager"
    assert lazy["after"] == "module", "the first IRI check puts the real module in sys.modules"
    assert lazy["answers"] == eager["answers"], (lazy["answers"], eager["answers"])
    assert True in lazy["answers"]["iri"] and False in lazy["answers"]["iri"], "the samples test both answers"


def test_submodules_and_other_names_import_through_the_stand_in():
    pytest.importorskip("rfc3987_syntax")
    code = ("import sys; import rfc3987_syntax as r; assert type(r).__name__ == '_StandIn', type(r); "
            "from rfc3987_syntax.utils import load_grammar; assert callable(load_grammar); "
            "terms = r.RFC3987_SYNTAX_TERMS; assert 'iri' in terms; "
            "assert type(sys.modules['rfc3987_syntax']).__name__ == 'module'; "
            "assert sys.modules['rfc3987_syntax'].is_valid_syntax('iri', 'http://example.org/')")
    env = {k: v for k, v in os.environ.items() if k != lazy_iri.OFF_ENV}
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]


def test_a_module_that_is_not_installed_is_still_missing(monkeypatch):
    """jsonschema relies on the ImportError to fall back: the finder never invents one."""
    monkeypatch.setattr(lazy_iri, "NAME", "cloudhop_no_such_module")
    finder = lazy_iri.LazyFinder()
    monkeypatch.setattr(sys, "meta_path", [finder, *sys.meta_path])
    assert finder.find_spec("cloudhop_no_such_module") is None
    with pytest.raises(ImportError):
        __import__("cloudhop_no_such_module")


def test_other_imports_pass_through():
    assert lazy_iri.LazyFinder().find_spec("json") is None


def test_install_is_idempotent(monkeypatch):
    monkeypatch.setattr(sys, "meta_path", list(sys.meta_path))
    monkeypatch.delitem(sys.modules, lazy_iri.NAME, raising=False)
    monkeypatch.delenv(lazy_iri.OFF_ENV, raising=False)
    lazy_iri.install()
    lazy_iri.install()
    assert sum(isinstance(f, lazy_iri.LazyFinder) for f in sys.meta_path) == 1
    kinds = [f.__name__ if isinstance(f, type) else type(f).__name__ for f in sys.meta_path]
    assert kinds.index("LazyFinder") < kinds.index("PathFinder"), kinds
