"""Test-only helpers shared by tests/ and benchmarks/: not part of the installed package.

- :mod:`testkit.faults`: a fault-injecting HTTP proxy in front of a real Hub;
- :mod:`testkit.overlap`: how many requests were in flight at once;
- :mod:`testkit.fakehub`: an in-memory Hub behind the engine's ``HubAPI``, for unit tests;
- :mod:`testkit.vclock`: an event loop whose clock jumps instead of sleeping;
- :mod:`testkit.browser`: Debian's chromium through Playwright, for tests of web pages.

The real local Hub (:mod:`hubcull.testing`) stays in the package: the demo needs it.
"""
