"""Sources: the places updates and events come from, each turned into plain data for items.

The submodules are imported where they are used (``sources.feed``, ``sources.calendar``,
``sources.http``, ``sources.poller``, ``sources.held``): a process that polls no source does
without httpx, feedparser and icalendar."""
