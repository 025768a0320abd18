"""The Pusher protocol v7, free of I/O: names, errors, signatures and wire messages.

Nothing in this package imports asyncio, aiohttp or redis; it is tested without sockets.
"""
