"""Feast's import without typeguard's re-compilation of its classes.

Feast decorates its definition classes (``FeatureView``, ``Entity``, ``Field``, the data
sources...) with typeguard's ``@typechecked``. In typeguard 4 that decorator re-reads and
re-parses the whole module's source and compiles it again for every method it
instruments, so importing Feast spends about half its time there: 5 s against 2.6 s
for ``import feast`` on this project's 2-core machine. Every process that touches the
store pays it: each Airflow task on a LocalExecutor, Celery or Kubernetes worker, each
benchmark, the production check.

``skip_feast_instrumentation`` wraps ``typeguard.typechecked`` so that it leaves the
targets defined in Feast's own modules as they are, and instruments everything else as
before (a user's own ``@typechecked`` code keeps its checks). It has to run before Feast
is first imported, so the package's ``__init__`` calls it; once Feast is imported it
changes nothing. What is lost is typeguard's argument check on Feast's constructors:
a definition of the wrong type then fails in Feast's own code (``feast apply``, the
protobuf conversion) rather than at construction, and this project's definitions are
applied by every test that builds a repository.
"""

from __future__ import annotations

import sys
from typing import Any

FEAST_MODULES = "feast"  # the top-level package whose typeguard instrumentation is skipped


def skip_feast_instrumentation() -> bool:
    """Make ``typeguard.typechecked`` a no-op for Feast's own definitions; True if it was put in place.

    Does nothing (False) when Feast is already imported, typeguard is not installed, or the
    wrapper is already in place.

    Example:
        >>> import typeguard
        >>> skip_feast_instrumentation() or getattr(typeguard.typechecked, "skips", None) == FEAST_MODULES
        True
    """
    if FEAST_MODULES in sys.modules:
        return False
    try:
        import typeguard
    except ImportError:
        return False
    original = typeguard.typechecked
    if getattr(original, "skips", None) == FEAST_MODULES:
        return False

    def typechecked(target: Any = None, **options: Any) -> Any:
        if target is None:
            return lambda t: typechecked(t, **options)
        module = getattr(target, "__module__", "") or ""
        if module == FEAST_MODULES or module.startswith(FEAST_MODULES + "."):
            return target
        return original(target, **options)

    typechecked.skips = FEAST_MODULES
    typechecked.__wrapped_typechecked__ = original
    typechecked.__doc__ = original.__doc__
    typeguard.typechecked = typechecked
    return True
