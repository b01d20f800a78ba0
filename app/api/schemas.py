"""Request and response bodies, with descriptions and examples for the OpenAPI docs."""

from __future__ import annotations

from pydantic import BaseModel, Field


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
