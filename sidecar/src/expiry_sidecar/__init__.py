"""expiry-sidecar: the timer server that kills training workers whose timers expire.

The core (``lines``, ``timers``, ``server``) is plain logic driven by tests without I/O; ``processes``
and ``kills`` touch the kernel; ``loop``, ``fifo``, ``http``, ``local`` and ``cli`` are the shell.
"""

__version__ = "0.2.0.dev0"
