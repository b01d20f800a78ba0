"""The parameters of the use cases, one definition each, shared by the API (as its request
bodies and form), the CLI and a job's `options`. Ranges that depend on the settings are
checked by the services."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from app.engines.gan import MAX_SEED
from app.engines.style import Init, Optimizer, PreserveColor

OutputFormat = Literal["png", "jpeg", "webp"]
FiniteWeight = Annotated[float, Field(ge=0, allow_inf_nan=False)]


class StyleParams(BaseModel):
    """What a caller may set; None takes the model's (or the service's) default."""

    model_config = ConfigDict(extra="forbid")

    steps: int | None = Field(
        None, ge=1, description="Optimisation steps (default `ATELIER_DEFAULT_STEPS`, at most"
        " `ATELIER_MAX_STEPS`).", examples=[50])
    size: int | None = Field(
        None, ge=16, description="Long side of the output in pixels (default"
        " `ATELIER_DEFAULT_SIZE`, at most `ATELIER_MAX_SIZE`).", examples=[128])
    content_weight: FiniteWeight | None = Field(
        None, description="Weight of the content loss (model default when omitted).",
        examples=[1.0])
    style_weight: FiniteWeight | None = Field(
        None, description="Weight of the style loss: higher paints more strongly.",
        examples=[30.0])
    tv_weight: FiniteWeight | None = Field(
        None, description="Total-variation weight (smoothness).", examples=[1.0])
    optimizer: Optimizer = Field(
        "lbfgs", description="`lbfgs` (better per step) or `adam`.")
    init: Init = Field(
        "content", description="Start from the content, the content plus noise, or noise.")
    style_scale: float = Field(
        1.0, gt=0, le=4, allow_inf_nan=False,
        description="Style image size relative to the output.", examples=[1.0])
    style_blend: list[FiniteWeight] | None = Field(
        None, description="One weight per style image (repeat the field, or comma-separate"
        " the weights in one value).", examples=[[0.7, 0.3]])
    preserve_color: PreserveColor = Field(
        "none", description="`luminance`: keep the content's colours (YCbCr) after the run;"
        " `match`: recolour the style to the content's palette before it.")
    seed: int | None = Field(
        None, ge=0, le=2**32 - 1, description="Seed of the noise initialisations (results are"
        " deterministic on CPU).", examples=[0])
    format: OutputFormat = Field("png", description="Output format.")
    preview_every: int = Field(
        0, ge=0, description="Steps between `preview` SSE events (0: none).", examples=[0])

    @field_validator("style_blend", mode="before")
    @classmethod
    def _split_commas(cls, value: Any) -> Any:
        """`0.7,0.3` in one field, or the field repeated: both are a list of weights."""
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            return value
        weights: list[Any] = []
        for item in value:
            if isinstance(item, str):
                weights += [part.strip() for part in item.split(",") if part.strip()]
            else:
                weights.append(item)
        return weights

    @field_validator("style_blend")
    @classmethod
    def _positive_sum(cls, value: list[float] | None) -> list[float] | None:
        if not value:  # an empty field (a cleared form input): not given
            return None
        if sum(value) <= 0:
            raise ValueError("the weights must have a positive sum")
        return value or None

    def echo(self) -> dict[str, Any]:
        """The parameters alone (also for subclasses that add uploads, like the API's form)."""
        return self.model_dump(include=set(StyleParams.model_fields))

    def form_fields(self) -> dict[str, str]:
        """The parameters that differ from the defaults, as multipart form fields."""
        fields = {k: v for k, v in self.echo().items() if v != StyleParams.model_fields[k].default}
        if "style_blend" in fields:
            fields["style_blend"] = ",".join(f"{w:g}" for w in fields["style_blend"])
        return {name: str(value) for name, value in fields.items()}


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
    # No upper bound here: the service's, `ATELIER_MAX_IMAGES_PER_REQUEST`, is the one a
    # client meets (a fixed 1024 here answered n = 1025 with "<= 1024" on a server that
    # allows 64); the OpenAPI document shows the configured one (app/main.py).
    n: int = Field(
        1, ge=1,
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
        examples=[2.0],
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
                                     examples=[2.0])
    format: InterpolationFormat = Field(
        InterpolationFormat.webp,
        description="`webp` or `gif`: an animation; `png` or `jpeg`: a grid of the frames.",
        examples=["webp"],
    )
    frame_ms: int = Field(100, ge=20, le=5000, description="Duration of one animation frame.",
                          examples=[100])
