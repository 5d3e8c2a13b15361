"""Kernel state: checkpoint a running kernel's user variables and load them into a fresh
kernel of the same kernel name.

:mod:`.agent` is the code that runs inside the kernel (sent as source over the execute
channel, so the kernel's environment needs nothing from Cloudhop); :mod:`.runner` is
the server side that sends it and reads the result back.
"""

from .runner import KernelStateError, checkpoint_kernel, restore_kernel, run_agent

__all__ = ["KernelStateError", "checkpoint_kernel", "restore_kernel", "run_agent"]
