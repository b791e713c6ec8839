"""Operations over the event log: replay, retention, registry, stats, doctor."""
