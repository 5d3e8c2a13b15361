"""Hypothesis strategies for fuzzing what users send: JSON values and user options
(near-valid names, markup, paths, numbers out of range, unknown keys), shared by the
fast fuzz tests and the fuzzed REST spawn against a running hub (tests/security/)."""

from __future__ import annotations

import string

from hypothesis import strategies as st

from cloudhop.spawner.schema import FIELDS, RAY_FIELDS

#: what json.loads can return (floats include inf and nan: json.loads reads 1e999 and NaN)
scalars = (st.none() | st.booleans() | st.integers() | st.integers(-3, 20)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=30))
json_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)

#: strings near the valid ones: catalog names, digits, markup, paths, separators
NEAR = ["local", "aws", "gcp", "oci", "auto", "us-east-1", "europe-west4", "T4", "t4", "H100",
        "A100-80GB", "none", "g4dn.xlarge", "cpu", "2", " 3 ", "16", "17", "-1", "٣", "true", "on",
        "<script>alert(1)</script>", "a<b", "..", "../x", "x/y", "a\nb", "", " ", "\x00",
        "registry.example/team/img:1", "Bad Image!", "snap-1", "a" * 200]
near = st.sampled_from(NEAR) | st.text(alphabet=string.printable, max_size=20)
option_value = near | json_values
ray_value = (st.dictionaries(st.sampled_from([*RAY_FIELDS, "colour", "<b>"]), option_value, max_size=4)
             | json_values)
option_key = st.sampled_from([*FIELDS, *FIELDS, "colour", "<img src=x>", "", "ray.workers"]) | st.text(max_size=10)
options = st.one_of(
    st.dictionaries(option_key, option_value, max_size=6),
    st.fixed_dictionaries({}, optional={f: (ray_value if f == "ray" else option_value) for f in FIELDS}),
    json_values,
)
