"""Request and response bodies, with descriptions and examples for the OpenAPI docs."""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

from app.engines.gan import MAX_SEED


class StillFormat(StrEnum):
    png = "png"
    jpeg = "jpeg"
    webp = "webp"


class InterpolationFormat(StrEnum):
    webp = "webp"
    gif = "gif"
    png = "png"
    jpeg = "jpeg"


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class GenerateRequest(_Body):
    model: str | None = Field(
        None, description="Catalog name of a GAN model; the service default when omitted.",
        examples=["dcgan-faces-64"],
    )
    n: int = Field(
        1, ge=1, le=1024,
        description="How many images (1..`ATELIER_MAX_IMAGES_PER_REQUEST`, 64 by default)."
        " More than one come back as a grid, or as a JSON list with `Accept: application/json`.",
        examples=[4],
    )
    seed: int | None = Field(
        None, ge=0, le=MAX_SEED,
        description="Seed of the first image; image i uses seed + i, so a seed always gives"
        " the same image. Drawn at random (and returned in `X-Seed`) when omitted.",
        examples=[42],
    )
    truncation: float | None = Field(
        None, gt=0, le=10,
        description="Truncation trick: latent entries beyond this magnitude are resampled."
        " Lower values give more typical, less varied images.",
        examples=[0.7],
    )
    format: StillFormat | None = Field(
        None, description="Image format; when omitted it is taken from `Accept`, else PNG.",
        examples=["png"],
    )


class InterpolateRequest(_Body):
    model: str | None = Field(None, description="Catalog name of a GAN model.",
                              examples=["dcgan-faces-64"])
    seed_from: int = Field(..., ge=0, le=MAX_SEED, description="Seed of the first frame.",
                           examples=[1])
    seed_to: int = Field(..., ge=0, le=MAX_SEED, description="Seed of the last frame.",
                         examples=[2])
    steps: int = Field(16, ge=2, le=64, description="Frames, both ends included.",
                       examples=[16])
    truncation: float | None = Field(None, gt=0, le=10,
                                     description="Truncation of both end latents.",
                                     examples=[0.7])
    format: InterpolationFormat = Field(
        InterpolationFormat.webp,
        description="`webp` or `gif`: an animation; `png` or `jpeg`: a grid of the frames.",
        examples=["webp"],
    )
    frame_ms: int = Field(100, ge=20, le=5000, description="Duration of one animation frame.",
                          examples=[100])


class GeneratedImage(BaseModel):
    seed: int = Field(..., description="The seed that reproduces this image.", examples=[42])
    data_url: str = Field(..., description="The image as a data: URL.",
                          examples=["data:image/png;base64,iVBORw0..."])


class GenerateResponse(BaseModel):
    model: str = Field(..., examples=["dcgan-faces-64"])
    images: list[GeneratedImage]


class LicenseInfo(BaseModel):
    name: str = Field(..., examples=["MIT"])
    attribution: str
    url: str | None = None


class ModelInfo(BaseModel):
    name: str = Field(..., examples=["dcgan-faces-64"])
    kind: str = Field(..., examples=["gan"])
    title: str
    description: str
    status: str = Field(..., description="`available` or `unavailable`.",
                        examples=["available"])
    message: str | None = Field(None, description="Why it is unavailable and how to fix it.")
    devices: list[str] = Field(..., description="Devices whose workers serve it.")
    output_size: tuple[int, int] | None = None
    license: LicenseInfo
    default: bool = Field(..., description="Whether requests without `model` use it.")


class ModelList(BaseModel):
    models: list[ModelInfo]


class Health(BaseModel):
    status: str = Field(..., examples=["ok"])


class WorkerInfo(BaseModel):
    name: str
    device: str
    lane: str = Field(..., description="`generate` or `stylize`: each kind has its own queue.")
    alive: bool


class Readiness(BaseModel):
    status: str = Field(..., examples=["ready"])
    workers: list[WorkerInfo]
    models: dict[str, str] = Field(..., description="Model name to status.")
