"""Use cases between the HTTP layer and the pool: shaping requests into work, encoding results."""
