"""Administration: `POST /models/reload` re-reads the catalog, so that a model trained (or
pulled, or removed) while the server runs is served, or refused, without a restart.

Allowed from loopback (a client address in 127.0.0.0/8 or ::1, and no proxy header saying
the request came from further away), or with the admin key (`ATELIER_ADMIN_KEY`) as
`Authorization: Bearer <key>` or `X-Admin-Key: <key>` (the latter for when API keys are on
and Authorization carries the caller's API key). Anything else: 403.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field

from app.api.deps import CatalogDep, PoolDep, SettingsDep
from app.api.routes.system import models as list_models
from app.api.schemas import ModelInfo
from app.errors import AtelierError
from app.settings import Settings

router = APIRouter(tags=["admin"])

# Set by reverse proxies: a loopback peer that sends one is relaying someone else.
PROXY_HEADERS = ("forwarded", "x-forwarded-for", "x-real-ip")


class ReloadRefused(AtelierError):
    status = 403
    slug = "admin-refused"
    title = "Administration refused"


class CatalogInvalid(AtelierError):
    status = 500
    slug = "catalog-invalid"
    title = "Catalog invalid"


class Reloaded(BaseModel):
    added: list[str] = Field(description="Models that were not in the catalog before.")
    removed: list[str] = Field(description="Models that are no longer in the catalog.")
    changed: list[str] = Field(
        description="Models whose manifest changed (for instance retrained under the same"
        " name): the workers load them from disk again at their next use; work already"
        " running finishes with the weights it started with.")
    reloaded_weights: bool = Field(
        description="Whether loaded copies of changed or removed models were dropped. False"
        " on the ray backend: engine replicas keep theirs until they restart.")
    models: list[ModelInfo] = Field(description="The catalog now, as `GET /models` shows it.")


def admin_key(settings: Settings) -> str:
    return str(getattr(settings, "admin_key", "") or "")


def _is_loopback(request: Request) -> bool:
    if request.client is None:
        return False
    try:
        address = ipaddress.ip_address(request.client.host.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if not address.is_loopback:
        return False
    return not any(request.headers.get(name) for name in PROXY_HEADERS)


def _presented_key(request: Request) -> str | None:
    scheme, _, token = request.headers.get("authorization", "").strip().partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return request.headers.get("x-admin-key") or None


def _key_matches(presented: str, expected: str) -> bool:
    # Digests, so the comparison takes the same time whatever the lengths.
    return hmac.compare_digest(hashlib.sha256(presented.encode()).digest(),
                               hashlib.sha256(expected.encode()).digest())


async def require_admin(request: Request, settings: SettingsDep) -> None:
    """403 unless the request comes from loopback or carries the admin key."""
    if _is_loopback(request):
        return
    expected = admin_key(settings)
    presented = _presented_key(request)
    if expected and presented is not None and _key_matches(presented, expected):
        return
    how = ("with the admin key (`Authorization: Bearer <ATELIER_ADMIN_KEY>`)" if expected
           else "(no ATELIER_ADMIN_KEY is set, so only from loopback)")
    raise ReloadRefused(f"administration is allowed from loopback or {how}")


AdminDep = Annotated[None, Depends(require_admin)]


@router.post(
    "/models/reload",
    summary="Re-read the model catalog",
    response_model=Reloaded,
    responses={403: {"description": "Neither from loopback nor with the admin key."},
               500: {"description": "A manifest does not parse; the catalog is unchanged."}},
)
async def reload_models(_admin: AdminDep, catalog: CatalogDep, pool: PoolDep,
                        settings: SettingsDep) -> Reloaded:
    """Read the manifests again (`ATELIER_CATALOG_DIR` and the trained models in
    `ATELIER_MODEL_DIR/trained`): new models are served from now on, removed ones refused,
    and every model's weights are checked again. Allowed from loopback or with the admin
    key."""
    try:
        changes = await asyncio.to_thread(catalog.reload)
    except (OSError, ValueError) as exc:  # pydantic's ValidationError is a ValueError
        raise CatalogInvalid(f"the catalog was not reloaded: {exc}") from exc
    # Checking weights may hash files (trained models): off the event loop, once; the
    # listing below then finds every available model cached.
    await asyncio.to_thread(catalog.entries)
    forgotten = pool.forget_models([*changes.changed, *changes.removed])
    listing = await list_models(catalog, pool, settings)
    return Reloaded(added=changes.added, removed=changes.removed, changed=changes.changed,
                    reloaded_weights=forgotten, models=listing.models)
