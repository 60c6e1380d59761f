"""The JSON API for scripts, at /api/v1/ (django-ninja), with a personal token as a Bearer.

It is the web app again, not a second set of rules: a generation is checked by the same form
and made through the same `reserve` (limits and budget), the gallery list takes the same
filters and keyset cursor, and images are served by the owner's own view. Every error, from
a bad token to an unexpected exception, has one shape (ErrorOut).
"""

from __future__ import annotations

import logging
from datetime import datetime
from uuid import UUID

from allauth.account.adapter import get_adapter
from django import forms
from django.conf import settings
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import reverse
from django.utils.http import urlencode
from django_ratelimit.core import get_usage
from ninja import Field, NinjaAPI, Path, Query, Schema, Status
from ninja.errors import AuthenticationError, HttpError, ValidationError
from ninja.openapi.docs import DocsBase
from ninja.responses import codes_4xx
from ninja.security import HttpBearer
from pydantic import field_validator

from accounts.models import Approval, Preferences
from api.models import ApiToken
from gallery import export, provider, tasks, views
from gallery.forms import CollectionForm, GalleryFilterForm, GenerationForm
from gallery.models import (
    Collection,
    Generation,
    GenerationQuerySet,
    Image,
    LimitReached,
    wait_words,
)

logger = logging.getLogger(__name__)

# A refused generation's status by the limit that refused it: 429 for what passes again by
# itself in a while (a rate limit; images still on their way), 403 for an allowance used up
# until it renews (the month's budget, the day's images), which no retry loop should hammer.
LIMIT_STATUS = {
    "rate_limited": 429,
    "too_many_pending": 429,
    "monthly_budget": 403,
    "daily_limit": 403,
}
ERROR_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    422: "invalid",
    429: "rate_limited",
}
PAGE_SIZE_MAX = 100
# Generation ids in one request to add to a collection or take out of it.
IDS_MAX = 500
# Ids are 64-bit: a larger number is not found rather than an overflow in the database.
ID_MAX = 2**63 - 1


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        fields: dict[str, str] | None = None,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.fields = fields or {}
        self.retry_after = retry_after


class ErrorBody(Schema):
    code: str = Field(description="What went wrong, for scripts: not_found, invalid, …")
    message: str = Field(description="What went wrong and what to do, in words for people.")
    fields: dict[str, str] = Field(description="Per input field, what is wrong with it.")


class ErrorOut(Schema):
    error: ErrorBody


class TokenAuth(HttpBearer):
    def authenticate(self, request: HttpRequest, token: str) -> ApiToken | None:
        if not token:
            return None  # no token at all: AuthenticationError, "send one"
        found = ApiToken.objects.with_secret(token)
        if found is None:
            raise ApiError(
                401,
                "invalid_token",
                "That API token is not valid: copy it again, or make a new one under "
                "Account, API tokens.",
            )
        if found.is_revoked:
            raise ApiError(401, "token_revoked", "That API token was revoked; make a new one.")
        user = found.user
        if not user.is_active or Approval.status_of(user) != Approval.Status.APPROVED:
            raise ApiError(401, "account_inactive", "The account of that token cannot sign in.")
        _count_request(found)
        found.record_use()
        # The gallery's own views and querysets read the user from here.
        request.user = user
        return found


def _count_request(token: ApiToken) -> None:
    """The per-token request limit (RATELIMIT_API_TOKEN), on top of the user's own limits."""
    rate = settings.RATELIMIT_API_TOKEN
    if not rate:
        return
    usage = get_usage(
        None, group="api-token", key=lambda group, request: str(token.pk), rate=rate, increment=True
    )
    if usage is not None and usage["should_limit"]:
        wait = max(1, usage["time_left"])
        raise ApiError(
            429,
            "rate_limited",
            f"Too many requests with this token: at most {usage['limit']} are allowed in a "
            f"short time; try again in {wait_words(wait)}.",
            retry_after=wait,
        )


class VendoredSwagger(DocsBase):
    """Swagger UI from static/vendor/ (ninja's own page would load it from a CDN)."""

    def render_page(self, request: HttpRequest, api: NinjaAPI, **kwargs) -> HttpResponse:
        context = {"openapi_url": self.get_openapi_url(api, kwargs), "api": api}
        return render(request, "api/docs.html", context)


api = NinjaAPI(
    title="Banana Gallery API",
    version="1",
    description=(
        "Make images, follow them, list and download them, with a personal API token "
        "(Account, API tokens) sent as `Authorization: Bearer bnn_…`. Every error is "
        '`{"error": {"code": …, "message": …, "fields": {…}}}`.'
    ),
    urls_namespace="api-v1",
    auth=TokenAuth(),
    docs=VendoredSwagger(),
    docs_url="/docs",
)


def error_response(
    request: HttpRequest,
    status: int,
    code: str,
    message: str,
    fields: dict[str, str] | None = None,
    retry_after: int | None = None,
) -> HttpResponse:
    body = {"error": {"code": code, "message": message, "fields": fields or {}}}
    response = api.create_response(request, body, status=status)
    if status == 401:
        response["WWW-Authenticate"] = 'Bearer realm="api"'
    if retry_after is not None:
        response["Retry-After"] = str(retry_after)
    return response


@api.exception_handler(ApiError)
def _api_error(request: HttpRequest, exc: ApiError) -> HttpResponse:
    return error_response(request, exc.status, exc.code, exc.message, exc.fields, exc.retry_after)


@api.exception_handler(AuthenticationError)
def _unauthenticated(request: HttpRequest, exc: AuthenticationError) -> HttpResponse:
    # Only the Authorization header counts: a browser's session cookie is not a way in (see
    # the README's API section for why).
    return error_response(
        request,
        401,
        "unauthorized",
        "Send a personal API token: Authorization: Bearer bnn_… (make one under Account, "
        "API tokens).",
    )


@api.exception_handler(ValidationError)
def _invalid(request: HttpRequest, exc: ValidationError) -> HttpResponse:
    fields: dict[str, str] = {}
    for error in exc.errors:
        # ("body", "payload", "prompt") or ("query", "before"): the field is what follows.
        where = [str(part) for part in error.get("loc", ())[1:] if part != "payload"]
        name = where[-1] if where else "body"
        fields[name] = " ".join(filter(None, [fields.get(name), error["msg"]]))
    return error_response(request, 422, "invalid", "Some of the input is not valid.", fields)


@api.exception_handler(Http404)
def _not_found(request: HttpRequest, exc: Http404) -> HttpResponse:
    return error_response(request, 404, "not_found", "Not found among yours.")


@api.exception_handler(HttpError)
def _http_error(request: HttpRequest, exc: HttpError) -> HttpResponse:
    code = ERROR_CODES.get(exc.status_code, "error")
    return error_response(request, exc.status_code, code, str(exc))


@api.exception_handler(Exception)
def _unexpected(request: HttpRequest, exc: Exception) -> HttpResponse:
    logger.exception("API request failed: %s %s", request.method, request.path)
    return error_response(
        request,
        500,
        "server_error",
        "Something went wrong on our side; it is logged. Try again in a while.",
    )


def _form_invalid(form: forms.Form) -> ApiError:
    fields = {name: " ".join(errors) for name, errors in form.errors.items()}
    return ApiError(422, "invalid", "Some of the input is not valid.", fields)


def _absolute(request: HttpRequest, path: str) -> str:
    # SITE_URL wins behind a proxy that does not pass the public host on.
    if settings.SITE_URL:
        return settings.SITE_URL.rstrip("/") + path
    return request.build_absolute_uri(path)


def _get_generation_for_user(request: HttpRequest, pk: int) -> Generation:
    found = Generation.objects.owned_by(request.user).prefetch_related("images").filter(pk=pk)
    generation = found.first()
    if generation is None:
        raise ApiError(404, "not_found", f"You have no generation {pk}.")
    return generation


def _get_collection_for_user(request: HttpRequest, pk: int) -> Collection:
    found = Collection.objects.owned_by(request.user).with_counts().filter(pk=pk)
    collection = found.first()
    if collection is None:
        raise ApiError(404, "not_found", f"You have no collection {pk}.")
    return collection


def _own_image_id(request: HttpRequest, pk: int) -> int:
    """`pk` if it is one of the user's images. The gallery's view checks that too, with its
    own 404; this one says which image."""
    if not Image.objects.owned_by(request.user).filter(pk=pk).exists():
        raise ApiError(404, "not_found", f"You have no image {pk}.")
    return pk


# Schemas


def _choices(values: tuple[str, ...]) -> dict:
    # Checked by the gallery's form, not by the schema, so the messages are the form's.
    return {"enum": list(values)}


class GenerationIn(Schema):
    prompt: str = Field(
        description="What to draw.", json_schema_extra={"maxLength": provider.PROMPT_MAX_LENGTH}
    )
    aspect_ratio: str = Field("auto", json_schema_extra=_choices(provider.ASPECT_RATIOS))
    resolution: str = Field("1K", json_schema_extra=_choices(provider.RESOLUTIONS))
    output_format: str = Field("png", json_schema_extra=_choices(provider.OUTPUT_FORMATS))
    count: int = Field(1, description="Variations of the prompt, 1 to 4: each is one image.")


class ImageOut(Schema):
    id: int
    index: int
    width: int
    height: int
    bytes: int
    format: str
    content_type: str
    file_url: str = Field(description="The file (token needed); on S3 a redirect to it.")
    download_url: str = Field(description="The same as an attachment with its file name.")
    thumbnail_url: str


class TimingsOut(Schema):
    waiting: float | None = Field(description="Seconds in our queue and the service's.")
    rendering: float | None
    total: float | None


class GenerationOut(Schema):
    id: int
    prompt: str
    aspect_ratio: str
    resolution: str
    output_format: str
    status: str = Field(json_schema_extra=_choices(tuple(Generation.Status.values)))
    status_text: str = Field(description="The status in words, as the gallery shows it.")
    is_pending: bool
    is_favorite: bool
    fail_code: str
    fail_message: str
    post: UUID | None = Field(description="The post (1-4 variations) it was made in.")
    created_at: datetime
    queued_at: datetime
    submitted_at: datetime | None
    finished_at: datetime | None
    timings: TimingsOut
    web_url: str
    images: list[ImageOut]


class GenerationsOut(Schema):
    generations: list[GenerationOut]


class GalleryOut(Schema):
    generations: list[GenerationOut]
    next_cursor: int | None = Field(description="`before` for the next page; null at the end.")
    next_url: str | None


class GalleryQuery(Schema):
    q: str | None = Field(None, description="Words in the prompt.")
    status: str | None = Field(None, json_schema_extra=_choices(("pending", "done", "failed")))
    favorites: bool = False
    aspect_ratio: str | None = Field(None, json_schema_extra=_choices(provider.ASPECT_RATIOS))
    resolution: str | None = Field(None, json_schema_extra=_choices(provider.RESOLUTIONS))
    before: int | None = Field(
        None, ge=1, le=ID_MAX, description="The cursor: only generations older than it."
    )
    limit: int = Field(views.PAGE_SIZE, ge=1, le=PAGE_SIZE_MAX)


class CollectionIn(Schema):
    name: str = Field(json_schema_extra={"maxLength": 100})
    description: str = Field("", json_schema_extra={"maxLength": 1000})


class CollectionPatch(Schema):
    name: str | None = Field(None, description="A new name; left as it is if not given.")
    description: str | None = None


class CollectionOut(Schema):
    id: int
    name: str
    description: str
    item_count: int = Field(description="How many generations it holds.")
    created_at: datetime
    updated_at: datetime
    web_url: str


class CollectionsOut(Schema):
    collections: list[CollectionOut]


class GenerationIdsIn(Schema):
    generation_ids: list[int] = Field(
        min_length=1,
        max_length=IDS_MAX,
        description=f"Ids of your generations, at most {IDS_MAX}.",
        json_schema_extra={"items": {"type": "integer", "minimum": 1, "maximum": ID_MAX}},
    )

    @field_validator("generation_ids")
    @classmethod
    def _in_range(cls, ids: list[int]) -> list[int]:
        # Checked here rather than item by item, so that the error names the field.
        if any(not 1 <= pk <= ID_MAX for pk in ids):
            raise ValueError(f"Generation ids are whole numbers from 1 to {ID_MAX}.")
        return list(dict.fromkeys(ids))


class AddedOut(Schema):
    added: int = Field(description="How many were not in the collection yet.")
    item_count: int


class RemovedOut(Schema):
    removed: int = Field(description="How many were in the collection.")
    item_count: int


def _image_out(request: HttpRequest, image: Image) -> dict:
    file_url = _absolute(request, reverse("api-v1:image_file", args=[image.pk]))
    return {
        "id": image.pk,
        "index": image.index,
        "width": image.width,
        "height": image.height,
        "bytes": image.bytes,
        "format": image.format,
        "content_type": image.content_type,
        "file_url": file_url,
        "download_url": f"{file_url}?download=1",
        "thumbnail_url": _absolute(request, reverse("api-v1:image_thumbnail", args=[image.pk])),
    }


def _generation_out(request: HttpRequest, generation: Generation) -> dict:
    fields = ["id", "prompt", "aspect_ratio", "resolution", "output_format", "status"]
    fields += ["status_text", "is_pending", "is_favorite", "fail_code", "fail_message", "post"]
    fields += ["created_at", "queued_at", "submitted_at", "finished_at", "timings"]
    return {
        **{name: getattr(generation, name) for name in fields},
        "web_url": _absolute(request, generation.get_absolute_url()),
        "images": [_image_out(request, image) for image in generation.images.all()],
    }


def _gallery_out(
    request: HttpRequest, filters: GalleryQuery, generations: GenerationQuerySet
) -> dict:
    """One page of `generations` (the gallery's or a collection's) with the gallery's filters,
    newest first, keyset-paged on the id."""
    given = filters.dict(exclude={"limit"})
    filter_form = GalleryFilterForm({k: v for k, v in given.items() if v not in (None, False)})
    if not filter_form.is_valid():
        raise _form_invalid(filter_form)
    generations = filter_form.filter(generations).before(filter_form.cursor())
    page = list(generations.prefetch_related("images")[: filters.limit + 1])
    more = len(page) > filters.limit
    page = page[: filters.limit]
    next_cursor = page[-1].pk if more else None
    next_url = None
    if next_cursor:
        query = {k: v for k, v in request.GET.items() if k != "before"}
        query["before"] = next_cursor
        next_url = _absolute(request, f"{request.path}?{urlencode(query)}")
    return {
        "generations": [_generation_out(request, g) for g in page],
        "next_cursor": next_cursor,
        "next_url": next_url,
    }


# Generations

ERRORS = {codes_4xx: ErrorOut}


@api.post(
    "/generations",
    response={201: GenerationsOut, **ERRORS},
    tags=["generations"],
    url_name="create",
)
def create_generations(request: HttpRequest, payload: GenerationIn):
    """Make 1-4 images of a prompt, checked and limited as the gallery's form is: 422 for bad
    input, 429 for a rate limit or too many images on their way (with Retry-After when known),
    403 when the month's budget or the day's images are used up."""
    form = GenerationForm(payload.dict())
    if not form.is_valid():
        raise _form_invalid(form)
    address = get_adapter(request).get_client_ip(request)
    try:
        generations = form.save_for(request.user, address=address)
    except LimitReached as refused:
        raise ApiError(
            LIMIT_STATUS[refused.code], refused.code, refused.message, None, refused.retry_after
        ) from None
    tasks.wake_submission()
    return Status(201, {"generations": [_generation_out(request, g) for g in generations]})


@api.get("/generations", response={200: GalleryOut, **ERRORS}, tags=["generations"])
def list_generations(request: HttpRequest, filters: Query[GalleryQuery]):
    """The gallery, newest first, with its filters; page on with `before=next_cursor`."""
    return _gallery_out(request, filters, Generation.objects.owned_by(request.user))


@api.get(
    "/generations/{generation_id}",
    response={200: GenerationOut, **ERRORS},
    tags=["generations"],
    url_name="generation",
)
def get_generation(request: HttpRequest, generation_id: int = Path(..., ge=1, le=ID_MAX)):
    """One generation: its status, timings and images (poll this until `is_pending` is false)."""
    return _generation_out(request, _get_generation_for_user(request, generation_id))


@api.delete("/generations/{generation_id}", response={204: None, **ERRORS}, tags=["generations"])
def delete_generation(request: HttpRequest, generation_id: int = Path(..., ge=1, le=ID_MAX)):
    """Delete a generation with its images and share links, as the gallery does."""
    generation = _get_generation_for_user(request, generation_id)
    Generation.objects.filter(pk=generation.pk).delete_with_files()
    return Status(204, None)


# Images: served by the gallery's own views, so that S3's presigned redirects, the caching
# and the file names are the owner's, whichever way they are asked for.

FILE_RESPONSES = {
    "responses": {
        "200": {
            "description": "The file",
            "content": {
                "image/png": {"schema": {"type": "string", "format": "binary"}},
                "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
                "image/webp": {"schema": {"type": "string", "format": "binary"}},
            },
        },
        "302": {"description": "On S3: a redirect to a short-lived presigned URL of the file."},
    }
}


@api.get(
    "/images/{image_id}/file",
    response={**ERRORS},
    tags=["images"],
    url_name="image_file",
    openapi_extra=FILE_RESPONSES,
)
def image_file(
    request: HttpRequest, image_id: int = Path(..., ge=1, le=ID_MAX), download: str | None = None
):
    """The image file; with `download` set, as an attachment named after its prompt."""
    return views.image_file(request, _own_image_id(request, image_id))


@api.get(
    "/images/{image_id}/thumbnail",
    response={**ERRORS},
    tags=["images"],
    url_name="image_thumbnail",
    openapi_extra=FILE_RESPONSES,
)
def image_thumbnail(request: HttpRequest, image_id: int = Path(..., ge=1, le=ID_MAX)):
    """The image's WebP thumbnail, THUMBNAIL_HEIGHT pixels tall."""
    return views.image_thumbnail(request, _own_image_id(request, image_id))


# Collections: checked by the gallery's own form, so that a name is unique per owner whatever
# its case, and limited in length, with the same messages.


def _collection_out(request: HttpRequest, collection: Collection) -> dict:
    fields = ["id", "name", "description", "item_count", "created_at", "updated_at"]
    return {
        **{name: getattr(collection, name) for name in fields},
        "web_url": _absolute(request, collection.get_absolute_url()),
    }


def _own_generations(request: HttpRequest, ids: list[int]) -> GenerationQuerySet:
    """The user's generations of these ids; a 404 naming those that are not theirs, rather
    than leaving them out without a word."""
    generations = Generation.objects.owned_by(request.user).filter(pk__in=ids)
    found = set(generations.values_list("pk", flat=True))
    if missing := [pk for pk in ids if pk not in found]:
        listed = ", ".join(map(str, missing))
        word = "generation" if len(missing) == 1 else "generations"
        raise ApiError(404, "not_found", f"You have no {word} {listed}.")
    return generations


@api.get("/collections", response={200: CollectionsOut, **ERRORS}, tags=["collections"])
def list_collections(request: HttpRequest):
    """Your collections, by name, each with how many generations it holds."""
    collections = Collection.objects.owned_by(request.user).with_counts()
    return {"collections": [_collection_out(request, c) for c in collections]}


@api.post("/collections", response={201: CollectionOut, **ERRORS}, tags=["collections"])
def create_collection(request: HttpRequest, payload: CollectionIn):
    """Make a collection; 422 for a name that is empty, too long or one of yours already."""
    form = CollectionForm(payload.dict(), owner=request.user)
    if not form.is_valid() or not (collection := form.save_unique()):
        raise _form_invalid(form)
    return Status(201, _collection_out(request, _get_collection_for_user(request, collection.pk)))


@api.get(
    "/collections/{collection_id}",
    response={200: CollectionOut, **ERRORS},
    tags=["collections"],
    url_name="collection",
)
def get_collection(request: HttpRequest, collection_id: int = Path(..., ge=1, le=ID_MAX)):
    return _collection_out(request, _get_collection_for_user(request, collection_id))


@api.patch(
    "/collections/{collection_id}", response={200: CollectionOut, **ERRORS}, tags=["collections"]
)
def update_collection(
    request: HttpRequest, payload: CollectionPatch, collection_id: int = Path(..., ge=1, le=ID_MAX)
):
    """Rename a collection or change its description, checked as when it was made."""
    collection = _get_collection_for_user(request, collection_id)
    given = payload.dict(exclude_none=True)
    data = {"name": collection.name, "description": collection.description, **given}
    form = CollectionForm(data, instance=collection, owner=request.user)
    if not form.is_valid() or not form.save_unique():
        raise _form_invalid(form)
    return _collection_out(request, _get_collection_for_user(request, collection_id))


@api.delete("/collections/{collection_id}", response={204: None, **ERRORS}, tags=["collections"])
def delete_collection(request: HttpRequest, collection_id: int = Path(..., ge=1, le=ID_MAX)):
    """Delete a collection; its generations stay in your gallery."""
    _get_collection_for_user(request, collection_id).delete()
    return Status(204, None)


@api.get(
    "/collections/{collection_id}/generations",
    response={200: GalleryOut, **ERRORS},
    tags=["collections"],
)
def list_collection_generations(
    request: HttpRequest,
    filters: Query[GalleryQuery],
    collection_id: int = Path(..., ge=1, le=ID_MAX),
):
    """A collection's generations, newest first, with the gallery's filters and cursor."""
    collection = _get_collection_for_user(request, collection_id)
    return _gallery_out(request, filters, collection.gallery())


@api.post(
    "/collections/{collection_id}/generations",
    response={200: AddedOut, **ERRORS},
    tags=["collections"],
)
def add_to_collection(
    request: HttpRequest, payload: GenerationIdsIn, collection_id: int = Path(..., ge=1, le=ID_MAX)
):
    """Put generations in a collection; those in it already are counted out of `added`."""
    collection = _get_collection_for_user(request, collection_id)
    added = collection.add(_own_generations(request, payload.generation_ids))
    return {"added": added, "item_count": collection.items.count()}


@api.post(
    "/collections/{collection_id}/generations/remove",
    response={200: RemovedOut, **ERRORS},
    tags=["collections"],
)
def remove_from_collection(
    request: HttpRequest, payload: GenerationIdsIn, collection_id: int = Path(..., ge=1, le=ID_MAX)
):
    """Take generations out of a collection (a POST: a DELETE's body is dropped by some
    clients and proxies); they stay in your gallery."""
    collection = _get_collection_for_user(request, collection_id)
    removed = collection.remove(_own_generations(request, payload.generation_ids))
    return {"removed": removed, "item_count": collection.items.count()}


ZIP_RESPONSES = {
    "responses": {
        "200": {
            "description": "The zip, streamed as it is made: the images and a manifest.json.",
            "content": {"application/zip": {"schema": {"type": "string", "format": "binary"}}},
        }
    }
}


@api.get(
    "/collections/{collection_id}/export",
    response={**ERRORS},
    tags=["collections"],
    openapi_extra=ZIP_RESPONSES,
)
def export_collection(request: HttpRequest, collection_id: int = Path(..., ge=1, le=ID_MAX)):
    """The collection's images in one zip with a manifest.json, as its page's Download zip
    (an empty collection's has the manifest alone); 409 while another export of yours is
    still being downloaded."""
    collection = _get_collection_for_user(request, collection_id)
    images, filename, about = export.of_collection(collection)
    provenance = Preferences.file_provenance_of(request.user.pk)
    try:
        return export.zip_response(
            request.user, images, filename=filename, provenance=provenance, about=about
        )
    except export.ExportRunning as running:
        raise ApiError(409, "export_running", running.message) from None
