"""Nodes a stop kept because its snapshot failed, and the admin's way to decide.

::

    GET  /hub/api/cloudhop/kept            -> {"kept": [{"user", "server", "node", "provider",
                                                         "region", "reason", "at"}, ...]}
    POST /hub/api/cloudhop/kept/{node}     {"action": "retry" | "discard"}
         retry:   snapshot the node through its own server (as the stop would have), then
                  terminate it -> 200 {"node", "snapshot"}; 502 with the reason when the
                  snapshot fails again (the node stays kept)
         discard: terminate it without a snapshot: what only it held is gone
                  -> 200 {"node", "discarded": true}

Admins only (``admin:servers``): anyone else gets 403; a node no stopped server kept, 404.
``cloudhop nodes`` (:mod:`.nodes_cli`) calls these. A kept node is listed in its stopped
server's state (``kept``, :mod:`cloudhop.spawner.durable`); deciding removes it from there.
"""

from __future__ import annotations

import json

from jupyterhub.apihandlers.base import APIHandler
from jupyterhub.utils import url_escape_path, url_path_join
from tornado import web

from cloudhop.spawner import durable


def _kept(users) -> list[tuple]:
    """``(user, spawner, entry, ref)`` of every node kept by a stopped server of ``users``."""
    out = []
    for user in users:
        for name in list(user.orm_user.orm_spawners):
            spawner = user.spawners[name]
            for entry in list(getattr(spawner, "kept", None) or []):
                for ref in entry.get("nodes") or []:
                    out.append((user, spawner, entry, ref))
    return out


class KeptHandler(APIHandler):
    def admin_only(self) -> None:
        if not self.has_scope("admin:servers"):
            raise web.HTTPError(403, "only an admin (admin:servers) may see or decide kept nodes")

    def all_users(self):
        from jupyterhub import orm

        return [self.users[u] for u in self.db.query(orm.User)]

    async def get(self):
        self.admin_only()
        rows = [{"user": user.name, "server": spawner.name, "node": ref.get("id"), "provider": ref.get("provider"),
                 "region": ref.get("region"), "role": ref.get("role"), "reason": entry.get("reason"),
                 "at": entry.get("at")}
                for user, spawner, entry, ref in _kept(self.all_users())]
        self.finish(json.dumps({"kept": rows}))

    async def post(self, node_id: str | None = None):
        self.admin_only()
        if node_id is None:
            raise web.HTTPError(405, "POST /hub/api/cloudhop/kept/{node} decides one kept node")
        body = self.get_json_body() or {}
        action = body.get("action") if isinstance(body, dict) else None
        if action not in ("retry", "discard"):
            raise web.HTTPError(400, 'action: must be "retry" or "discard"')
        found = [row for row in _kept(self.all_users()) if row[3].get("id") == node_id]
        if not found:
            raise web.HTTPError(404, f"node: no stopped server kept a node {node_id!r}")
        user, spawner, entry, _ = found[0]
        answer = {"node": node_id}
        if action == "retry":
            answer["snapshot"] = await self.snapshot(user, spawner, entry)
        else:
            answer["discarded"] = True
        for ref in entry.get("nodes") or []:  # workers first, the notebook node last
            if ref.get("role") != "notebook":
                await spawner.provider(ref["provider"]).terminate(ref["id"])
        for ref in entry.get("nodes") or []:
            if ref.get("role") == "notebook":
                await spawner.provider(ref["provider"]).terminate(ref["id"])
        durable.forget_token_id(user, entry.get("token"))  # the node's server token goes with it
        spawner.kept = [k for k in spawner.kept if k is not entry]
        spawner.orm_spawner.state = spawner.get_state()
        self.db.commit()
        self.log.warning("%s kept node %s of %s: %s by %s", action, node_id, spawner._log_name,
                         f"snapshot {answer['snapshot']}, then terminated" if action == "retry" else
                         "terminated without a snapshot", self.current_user.name)
        self.finish(json.dumps(answer))

    async def snapshot(self, user, spawner, entry) -> str:
        """Snapshot the kept notebook node through its own server, with a ten-minute token
        of the owner's for that server alone; 502 with the reason when it fails."""
        node = entry.get("node") or {}
        if not node.get("ip"):
            raise web.HTTPError(409, "the kept entry names no reachable notebook node; discard it")
        base = url_path_join(user.url, url_escape_path(spawner.name) + "/" if spawner.name else "")
        url = f"http://{node['ip']}:{node.get('port')}{base}"
        token = durable.call_token(user, spawner.name)
        try:
            reply = await durable.hibernate(url, token, kernels=spawner.hibernate_kernels,
                                            timeout=spawner.hibernate_timeout)
        except durable.HibernateError as err:
            raise web.HTTPError(502, f"the snapshot failed again: {err}; the node stays kept") from None
        finally:
            durable.forget_token(user, token)
        return reply["id"]


def handlers() -> list[tuple]:
    return [(r"/api/cloudhop/kept", KeptHandler), (r"/api/cloudhop/kept/([^/]+)", KeptHandler)]
