"""Errors of the local executor: one clear line each, never a traceback for bad input."""

from __future__ import annotations


class LocalRunError(Exception):
    """The local run cannot go on (bad workflow, missing secret, unresolved variable...)."""


class UnsupportedFeature(LocalRunError):
    """The rendered workflow uses something the local executor does not implement.

    Raised before anything runs, listing every such use, so nothing is ever ignored silently.
    """

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems
