"""The XLA CPU flag the package sets when imported, before JAX's backend starts.

XLA's CPU compiler orders a program's instructions with one of two schedulers: a
breadth-first one tuned for concurrency (the default) or a depth-first one that keeps fewer
buffers live. On the K-FAC step of a two-layer GRU over a 10k-word embedding (T=100, B=128)
the default intermittently never returned on this project's 2-core machines (compile or first
call, all threads idle); with the depth-first scheduler it always did, at the same step time.
Other JAX projects set the same flag for the memory it saves on CPU. It has no effect on GPU
or TPU, and none once the backend has started (XLA reads its flags once).

Set ``ADMM_JAX_XLA_DEFAULTS=0`` to leave ``XLA_FLAGS`` untouched, or name the flag yourself
in ``XLA_FLAGS`` (with either value): the package never overrides a flag you set.
"""

from __future__ import annotations

import os

FLAG = "--xla_cpu_enable_concurrency_optimized_scheduler"


def set_cpu_defaults(environ: dict | None = None) -> bool:
    """Append ``FLAG=false`` to ``XLA_FLAGS`` unless opted out or already named.

    Args:
      environ: the environment to edit (default ``os.environ``).

    Returns:
      whether the flag was added.

    Example:
      >>> env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
      >>> set_cpu_defaults(env), env["XLA_FLAGS"].split()[-1]
      (True, '--xla_cpu_enable_concurrency_optimized_scheduler=false')
      >>> set_cpu_defaults({"ADMM_JAX_XLA_DEFAULTS": "0"})
      False
    """
    env = os.environ if environ is None else environ
    flags = env.get("XLA_FLAGS", "")
    if env.get("ADMM_JAX_XLA_DEFAULTS", "1") == "0" or FLAG in flags:
        return False
    env["XLA_FLAGS"] = f"{flags} {FLAG}=false".strip()
    return True


set_cpu_defaults()
