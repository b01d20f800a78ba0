"""HTTP layer: routes, schemas, problem+json errors, request logging. The only FastAPI code."""
