"""Publishing: one write path (writer) for the sync bus, the asyncio bus and the buffer."""
