"""Which style job a device warms up with at start-up (ATELIER_STYLE_WARMUP)."""

from __future__ import annotations

from app.catalog import Catalog, ModelStatus
from app.engines.style import StyleOptions
from app.services.params import StyleParams
from app.services.stylize import engine_options
from app.settings import Settings


def style_warmup(settings: Settings, catalog: Catalog) -> StyleOptions | None:
    """The default style job, whose bucket shapes the pool runs once as it starts, if that
    is on and the style model is available."""
    entry = catalog.entry(settings.style_model)
    if not settings.style_warmup_on() or entry is None or entry.status is not (
            ModelStatus.AVAILABLE):
        return None
    return engine_options(StyleParams(), 1, entry.manifest, settings)
