"""Whether this Python can talk to Optuna's gRPC storage proxy: gRPC, and the protobuf runtime that
Optuna's generated stubs (a private module of Optuna's) import."""

from __future__ import annotations

from search.errors import UserError, first_line
from search.optuna_versions import internals_allowed


def require_grpc() -> None:
    """Nothing, or one line saying which package grpc:// lacks and how to install it."""
    try:
        import grpc  # noqa: F401

        if internals_allowed():  # Optuna's own stubs: the protobuf runtime's version too
            from optuna.storages._grpc.auto_generated import api_pb2  # noqa: F401
    except ImportError as e:
        missing = getattr(e, "name", None) or first_line(e)
        raise UserError(
            f"grpc:// storage needs gRPC ({missing} is not installed): pip install -e '.[grpc]'"
        ) from None
