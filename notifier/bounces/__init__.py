"""Bounces and complaints that come back after a message was accepted: parsing (``parsing``),
matching and acting (``intake``), the IMAP mailbox (``imap``), the inbound SMTP listener
(``listener``) and the signed envelope sender (``verp``). Only ``verp`` is imported here: a
sender process needs nothing else."""

from .verp import ReturnPath

__all__ = ["ReturnPath"]
