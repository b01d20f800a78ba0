"""`negotiate(accept, requested, allowed)`: an image format, None for JSON, or a 406."""

from __future__ import annotations

import pytest

from app.api.negotiation import negotiate
from app.api.problems import HttpProblem
from app.engines.imaging import ImageFormat

PNG, JPEG, WEBP, GIF = ImageFormat.PNG, ImageFormat.JPEG, ImageFormat.WEBP, ImageFormat.GIF
STILL = (PNG, JPEG, WEBP)
JSON = None


@pytest.mark.parametrize("accept", [None, "", "   "])
def test_no_accept_gives_the_requested_format_else_the_first_allowed(accept: str | None
                                                                     ) -> None:
    assert negotiate(accept, None, STILL) is PNG
    assert negotiate(accept, WEBP, STILL) is WEBP
    assert negotiate(accept, None, (WEBP, GIF)) is WEBP


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        ("image/jpeg;q=0.5, image/png;q=0.9", PNG),
        ("image/png;q=0.5, image/jpeg;q=0.9", JPEG),
        ("image/png;q=0.1, image/webp;q=0.2, application/json;q=0.15", WEBP),
        ("image/png;q=0.2, application/json;q=0.9", JSON),
        ("image/png; q=0.3 ,image/webp ; q=0.4", WEBP),  # optional whitespace
        ("image/png;q=0, image/jpeg", JPEG),  # q=0: not acceptable at all
        ("image/png;q=nonsense, image/jpeg;q=0.1", JPEG),  # a malformed q counts as 0
        ("IMAGE/WEBP", WEBP),  # media types are case-insensitive
    ],
)
def test_q_values_rank_the_candidates(accept: str, expected: ImageFormat | None) -> None:
    assert negotiate(accept, None, STILL) is expected


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        # the most specific matching range gives a type its q, whatever the order
        ("image/*;q=0.9, image/png;q=0.1", JPEG),
        ("image/png;q=0.1, image/*;q=0.9", JPEG),
        ("*/*;q=0.9, image/*;q=0.1, application/json;q=0.5", JSON),
        ("*/*;q=0.1, image/webp;q=0.5", WEBP),
        ("image/*;q=0, */*", JSON),
        ("image/*;q=0, image/webp", WEBP),
    ],
)
def test_the_most_specific_range_decides(accept: str, expected: ImageFormat | None) -> None:
    assert negotiate(accept, None, STILL) is expected


@pytest.mark.parametrize(
    ("accept", "allowed", "expected"),
    [
        ("*/*", STILL, PNG),
        ("*/*", (WEBP, GIF), WEBP),  # the endpoint's own preference order
        ("image/*", STILL, PNG),
        ("image/*", (GIF, PNG), GIF),
        ("application/*", STILL, JSON),
    ],
)
def test_wildcards_take_the_endpoint_order(
    accept: str, allowed: tuple[ImageFormat, ...], expected: ImageFormat | None
) -> None:
    assert negotiate(accept, None, allowed) is expected


def test_json_only_when_preferred_and_images_win_ties() -> None:
    assert negotiate("application/json", None, STILL) is JSON
    assert negotiate("application/json, image/png;q=0.99", None, STILL) is JSON
    assert negotiate("image/png, application/json", None, STILL) is PNG
    assert negotiate("application/json, image/png", None, STILL) is PNG
    assert negotiate("*/*", None, STILL) is PNG


def test_a_requested_format_is_the_only_image_candidate() -> None:
    assert negotiate("*/*", WEBP, STILL) is WEBP
    assert negotiate("image/*", JPEG, STILL) is JPEG
    # JSON with the requested format's data URLs
    assert negotiate("application/json", WEBP, STILL) is JSON
    assert negotiate("image/png, application/json;q=0.5", WEBP, STILL) is JSON
    with pytest.raises(HttpProblem) as refused:
        negotiate("image/png", WEBP, STILL)
    assert refused.value.status == 406
    assert "image/webp, application/json" in refused.value.detail
    assert "image/png, image/jpeg" not in refused.value.detail


@pytest.mark.parametrize(
    "accept", ["text/html", "image/gif", "text/*", "image/png;q=0, application/json;q=0",
               "*/*;q=0"])
def test_nothing_acceptable_is_a_406_listing_what_is_offered(accept: str) -> None:
    with pytest.raises(HttpProblem) as refused:
        negotiate(accept, None, STILL)
    problem = refused.value
    assert problem.status == 406
    assert problem.type == "urn:atelier:problem:not-acceptable"
    assert problem.title == "Not acceptable"
    assert "image/png, image/jpeg, image/webp, application/json" in problem.detail
    assert repr(accept) in problem.detail


def test_the_q_parameter_name_is_case_insensitive() -> None:
    """RFC 9110 §5.6.6: parameter names are case-insensitive, so `Q=0.1` is a weight."""
    assert negotiate("image/png;Q=0.1, image/jpeg;q=0.5", None, STILL) is JPEG
