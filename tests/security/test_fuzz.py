"""Fuzzed user options, manifests, chunk packs and restore reports: whatever a user
sends, the readers answer with their one documented error (naming the field, safe to
show in a page), never another exception, which a handler would turn into a 500.

* options (spawn form and REST, a move's shape check, the hub's offers check with the
  group policy): :class:`~cloudhop.spawner.schema.OptionError` only, its ``str()`` the
  field then the message, with no raw ``<``;
* a snapshot manifest (the restore's reader and the store's): ``ManifestError`` /
  ``BackendError`` only; one that is accepted names only plain relative paths and
  permission bits (docs/security.md, Restores);
* a chunk pack: ``PackError`` only, and a pack reads back what was packed;
* a restore report: ``ReportError`` only.

Fast (no processes); the REST spawn is fuzzed against a running hub in
``test_cross_user.py``.
"""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import option_strategies as strategies

from cloudhop.extensions.migrate import MOVABLE, check_options
from cloudhop.extensions.snapshot.manifest import PERMISSION_BITS, Manifest, ManifestError, check_path
from cloudhop.extensions.snapshot.protocol import (
    PACK_HEADER, PackError, ReportError, RestoreReport, encode_pack, iter_pack,
)
from cloudhop.hub.store_backends import BackendError, manifest_chunk_ids
from cloudhop.spawner.catalog import all_catalog_offers
from cloudhop.spawner.offers import Offer
from cloudhop.spawner.options import options_from_form, parse_options
from cloudhop.spawner.policy import Policy, validate_request
from cloudhop.spawner.schema import FIELDS, RAY_FIELDS, OptionError, check_shape

# no example database: nothing is written into the working tree
FUZZ = settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])

# values: what json.loads can return, and user options (tests/option_strategies.py)
json_values, options, near = strategies.json_values, strategies.options, strategies.near


@pytest.fixture(scope="module")
def offers():
    """The real catalog's offers, and the local provider's."""
    local = [Offer("local", "local", "cpu", "none", 0, price_hour=0.0),
             Offer("local", "local", "T4x1", "T4", 1, gpu_memory_gib=15, price_hour=0.0)]
    return all_catalog_offers() + local


@pytest.fixture(scope="module")
def policy():
    return Policy(groups={
        "default": {"providers": ["local"], "max_gpus": 1},
        "students": {"providers": ["gcp", "local"], "gpus": ["L4", "T4", "none"], "max_gpus": 1,
                     "max_ray_workers": 2, "max_price_hour": 1.5},
    })


KNOWN_FIELDS = {*FIELDS, *(f"ray.{f}" for f in RAY_FIELDS), "user_options"}


def assert_option_error(err: OptionError) -> None:
    """Names the field (a schema field, or the unknown key as sent, escaped) and is safe
    to put in a page."""
    text = str(err)
    assert "<" not in text, text
    assert err.status in (400, 403), err.status
    if err.field:
        assert text.startswith(f"{err.field}: "), text
        assert err.field in KNOWN_FIELDS or "unknown" in err.message, text
    else:  # an unknown key that escapes to nothing (""): the message says which
        assert "unknown option" in err.message, text


def only_option_errors(fn, *args, **kw):
    try:
        return fn(*args, **kw)
    except OptionError as err:
        assert_option_error(err)
        return None


@FUZZ
@given(raw=options)
@example(raw={"ray": {"workers": "1e999"}})
@example(raw={"<script>": 1})
@example(raw={"": 1})
def test_the_shape_check_raises_only_option_errors(raw):
    checked = only_option_errors(check_shape, raw)
    if checked is not None:
        assert set(checked) <= set(FIELDS)


@FUZZ
@given(raw=options)
def test_a_moves_check_raises_only_option_errors(raw):
    checked = only_option_errors(check_options, raw)
    if checked is not None:
        assert "restore" not in checked and set(checked) <= {o.name for o in MOVABLE}


@FUZZ
@given(raw=options)
@example(raw={"provider": "local", "gpu": "T4", "gpu_count": "1", "ray": {"workers": 2}})
def test_parsing_against_real_offers_raises_only_option_errors(raw, offers):
    request = only_option_errors(parse_options, raw, offers, providers=["aws", "gcp", "oci", "local"])
    if request is not None:
        assert request.gpu_count <= 16 and (request.ray is None or request.ray.workers <= 32)


@FUZZ
@given(raw=options, group=st.sampled_from(["students", "nobody-listed"]))
def test_the_policy_check_raises_only_option_errors(raw, group, offers, policy):
    only_option_errors(validate_request, raw, offers, policy, [group],
                       providers=["aws", "gcp", "oci", "local"], price_of=lambda request, allowed: 0.5)


form_text = near | st.text(max_size=12)
form = st.dictionaries(
    st.sampled_from([*FIELDS, *(f"ray_{f}" for f in RAY_FIELDS), "colour"]),
    st.lists(form_text, max_size=2), max_size=8,
)


@FUZZ
@given(formdata=form)
def test_the_spawn_form_raises_only_option_errors(formdata, offers):
    raw = options_from_form(formdata)
    only_option_errors(parse_options, raw, offers, providers=["aws", "gcp", "oci", "local"])


# -- manifests -------------------------------------------------------------------------

hexid = st.text(alphabet="0123456789abcdef", min_size=64, max_size=64)
path_text = st.sampled_from(["a.txt", "data/a.csv", "../x", "/etc/passwd", "a//b", "./a", "a\\b",
                             "a\x00b", "", ".", "dir/..", "ok/../../x"]) | st.text(max_size=20)
mode = (st.sampled_from([0o644, 0o755, 0o4755, 0o2755, 0o1777, 0o100644, 0o120777, 0o20644, 0o10644,
                         0o140755, 0o40755, 0o177777, 0o200000, -1])
        | st.integers() | json_values)
size = st.integers(0, 10) | st.sampled_from([float("inf"), float("nan"), -1, "3", 1.5]) | json_values
chunks = st.lists(st.tuples(hexid | json_values, size).map(list), max_size=3) | json_values
entry = st.fixed_dictionaries(
    {}, optional={"path": path_text | json_values, "mode": mode, "size": size,
                  "hash": hexid | json_values, "chunks": chunks},
) | json_values
manifest = st.fixed_dictionaries(
    {"version": st.just(1) | json_values},
    optional={"files": st.lists(entry, max_size=3) | json_values, "created": json_values | st.floats(),
              "meta": json_values},
)


#: JSON nested deeper than Python's recursion limit
DEEP = b"[" * 100_000


def manifest_bytes(data) -> bytes:
    return json.dumps(data, allow_nan=True).encode()


@FUZZ
@given(data=manifest)
@example(data={"version": 1, "files": 5})
@example(data={"version": 1, "created": "yesterday"})
@example(data={"version": 1, "created": [1]})
@example(data={"version": 1, "files": [{"path": "a", "mode": 420, "size": float("inf"), "hash": "0" * 64,
                                        "chunks": []}]})
@example(data={"version": 1, "files": [{"path": "a", "mode": 420, "size": 1, "hash": "0" * 64,
                                        "chunks": [["0" * 64, float("inf")]]}]})
def test_the_manifest_reader_raises_only_manifest_errors(data):
    try:
        read = Manifest.loads(manifest_bytes(data))
    except ManifestError:
        return
    for f in read.files:  # what a restore would write: plain relative paths, permission bits
        assert check_path(f.path) == f.path
        assert 0 <= f.mode <= PERMISSION_BITS
        assert f.size == sum(n for _, n in f.chunks) >= 0


@FUZZ
@given(raw=st.binary(max_size=200) | st.text(max_size=100).map(str.encode))
@example(raw=DEEP)
@example(raw=b"\xff\xfe{")
def test_a_manifest_of_any_bytes_raises_only_manifest_errors(raw):
    try:
        Manifest.loads(raw)
    except ManifestError:
        pass


@FUZZ
@given(data=manifest)
@example(data={"version": 1, "files": 5})
@example(data=DEEP)
def test_the_stores_manifest_reader_raises_only_backend_errors(data):
    try:
        _, ids = manifest_chunk_ids(data if isinstance(data, bytes) else manifest_bytes(data))
    except BackendError as err:
        assert err.status == 400
        return
    assert all(re.fullmatch("[0-9a-f]{64}", c) for c in ids)


# -- chunk packs and restore reports ------------------------------------------------------------


@FUZZ
@given(body=st.binary(max_size=300))
@example(body=b"\x00" * 32 + (2**64 - 1).to_bytes(8, "big"))
@example(body=b"\x00" * 39)
def test_a_pack_of_any_bytes_raises_only_pack_errors(body):
    try:
        items = list(iter_pack(body))
    except PackError:
        return
    assert sum(PACK_HEADER.size + len(data) for _, data in items) == len(body)


@FUZZ
@given(items=st.lists(st.tuples(hexid, st.binary(max_size=50)), min_size=1, max_size=5))
def test_a_pack_reads_back_what_was_packed_and_a_cut_one_is_refused(items):
    body = encode_pack(items)
    assert [(cid, bytes(data)) for cid, data in iter_pack(body)] == items
    with pytest.raises(PackError):  # every record is at least a header: one byte less cuts the last
        list(iter_pack(body[:-1]))


report = st.fixed_dictionaries(
    {"snapshot": st.text(max_size=10) | json_values, "state": st.sampled_from(["restoring", "done", "failed"]) | json_values},
    optional={"files": st.dictionaries(st.text(max_size=5), st.text(max_size=5) | json_values, max_size=3) | json_values,
              "kernels": st.lists(st.fixed_dictionaries({}, optional={
                  "path": st.text(max_size=5) | json_values, "kernel_name": st.text(max_size=5) | json_values,
                  "kernel_id": json_values, "variables": st.lists(st.text(max_size=3) | json_values, max_size=3),
                  "skipped": st.lists(json_values, max_size=2)}) | json_values, max_size=2) | json_values,
              "error": json_values, "bytes_total": json_values, "bytes_received": json_values},
)


@FUZZ
@given(data=report | json_values)
@example(data={"snapshot": "s", "state": "done", "bytes_total": float("inf")})
def test_a_restore_report_raises_only_report_errors(data):
    try:
        RestoreReport.decode(manifest_bytes(data))
    except ReportError:
        pass


@FUZZ
@given(body=st.binary(max_size=200))
@example(body=DEEP)
def test_a_restore_report_of_any_bytes_raises_only_report_errors(body):
    try:
        RestoreReport.decode(body)
    except ReportError:
        pass
