"""A local stand-in for the Kubernetes API server, for the few calls Cloudhop's
Kubernetes provider makes, so the real ``kubernetes_asyncio`` client runs against it
through a generated kubeconfig (``FakeKubernetes.kubeconfig(path)``):

    GET            /api/v1/nodes
    GET            /api/v1/pods                                   (all namespaces)
    GET|POST       /api/v1/namespaces/{ns}/pods                   (list with labelSelector / fieldSelector, create)
    GET|DELETE     /api/v1/namespaces/{ns}/pods/{name}
    GET|POST       /api/v1/namespaces/{ns}/persistentvolumeclaims
    GET|DELETE     /api/v1/namespaces/{ns}/persistentvolumeclaims/{name}
    GET|POST       /api/v1/namespaces/{ns}/secrets
    GET|DELETE     /api/v1/namespaces/{ns}/secrets/{name}
    GET            /api/v1/namespaces/{ns}/events                 (fieldSelector involvedObject.name=)
    GET|POST       /apis/ray.io/v1/namespaces/{ns}/rayclusters
    GET|DELETE     /apis/ray.io/v1/namespaces/{ns}/rayclusters/{name}
    GET|POST       /apis/networking.k8s.io/v1/namespaces/{ns}/networkpolicies
    GET|DELETE     /apis/networking.k8s.io/v1/namespaces/{ns}/networkpolicies/{name}

Bodies are the API's JSON: objects get ``metadata.uid``, ``resourceVersion`` and
``creationTimestamp``; lists are ``{"kind": "PodList", "items": [...]}``; errors are
``Status`` objects (``{"kind": "Status", "status": "Failure", "reason":
"AlreadyExists", "code": 409, ...}``). Label selectors support ``k=v``, ``k!=v``, ``k``
and ``!k``; field selectors ``status.phase!=X``, ``spec.nodeName=X`` and
``involvedObject.name=X``.

Secrets are kept as the API server keeps them: ``stringData`` is folded into ``data``
(base64) and never stored, and a ``data`` value that is not base64 is refused (422)
(there is no update call, so nothing changes a Secret). ``metadata.ownerReferences`` must name
``apiVersion``, ``kind``, ``name`` and ``uid`` (422 otherwise); when an object goes, the
garbage collector's work is done at once: every object owning it by uid goes too (a
background cascade, as for a delete without ``propagationPolicy``).

There is no kubelet: a created pod stays ``Pending`` until the test calls
``set_phase``. A delete removes the pod at once, or with ``graceful_delete = True``
marks it with ``deletionTimestamp`` until ``finish_deletions()``. ``ray_crd = False``
makes RayCluster calls answer 404 as on a cluster without KubeRay. Every request needs
the kubeconfig's bearer token (401 otherwise); ``requests`` logs (method, path).
"""

from __future__ import annotations

import base64
import binascii
import copy
import itertools
import json
import re
import socket
import threading
import uuid
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

TOKEN = "fake-cluster-token-not-a-secret"
_versions = itertools.count(1)

KINDS = {
    "pods": ("Pod", "v1"),
    "persistentvolumeclaims": ("PersistentVolumeClaim", "v1"),
    "rayclusters": ("RayCluster", "ray.io/v1"),
    "events": ("Event", "v1"),
    "secrets": ("Secret", "v1"),
    "networkpolicies": ("NetworkPolicy", "networking.k8s.io/v1"),
}
_OWNER_FIELDS = ("apiVersion", "kind", "name", "uid")


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def status_body(code: int, reason: str, message: str) -> dict:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}


def _label_match(labels: dict, selector: str) -> bool:
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            k, v = term.split("!=", 1)
            if labels.get(k) == v:
                return False
        elif "=" in term:
            k, v = term.split("=", 1)
            if labels.get(k.rstrip("=")) != v:
                return False
        elif term.startswith("!"):
            if term[1:] in labels:
                return False
        elif term not in labels:
            return False
    return True


def _field(obj: dict, path: str):
    for part in path.split("."):
        obj = (obj or {}).get(part) if isinstance(obj, dict) else None
    return obj


def _field_match(obj: dict, selector: str) -> bool:
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            k, v = term.split("!=", 1)
            if str(_field(obj, k)) == v:
                return False
        else:
            k, v = term.split("=", 1)
            if str(_field(obj, k.rstrip("="))) != v:
                return False
    return True


class FakeKubernetes:
    """State of the fake API: objects by (resource, namespace, name), nodes, a log."""

    def __init__(self):
        self.lock = threading.Lock()
        self.objects: dict[tuple[str, str, str], dict] = {}
        self.nodes: list[dict] = []
        self.requests: list[tuple[str, str]] = []
        self.graceful_delete = False
        self.ray_crd = True
        #: HTTP codes to answer the next matching calls with: {("POST", "pods"): [503, ...]}
        self.faults: dict[tuple[str, str], list[int]] = {}
        #: 403 on the cluster-wide pod list (a hub with namespace-only rights)
        self.forbid_cluster_pods = False
        self.server: ThreadingHTTPServer | None = None
        self.url = ""

    # -- test controls ----------------------------------------------------------

    def start(self) -> "FakeKubernetes":
        fake = self

        class Handler(_Handler):
            api = fake

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        return self

    def stop(self) -> None:
        if self.server:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def kubeconfig(self, path, context: str = "fake", namespace: str = "default") -> str:
        """Write a kubeconfig for this server (bearer token auth) and return its path."""
        data = {
            "apiVersion": "v1", "kind": "Config", "current-context": context,
            "clusters": [{"name": context, "cluster": {"server": self.url}}],
            "users": [{"name": context, "user": {"token": TOKEN}}],
            "contexts": [{"name": context, "context": {"cluster": context, "user": context, "namespace": namespace}}],
        }
        with open(path, "w", encoding="utf-8") as f:
            json.dump(data, f)  # JSON is YAML
        return str(path)

    def add_node(self, name: str, *, gpus: int = 0, labels: dict | None = None, ready: bool = True,
                 cpu: str = "8", memory: str = "32Gi") -> dict:
        allocatable = {"cpu": cpu, "memory": memory, "pods": "110"}
        if gpus:
            allocatable["nvidia.com/gpu"] = str(gpus)
        node = {
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "uid": str(uuid.uuid4()), "labels": dict(labels or {}),
                         "creationTimestamp": _now(), "resourceVersion": str(next(_versions))},
            "spec": {},
            "status": {"capacity": dict(allocatable), "allocatable": allocatable,
                       "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]},
        }
        with self.lock:
            self.nodes.append(node)
        return node

    def add_event(self, namespace: str, pod: str, reason: str, message: str) -> None:
        name = f"{pod}.{uuid.uuid4().hex[:8]}"
        event = {"apiVersion": "v1", "kind": "Event",
                 "metadata": {"name": name, "namespace": namespace, "uid": str(uuid.uuid4())},
                 "involvedObject": {"kind": "Pod", "name": pod, "namespace": namespace},
                 "reason": reason, "message": message, "type": "Normal"}
        with self.lock:
            self.objects[("events", namespace, name)] = event

    def pods(self, namespace: str = "default") -> dict[str, dict]:
        with self.lock:
            return {k[2]: copy.deepcopy(v) for k, v in self.objects.items() if k[:2] == ("pods", namespace)}

    def get(self, resource: str, namespace: str, name: str) -> dict | None:
        with self.lock:
            obj = self.objects.get((resource, namespace, name))
            return copy.deepcopy(obj) if obj else None

    def names(self, resource: str, namespace: str = "default") -> list[str]:
        with self.lock:
            return sorted(k[2] for k in self.objects if k[:2] == (resource, namespace))

    def set_phase(self, namespace: str, name: str, phase: str, *, ip: str | None = None,
                  node: str | None = None, conditions: list | None = None, message: str | None = None) -> None:
        """What a scheduler and kubelet would do: phase, pod IP, node, conditions."""
        with self.lock:
            pod = self.objects[("pods", namespace, name)]
            status = pod.setdefault("status", {})
            status["phase"] = phase
            if ip:
                status["podIP"] = ip
            if node:
                pod["spec"]["nodeName"] = node
            if conditions is not None:
                status["conditions"] = conditions
            if message:
                status["message"] = message
            pod["metadata"]["resourceVersion"] = str(next(_versions))

    def finish_deletions(self) -> None:
        with self.lock:
            for key in [k for k, v in self.objects.items() if v["metadata"].get("deletionTimestamp")]:
                self._remove(key)

    def secret_data(self, namespace: str, name: str) -> dict | None:
        """A Secret's data, decoded (None when there is no such Secret)."""
        obj = self.get("secrets", namespace, name)
        if obj is None:
            return None
        return {k: base64.b64decode(v).decode() for k, v in (obj.get("data") or {}).items()}

    # -- API semantics ------------------------------------------------------------

    def _take_fault(self, method: str, resource: str) -> int | None:
        with self.lock:
            queue = self.faults.get((method, resource))
            return queue.pop(0) if queue else None

    def create(self, resource: str, namespace: str, body: dict) -> tuple[int, dict]:
        kind, api_version = KINDS[resource]
        meta = body.setdefault("metadata", {})
        name = meta.get("name")
        if not name:
            return 422, status_body(422, "Invalid", f"{kind} \"\" is invalid: metadata.name: Required value")
        if body.get("kind") not in (None, kind):
            return 400, status_body(400, "BadRequest", f"kind {body.get('kind')!r} does not match {kind}")
        for i, ref in enumerate(meta.get("ownerReferences") or []):
            missing = [f for f in _OWNER_FIELDS if not (ref or {}).get(f)]
            if missing:
                return 422, status_body(422, "Invalid", f'{kind} "{name}" is invalid: '
                                        f"metadata.ownerReferences[{i}].{missing[0]}: Required value")
        if resource == "secrets":
            body = dict(body)
            data = dict(body.get("data") or {})
            for key, value in data.items():
                try:
                    base64.b64decode(str(value), validate=True)
                except (binascii.Error, ValueError):
                    return 422, status_body(422, "Invalid", f'Secret "{name}" is invalid: data[{key}]: '
                                            "Invalid value: illegal base64 data")
            for key, value in (body.pop("stringData", None) or {}).items():
                data[key] = base64.b64encode(str(value).encode()).decode()
            body["data"] = data
            body.setdefault("type", "Opaque")
        with self.lock:
            if (resource, namespace, name) in self.objects:
                return 409, status_body(409, "AlreadyExists", f'{resource} "{name}" already exists')
            obj = copy.deepcopy(body)
            obj["kind"], obj["apiVersion"] = kind, api_version
            obj["metadata"].update(namespace=namespace, uid=str(uuid.uuid4()),
                                   resourceVersion=str(next(_versions)), creationTimestamp=_now())
            if resource == "pods":
                obj["status"] = {"phase": "Pending", "conditions": [], "qosClass": "BestEffort"}
            if resource == "persistentvolumeclaims":
                obj["status"] = {"phase": "Pending"}
            self.objects[(resource, namespace, name)] = obj
            return 201, copy.deepcopy(obj)

    def read(self, resource: str, namespace: str, name: str) -> tuple[int, dict]:
        obj = self.get(resource, namespace, name)
        if obj is None:
            return 404, status_body(404, "NotFound", f'{resource} "{name}" not found')
        return 200, obj

    def delete(self, resource: str, namespace: str, name: str) -> tuple[int, dict]:
        with self.lock:
            obj = self.objects.get((resource, namespace, name))
            if obj is None:
                return 404, status_body(404, "NotFound", f'{resource} "{name}" not found')
            if resource == "pods" and self.graceful_delete:
                obj["metadata"]["deletionTimestamp"] = _now()
                obj["metadata"]["deletionGracePeriodSeconds"] = 1
                return 200, copy.deepcopy(obj)
            self._remove((resource, namespace, name))
            if resource == "pods":
                return 200, copy.deepcopy(obj)
            return 200, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                         "details": {"name": name, "kind": resource}}

    def _remove(self, key: tuple) -> None:
        """Remove an object and, as the garbage collector would, everything it owns
        (with ``lock`` held)."""
        obj = self.objects.pop(key, None)
        if obj is None:
            return
        uid = obj["metadata"].get("uid")
        for other, dependent in list(self.objects.items()):
            if other[1] == key[1] and any(r.get("uid") == uid for r in dependent["metadata"].get("ownerReferences") or []):
                self._remove(other)

    def list(self, resource: str, namespace: str | None, query: dict) -> tuple[int, dict]:
        labels = query.get("labelSelector", [""])[0]
        fields = query.get("fieldSelector", [""])[0]
        with self.lock:
            if resource == "nodes":
                items = copy.deepcopy(self.nodes)
            else:
                items = [copy.deepcopy(v) for k, v in self.objects.items()
                         if k[0] == resource and (namespace is None or k[1] == namespace)]
        items = [o for o in items if _label_match(o["metadata"].get("labels") or {}, labels)
                 and _field_match(o, fields)]
        kind = "NodeList" if resource == "nodes" else KINDS[resource][0] + "List"
        api_version = "v1" if resource == "nodes" else KINDS[resource][1]
        return 200, {"kind": kind, "apiVersion": api_version,
                     "metadata": {"resourceVersion": str(next(_versions))}, "items": items}


_ROUTES = [
    (r"^/api/v1/nodes$", "nodes", False),
    (r"^/api/v1/pods$", "pods", False),
    (r"^/api/v1/namespaces/(?P<ns>[^/]+)/(?P<res>pods|persistentvolumeclaims|secrets|events)(?:/(?P<name>[^/]+))?$", None, True),
    (r"^/apis/ray\.io/v1/namespaces/(?P<ns>[^/]+)/(?P<res>rayclusters)(?:/(?P<name>[^/]+))?$", None, True),
    (r"^/apis/networking\.k8s\.io/v1/namespaces/(?P<ns>[^/]+)/(?P<res>networkpolicies)(?:/(?P<name>[^/]+))?$", None, True),
]


class _Handler(BaseHTTPRequestHandler):
    api: FakeKubernetes
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # keep test output quiet
        pass

    def setup(self):
        super().setup()
        # headers and body go out in two writes; without this, delayed ACKs add 40 ms a call
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _send(self, code: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _route(self, method: str) -> None:
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        self.api.requests.append((method, url.path))
        if self.headers.get("Authorization") != f"Bearer {TOKEN}":
            return self._send(401, status_body(401, "Unauthorized", "Unauthorized"))
        for pattern, fixed, namespaced in _ROUTES:
            m = re.match(pattern, url.path)
            if not m:
                continue
            resource = fixed or m.group("res")
            namespace = m.group("ns") if namespaced else None
            name = m.group("name") if namespaced else None
            if resource == "rayclusters" and not self.api.ray_crd:
                return self._send(404, status_body(404, "NotFound", "the server could not find the requested resource"))
            fault = self.api._take_fault(method, resource)
            if fault:
                return self._send(fault, status_body(fault, "InternalError" if fault >= 500 else "TooManyRequests",
                                                      f"scripted HTTP {fault}"))
            if resource == "pods" and namespace is None and self.api.forbid_cluster_pods:
                return self._send(403, status_body(403, "Forbidden", 'pods is forbidden: User "system:serviceaccount:hub:hub" cannot list resource "pods" at the cluster scope'))
            if method == "GET" and name:
                return self._send(*self.api.read(resource, namespace, name))
            if method == "GET":
                return self._send(*self.api.list(resource, namespace, query))
            if method == "POST" and not name:
                try:
                    body = json.loads(raw or b"{}")
                except ValueError:
                    return self._send(400, status_body(400, "BadRequest", "invalid JSON"))
                return self._send(*self.api.create(resource, namespace, body))
            if method == "DELETE" and name:
                return self._send(*self.api.delete(resource, namespace, name))
            return self._send(405, status_body(405, "MethodNotAllowed", f"{method} not allowed"))
        self._send(404, status_body(404, "NotFound", "the server could not find the requested resource"))

    def do_GET(self):
        self._route("GET")

    def do_POST(self):
        self._route("POST")

    def do_DELETE(self):
        self._route("DELETE")
