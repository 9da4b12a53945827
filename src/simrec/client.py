"""`from simrec.client import SimrecClient`: the shop-facing client (see simrec.serving.client)."""

from simrec.serving.client import (
    AuthenticationError,
    RequestRejectedError,
    ServerError,
    ServerUnavailableError,
    SimilarItem,
    SimrecClient,
    SimrecClientError,
)

__all__ = [
    "AuthenticationError",
    "RequestRejectedError",
    "ServerError",
    "ServerUnavailableError",
    "SimilarItem",
    "SimrecClient",
    "SimrecClientError",
]
