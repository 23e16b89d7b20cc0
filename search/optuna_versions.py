"""Which Optuna versions `search` may use Optuna's private internals on, and the switch that turns
them off.

A few modules lean on Optuna internals for speed (docs/design.md, "Optuna internals, and where"):
batched storage writes, the per-trial snapshot TPE reads, SciPy's log Φ in TPE, heartbeats for
stacked trials and through the gRPC proxy. Each has a public-API path. The internals are used only
on an Optuna whose major.minor is in `TESTED` (the suite passed there with them on); any other
Optuna 5.x gets the public path and one warning naming its version. `SEARCH_OPTUNA_INTERNALS=off`
forces the public path (CI runs the storage, sampler, runner and resilience tests a second time
so), `=on` forces the internals on an untested Optuna, at the user's risk.

Imports nothing heavy: Optuna's version is read from the installed package's metadata.
"""

from __future__ import annotations

import os
import warnings
from importlib import metadata

TESTED = ("5.0", "5.1")  # Optuna major.minor versions the whole suite has passed on with the internals on
ENV = "SEARCH_OPTUNA_INTERNALS"  # off: public API only; on: internals whatever the version
_OFF = ("0", "off", "false", "no")
_ON = ("1", "on", "true", "yes")
_warned: set[str] = set()


def optuna_version() -> str:
    try:
        return metadata.version("optuna")
    except metadata.PackageNotFoundError:  # a source checkout on sys.path
        import optuna

        return optuna.__version__


def minor(version: str) -> str:
    """'5.0.1' -> '5.0', '5.1.0rc1' -> '5.1'."""
    return ".".join(version.split(".")[:2])


def internals_allowed() -> bool:
    """Whether Optuna's internals may be used now: the switch first, then the version table."""
    switch = os.environ.get(ENV, "").strip().lower()
    if switch in _OFF:
        return False
    if switch in _ON:
        return True
    version = optuna_version()
    if minor(version) in TESTED:
        return True
    if version not in _warned:
        _warned.add(version)
        warnings.warn(
            f"Optuna {version} is newer than the versions search was tested with "
            f"({', '.join(TESTED)}): search uses only Optuna's public API (correct, somewhat slower "
            f"storage); set {ENV}=on to use its faster paths anyway",
            RuntimeWarning,
            stacklevel=2,
        )
    return False
