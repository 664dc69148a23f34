"""notifier: event-driven notification service for EIFELKREIS VERBINDET.

The public surface: load settings, run the service, and the error types callers can catch.
"""

from typing import TYPE_CHECKING, Any

from .errors import (
    ConfigError,
    DeliveryError,
    InputError,
    NotFoundError,
    NotifierError,
    PermanentDeliveryError,
    StateError,
    TemporaryDeliveryError,
)

if TYPE_CHECKING:
    from .config import Settings, load_settings
    from .service import Service

__all__ = [
    "ConfigError",
    "DeliveryError",
    "InputError",
    "NotFoundError",
    "NotifierError",
    "PermanentDeliveryError",
    "Service",
    "Settings",
    "StateError",
    "TemporaryDeliveryError",
    "load_settings",
]


def __getattr__(name: str) -> Any:
    # Imported on first use: a process that only sends (``python -m notifier.delivery``)
    # does without the service's other parts, which saves memory in every such process.
    if name == "Service":
        from .service import Service

        return Service
    if name in ("Settings", "load_settings"):
        from . import config

        return getattr(config, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
