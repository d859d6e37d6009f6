"""Shared fixtures: the package is tested from the source tree's virtualenv."""
