"""Observers of the engine's events: each reads events (and the status view), none acts.

- :mod:`.logs`: the log lines operators read (the Hub's log format);
- :mod:`.status`: one picture of every running server, its verdict and deadline;
- :mod:`.dryrun`: what ``--dry-run`` prints, read off the status view.
"""
