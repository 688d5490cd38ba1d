"""Errors of the local services' start/stop code."""

from __future__ import annotations

from tierflow.pipeline.errors import TierflowError


class ServiceError(TierflowError, RuntimeError):
    """A local service could not be provisioned, started or reached."""


def refuse_remote(service: str, address: str, what: str) -> ServiceError:
    """`tierflow up` starts services on loopback only; a remote one that does not
    answer is the operator's to fix, never something to start here."""
    return ServiceError(f"{service} at {address} is not reachable (a remote {what}: not starting a local server)")
