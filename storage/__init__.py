"""Everything MongoDB: the client, collection names, indexes and repositories."""
