"""notifier: event-driven notification service for EIFELKREIS VERBINDET.

The public surface: load settings, run the service, and the error types callers can catch.
"""

from .config import Settings, load_settings
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
