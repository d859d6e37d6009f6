"""Run a test Hub (or a real single-user server) without a 3-second import it never uses.

``python -m hubcull.testing.launch MODULE [ARG...]`` runs ``python -m MODULE [ARG...]``
(``jupyterhub``, ``jupyterhub.singleuser``) unchanged, except for one thing: the
package ``rfc3987_syntax`` cannot be imported.

Why: both import ``jupyter_events``, which imports ``jsonschema``'s format checkers,
which import ``rfc3987_syntax`` when it is installed (``jsonschema[format-nongpl]``).
That package builds a Lark grammar at import: about 3 s of CPU, more than everything
else the Hub imports. jsonschema uses it only to check the ``iri`` and
``iri-reference`` formats, which no event schema of JupyterHub, jupyter_server or
jupyter_events uses; without it jsonschema simply leaves those formats unchecked. The
test suite and the benchmarks start a Hub, or a real single-user server, well over a
hundred times: on a loaded 2-core CI machine those seconds were minutes of the suite.

Nothing else changes: the same ``jupyterhub`` from PyPI, the same configuration, the
same event loop. Production Hubs are not started this way (hubcull never starts a Hub).
"""

from __future__ import annotations

import runpy
import sys

# A None entry makes ``import rfc3987_syntax`` raise ImportError, which jsonschema
# expects of an optional format checker (it is imported under suppress(ImportError)).
SKIPPED = ("rfc3987_syntax",)


def main(argv: list[str]) -> None:
    if not argv:
        sys.exit("usage: python -m hubcull.testing.launch MODULE [ARG...]")
    for name in SKIPPED:
        sys.modules.setdefault(name, None)  # type: ignore[arg-type]
    module, *args = argv
    sys.argv = [module, *args]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main(sys.argv[1:])
