"""Run :mod:`.agent` inside a kernel over its execute channel (server side).

The agent's source is installed once per kernel as the module ``_cloudhop_kernelstate``
(re-installed when the source changes), beside :mod:`.modstate` as
``_cloudhop_kernelstate_modstate``. Calls are executed ``silent`` with no history,
so the user's ``In``/``Out``, execution count and notebook output stay untouched, and
the result comes back through ``user_expressions`` rather than printed output.
"""

from __future__ import annotations

import ast
import hashlib
import json
from pathlib import Path

from jupyter_client.asynchronous import AsyncKernelClient

MODULE = "_cloudhop_kernelstate"
#: the modules installed in the kernel, in order: (module name, source)
_SOURCES = tuple((name, Path(__file__).with_name(file).read_text())
                 for name, file in ((f"{MODULE}_modstate", "modstate.py"), (MODULE, "agent.py")))
_HASH = hashlib.sha256("\0".join(src for _name, src in _SOURCES).encode()).hexdigest()[:16]


class KernelStateError(RuntimeError):
    """The kernel did not answer, or the agent reported an error."""


def _install_code() -> str:
    # one expression, so the user's namespace gains no names
    installs = ", ".join(
        f"(lambda m: (s.modules.__setitem__({name!r}, m), "
        f"exec(compile({src!r}, {'<cloudhop-' + name + '>'!r}, 'exec'), m.__dict__), "
        f"setattr(m, 'SOURCE_HASH', {_HASH!r})))(t.ModuleType({name!r}))"
        for name, src in _SOURCES
    )
    return (
        f"(lambda s, t: None if getattr(s.modules.get({MODULE!r}), 'SOURCE_HASH', None) == {_HASH!r} "
        f"else ({installs}))(__import__('sys'), __import__('types'))\n"
    )


async def run_agent(connection_info: dict, fn: str, *args, timeout: float = 600) -> dict:
    """Call ``agent.<fn>(*args)`` in the kernel at ``connection_info``; returns its result.

    Waits behind any cell the user is running (up to ``timeout`` seconds in all)."""
    kc = AsyncKernelClient()
    kc.load_connection_info(connection_info)
    # no heartbeat: on a loaded machine one missed beat (1 s) reads as "kernel died" and
    # fails a move or a restore; a kernel that really is gone ends in wait_for_ready's timeout
    kc.start_channels(hb=False)
    try:
        try:
            await kc.wait_for_ready(timeout=min(timeout, 60))
        except RuntimeError as err:
            raise KernelStateError(f"the kernel does not answer: {err}") from err
        code = _install_code() + f"__import__('sys').modules[{MODULE!r}].call({fn!r}, *{list(args)!r})\n"
        try:
            reply = await kc.execute_interactive(
                code, silent=True, store_history=False, allow_stdin=False, timeout=timeout,
                user_expressions={"r": f"__import__('sys').modules[{MODULE!r}].last_result"},
                output_hook=lambda msg: None,
            )
        except TimeoutError as err:
            raise KernelStateError(f"the kernel did not finish {fn} within {timeout:.0f} s") from err
        content = reply["content"]
        if content.get("status") != "ok":
            raise KernelStateError(f"{fn} failed in the kernel: {content.get('ename')}: {content.get('evalue')}")
        expr = content["user_expressions"]["r"]
        if expr.get("status") != "ok":
            raise KernelStateError(f"{fn}: no result from the kernel ({expr.get('ename')}: {expr.get('evalue')})")
        result = json.loads(ast.literal_eval(expr["data"]["text/plain"]))
        if not result or not result.get("ok"):
            raise KernelStateError(f"{fn} failed in the kernel: {(result or {}).get('error')}")
        return result["result"]
    finally:
        kc.stop_channels()


async def checkpoint_kernel(connection_info: dict, directory: str, *, timeout: float = 600) -> dict:
    """Checkpoint the kernel's variables into ``directory`` (on the kernel's machine)."""
    return await run_agent(connection_info, "checkpoint", str(directory), timeout=timeout)


async def restore_kernel(connection_info: dict, directory: str, *, timeout: float = 600) -> dict:
    """Load the checkpoint in ``directory`` into the kernel's namespace."""
    return await run_agent(connection_info, "restore", str(directory), timeout=timeout)
