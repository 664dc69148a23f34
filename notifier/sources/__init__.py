"""Sources: the places updates and events come from, each turned into plain data for items."""

from .feed import FeedEntry, parse_feed
from .http import Fetched, fetch

__all__ = ["FeedEntry", "Fetched", "fetch", "parse_feed"]
