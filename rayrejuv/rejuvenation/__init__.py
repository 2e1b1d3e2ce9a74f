"""The rejuvenation engine below Ray: the streaming fusion + reset writer and the reset-set search."""
