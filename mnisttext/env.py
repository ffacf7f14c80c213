"""The environment variables the package reads, checked in one place (no torch here).

    from mnisttext import env
    env.forced_dtype()        # None, or "fp32" / "bf16" / "int8" from MNISTTEXT_DTYPE
    env.check()               # the CLI's first step: a typo is one line, not a silent "auto"
"""
from __future__ import annotations

import os

DTYPE_VAR = "MNISTTEXT_DTYPE"
DTYPES = ("fp32", "bf16", "int8")


def forced_dtype() -> str | None:
    """MNISTTEXT_DTYPE's dtype; None when unset, empty or "auto"; a ValueError for anything else."""
    value = os.environ.get(DTYPE_VAR, "").strip().lower()
    if value in ("", "auto"):
        return None
    if value not in DTYPES:
        raise ValueError(f"{DTYPE_VAR}={value!r}: expected {', '.join(DTYPES)} or auto (or unset)")
    return value


def check() -> None:
    forced_dtype()
