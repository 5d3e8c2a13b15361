"""Cloudhop tags as Kubernetes labels, and back.

Tags (:data:`~cloudhop.spawner.providers.base.TAG_HUB` and friends) become labels with
the same keys, so ``list_nodes(tags)`` is one label-selector query. Label values allow
63 characters of ``[A-Za-z0-9._-]`` starting and ending alphanumeric; a value outside
that (``ana@example.org``) is rewritten deterministically to a valid one with a hash
suffix, so the same tag always gives the same label. The exact tag values also go into
one annotation, which is what :func:`tags_from_metadata` reads back.
"""

from __future__ import annotations

import hashlib
import json
import re

TAGS_ANNOTATION = "cloudhop.io/tags"
MANAGED_BY = {"app.kubernetes.io/managed-by": "cloudhop"}

_VALID_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_INVALID_CHARS = re.compile(r"[^A-Za-z0-9_.-]+")
_NAME_CHARS = re.compile(r"[^a-z0-9]+")


def label_value(value) -> str:
    """A valid label value for ``value``: itself when valid, else a readable prefix
    plus an 8-character hash of the original (no two originals share a result in
    practice, and the same original always gives the same result)."""
    text = str(value)
    if len(text) <= 63 and _VALID_VALUE.match(text):
        return text
    digest = hashlib.sha256(text.encode()).hexdigest()[:8]
    stem = _INVALID_CHARS.sub("-", text)[:54].strip("-_.")
    return f"{stem}-{digest}" if stem else digest


def object_name(prefix: str, *parts: str, key: str = "", max_length: int = 63) -> str:
    """A DNS-1123 label (pod, PVC, RayCluster names): ``prefix-part-...-hash``, lower
    case, at most ``max_length`` characters; the hash covers the exact parts and
    ``key`` (which is not shown), so distinct inputs get distinct names."""
    digest = hashlib.sha256("\xff".join((key, *parts)).encode()).hexdigest()[:8]
    words = [w for w in (_NAME_CHARS.sub("-", p.lower()).strip("-") for p in parts) if w]
    room = max_length - len(prefix) - len(digest) - 2
    stem = "-".join(words)[: max(room, 0)].strip("-")
    return "-".join(x for x in (prefix, stem, digest) if x)


def tag_labels(tags: dict) -> tuple[dict, dict]:
    """(labels, annotations) for a node carrying ``tags``."""
    labels = {str(k): label_value(v) for k, v in tags.items()}
    annotations = {TAGS_ANNOTATION: json.dumps({str(k): str(v) for k, v in tags.items()}, sort_keys=True)}
    return labels, annotations


def selector(tags: dict) -> str:
    """The label selector (``k=v,k2=v2``) for objects carrying all of ``tags``."""
    return ",".join(f"{k}={label_value(v)}" for k, v in sorted(tags.items()))


def tags_from_metadata(metadata: dict) -> dict:
    """The exact tags of an object (from its annotation; its labels when the annotation
    is missing, e.g. an object made by hand)."""
    raw = (metadata.get("annotations") or {}).get(TAGS_ANNOTATION)
    if raw:
        try:
            tags = json.loads(raw)
            if isinstance(tags, dict):
                return {str(k): str(v) for k, v in tags.items()}
        except ValueError:
            pass
    return {k: v for k, v in (metadata.get("labels") or {}).items() if k.startswith("cloudhop")}


def matches(metadata: dict, tags: dict) -> bool:
    """True when the object's exact tags include ``tags`` (guards against two values
    that a hash shortened to the same label)."""
    have = tags_from_metadata(metadata)
    return all(have.get(k) == str(v) for k, v in tags.items())
