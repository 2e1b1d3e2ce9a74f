"""Everything that touches Ray: cluster connection, actors and worker groups."""
