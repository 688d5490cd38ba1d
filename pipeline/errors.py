"""The base of every error tierflow raises on purpose.

Each package defines its own errors beside its code and derives them from
`TierflowError`, so a caller can tell tierflow's expected failures (bad
configuration, an unreachable archive, a failed delivery) from bugs.
"""

from __future__ import annotations


class TierflowError(Exception):
    """An expected failure with a message meant for the operator."""


class ConfigError(TierflowError, ValueError):
    """The configuration file is missing, malformed or inconsistent."""
