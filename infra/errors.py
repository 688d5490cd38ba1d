"""Errors of the local services' start/stop code."""

from __future__ import annotations

from tierflow.pipeline.errors import TierflowError


class ServiceError(TierflowError, RuntimeError):
    """A local service could not be provisioned, started or reached."""


def refuse_remote(service: str, address: str, what: str) -> ServiceError:
    """`tierflow up` starts services on loopback only; a remote one that does not
    answer is the operator's to fix, never something to start here."""
    return ServiceError(f"{service} at {address} is not reachable (a remote {what}: not starting a local server)")


class CredentialsRefused(ServiceError):
    """A service answered but refused the credentials it was given."""

    def __init__(self, service: str, address: str, where: str, detail: str) -> None:
        # `detail` is the service's own reason; neither it nor `address` carries a secret.
        super().__init__(f"{service} at {address} refused the credentials in {where} ({detail})")
