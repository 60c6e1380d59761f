from __future__ import annotations

from allauth.account.adapter import get_adapter
from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_not_required
from django.db.models.fields.files import FieldFile
from django.http import FileResponse, Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils.cache import patch_cache_control
from django.utils.http import (
    content_disposition_header,
    url_has_allowed_host_and_scheme,
    urlencode,
)
from django.utils.translation import ngettext
from django.views.decorators.http import require_GET, require_http_methods, require_POST
from django_htmx.http import reswap, retarget

from gallery import tasks
from gallery.forms import (
    BulkActionForm,
    GalleryFilterForm,
    GenerationForm,
    ShareLinkForm,
)
from gallery.models import (
    AlreadyPosted,
    Generation,
    Image,
    LimitReached,
    ShareLink,
    wait_words,
)

PAGE_SIZE = 24
MAX_WATCHED = 100
SETTINGS_FIELDS = ["aspect_ratio", "resolution", "output_format"]


def _get_generation_for_user(request: HttpRequest, pk: int) -> Generation:
    return get_object_or_404(Generation.objects.owned_by(request.user), pk=pk)


def _get_image_for_user(request: HttpRequest, pk: int) -> Image:
    return get_object_or_404(
        Image.objects.owned_by(request.user).select_related("generation"), pk=pk
    )


def _get_active_share_link(token: str) -> ShareLink | None:
    return (
        ShareLink.objects.active().select_related("image__generation").filter(token=token).first()
    )


def _next_url(request: HttpRequest, default: str) -> str:
    """Where to go back to after a POST: the form's `next` if it is on this site."""
    target = request.POST.get("next", "")
    safe = url_has_allowed_host_and_scheme(
        target, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    )
    return target if target and safe else default


def _pending_ids(user) -> list[int]:
    return list(
        Generation.objects.owned_by(user).pending().values_list("pk", flat=True)[:MAX_WATCHED]
    )


def _gallery_page(request: HttpRequest, filters: GalleryFilterForm) -> dict:
    """One page of the gallery, keyset-paged on the id so its cost stays flat."""
    generations = filters.filter(Generation.objects.owned_by(request.user))
    if cursor := filters.cursor():
        generations = generations.filter(pk__lt=cursor)
    page = list(generations.prefetch_related("images")[: PAGE_SIZE + 1])
    more = len(page) > PAGE_SIZE
    page = page[:PAGE_SIZE]
    next_url = ""
    if more:
        query = {k: v for k, v in request.GET.items() if k != "before"}
        next_url = "?" + urlencode({**query, "before": page[-1].pk})
    return {
        "generations": page,
        "next_url": next_url,
        "pending_ids": [g.pk for g in page if g.is_pending],
    }


def _gallery_context(request: HttpRequest, form: GenerationForm) -> dict:
    filters = GalleryFilterForm(request.GET)
    mine = Generation.objects.owned_by(request.user)
    return {
        "form": form,
        "filters": filters,
        "counts": mine.counts(),
        # "8 of 65 shown" when a filter is on.
        "shown": filters.filter(mine).count() if filters.is_filtered else None,
        **_gallery_page(request, filters),
    }


def _remix_initial(request: HttpRequest) -> dict:
    """Prefill the form from ?remix=<id>: the same prompt and settings as that generation."""
    remix = request.GET.get("remix", "")
    if not remix.isdigit():
        return {}
    generation = _get_generation_for_user(request, int(remix))
    return {name: getattr(generation, name) for name in ["prompt", *SETTINGS_FIELDS]}


def _client_address(request: HttpRequest) -> str:
    """The client's address as the sign-in limits count it (TRUSTED_PROXY_COUNT)."""
    return get_adapter(request).get_client_ip(request)


@require_GET
def index(request: HttpRequest) -> HttpResponse:
    if request.htmx and "before" in request.GET:
        # Infinite scroll: the next page of cards and the loader for the one after.
        page = _gallery_page(request, GalleryFilterForm(request.GET))
        return render(request, "gallery/index.html#page", {**page, "next_page": True})
    form = GenerationForm(initial=_remix_initial(request))
    return render(request, "gallery/index.html", _gallery_context(request, form))


def _composer_again(
    request: HttpRequest, form: GenerationForm, already: Image | None = None
) -> HttpResponse:
    """The form back with the prompt as typed: with its errors, or with the image its owner
    already has of it (`already`)."""
    if request.htmx:
        context = {"form": form, "already": already}
        response = render(request, "gallery/index.html#generate-form", context)
        return reswap(retarget(response, "#generate-form"), "outerHTML")
    # Without htmx the whole page comes back with the prompt and the messages in place.
    context = {**_gallery_context(request, form), "already": already}
    return render(request, "gallery/index.html", context, status=200 if already else 400)


@require_POST
def create(request: HttpRequest) -> HttpResponse:
    form = GenerationForm(request.POST)
    if not form.is_valid():
        return _composer_again(request, form)
    if already := form.already_made(request.user):
        return _composer_again(request, form, already)
    try:
        generations = form.save_for(request.user, address=_client_address(request))
    except LimitReached as refused:
        form.add_error(None, refused.in_form)
        return _composer_again(request, form)
    except AlreadyPosted:
        # The same form again (a double click, a resubmit): answered as the first was.
        generations = form.posted_before(request.user)
    else:
        tasks.wake_submission()
    if not request.htmx:
        return redirect("gallery:index")
    context = {
        "generations": generations,
        "form": GenerationForm(initial={k: form.cleaned_data[k] for k in SETTINGS_FIELDS}),
        "pending_ids": _pending_ids(request.user),
        "counts": Generation.objects.owned_by(request.user).counts(),
    }
    return render(request, "gallery/index.html#created", context)


@require_GET
def updates(request: HttpRequest) -> HttpResponse:
    """One request refreshes every pending card on the page (out-of-band swaps)."""
    ids = [int(v) for v in request.GET.get("ids", "").split(",") if v.isdigit()][:MAX_WATCHED]
    generations = list(
        Generation.objects.owned_by(request.user).filter(pk__in=ids).prefetch_related("images")
    )
    pending_ids = [g.pk for g in generations if g.is_pending]
    context = {"generations": generations, "pending_ids": pending_ids}
    if len(pending_ids) < len(generations):
        # Something finished since the last refresh: the counters changed too.
        context["counts"] = Generation.objects.owned_by(request.user).counts()
    return render(request, "gallery/index.html#updates", context)


@require_POST
def retry(request: HttpRequest, pk: int) -> HttpResponse:
    generation = _get_generation_for_user(request, pk)
    refused = ""
    try:
        if generation.retry(address=_client_address(request)):
            tasks.wake_submission()
    except LimitReached as limit:
        refused = limit.message
    if not request.htmx:
        if refused:
            messages.error(request, refused)
        return redirect(_next_url(request, reverse("gallery:index")))
    # The card comes back, still failed with the reason it was not retried when refused.
    context = {
        "generation": generation,
        "refused": refused,
        "pending_ids": _pending_ids(request.user),
    }
    return render(request, "gallery/index.html#retried", context)


@require_POST
def rerun(request: HttpRequest, pk: int) -> HttpResponse:
    """A new generation with the same prompt and settings."""
    generation = _get_generation_for_user(request, pk)
    try:
        copy = generation.rerun(address=_client_address(request))
    except LimitReached as refused:
        messages.error(request, refused.message)
        return redirect(_next_url(request, generation.get_absolute_url()))
    tasks.wake_submission()
    messages.success(request, "Started again with the same prompt and settings.")
    return redirect(reverse("gallery:index") + f"#card-{copy.pk}")


@require_GET
def detail(request: HttpRequest, pk: int) -> HttpResponse:
    generation = _get_generation_for_user(request, pk)
    images = list(generation.images.prefetch_related("share_links"))
    context = {
        "generation": generation,
        "images": images,
        "share_form": ShareLinkForm(),
        "variations": list(generation.variations().prefetch_related("images")),
    }
    return render(request, "gallery/detail.html", context)


@require_http_methods(["GET", "POST"])
def delete(request: HttpRequest, pk: int) -> HttpResponse:
    generation = _get_generation_for_user(request, pk)
    if request.method == "POST":
        Generation.objects.filter(pk=generation.pk).delete_with_files()
        messages.success(request, "The image was deleted.")
        return redirect("gallery:index")
    return render(request, "gallery/confirm_delete.html", {"generations": [generation]})


@require_POST
def favorite(request: HttpRequest, pk: int) -> HttpResponse:
    generation = _get_generation_for_user(request, pk)
    generation.is_favorite = request.POST.get("favorite") == "1"
    generation.save(update_fields=["is_favorite", "updated_at"])
    if request.htmx:
        context = {
            "generation": generation,
            "labelled": "labelled" in request.POST,
            # The gallery's counters follow at once (an out-of-band swap).
            "favorite_changed": True,
            "counts": Generation.objects.owned_by(request.user).counts(),
        }
        return render(request, "gallery/index.html#favorite", context)
    return redirect(_next_url(request, generation.get_absolute_url()))


@require_POST
def bulk(request: HttpRequest) -> HttpResponse:
    """Favourite, unfavourite or delete several selected generations at once."""
    form = BulkActionForm(request.POST, queryset=Generation.objects.owned_by(request.user))
    if not form.is_valid():
        for errors in form.errors.values():
            messages.error(request, errors[0])
        return redirect("gallery:index")
    selected = form.selected()
    action = form.cleaned_data["action"]
    if action == "delete":
        if not form.cleaned_data["confirm"]:
            context = {
                "generations": list(selected),
                "bulk": True,
                "next": _next_url(request, reverse("gallery:index")),
            }
            return render(request, "gallery/confirm_delete.html", context)
        deleted = selected.delete_with_files()
        text = ngettext("Deleted %(n)d image.", "Deleted %(n)d images.", deleted)
        messages.success(request, text % {"n": deleted})
    else:
        updated = selected.update(is_favorite=action == "favorite")
        if action == "favorite":
            text = ngettext(
                "Added %(n)d image to your favourites.",
                "Added %(n)d images to your favourites.",
                updated,
            )
        else:
            text = ngettext(
                "Removed %(n)d image from your favourites.",
                "Removed %(n)d images from your favourites.",
                updated,
            )
        messages.success(request, text % {"n": updated})
    # Back to the gallery as it was: the same filter and search.
    return redirect(_next_url(request, reverse("gallery:index")))


# Sharing


@require_POST
def share_create(request: HttpRequest, pk: int) -> HttpResponse:
    image = _get_image_for_user(request, pk)
    form = ShareLinkForm(request.POST)
    if form.is_valid():
        link = form.save_for(image)
        messages.success(request, "Share link created. Anyone with the link can see the image.")
        return redirect(image.generation.get_absolute_url() + f"#link-{link.pk}")
    messages.error(request, "That expiry is not one of the choices.")
    return redirect(image.generation.get_absolute_url())


@require_GET
def share_list(request: HttpRequest) -> HttpResponse:
    links = ShareLink.objects.owned_by(request.user).select_related("image__generation")
    return render(request, "gallery/shares.html", {"links": links})


@require_POST
def share_revoke(request: HttpRequest, pk: int) -> HttpResponse:
    link = get_object_or_404(ShareLink.objects.owned_by(request.user), pk=pk)
    link.revoke()
    messages.success(request, "The link is revoked: it no longer opens for anyone.")
    return redirect(_next_url(request, reverse("gallery:shares")))


def _absolute(request: HttpRequest, path: str) -> str:
    # SITE_URL wins behind a proxy that does not pass the public host on.
    return (
        settings.SITE_URL.rstrip("/") + path
        if settings.SITE_URL
        else request.build_absolute_uri(path)
    )


def _public_headers(response: HttpResponse) -> HttpResponse:
    response["Referrer-Policy"] = "no-referrer"
    response["X-Robots-Tag"] = "noindex, nofollow"
    # Revoking must work at once, so nothing may keep a copy without asking again.
    patch_cache_control(response, no_cache=True, public=True)
    return response


@login_not_required
def rate_limited(request: HttpRequest, exception: Exception) -> HttpResponse:
    """What django-ratelimit shows for a limit that blocks a view (RATELIMIT_VIEW)."""
    context = {"wait": wait_words(60), "back": request.path}
    response = render(request, "429.html", context, status=429)
    response["Retry-After"] = "60"
    return response


def _share_gone(request: HttpRequest) -> HttpResponse:
    """What a stranger sees for a link that was revoked, has expired or never was: one and the
    same plain page, status 404. Rendered here rather than raised as Http404, so that it is
    this page under DEBUG too, not Django's debug page for developers."""
    return _public_headers(render(request, "gallery/share_gone.html", status=404))


@login_not_required
@require_GET
def share_page(request: HttpRequest, token: str) -> HttpResponse:
    link = _get_active_share_link(token)
    if link is None:
        return _share_gone(request)
    link.record_view()
    image_url = _absolute(request, reverse("share_image", args=[token]))
    context = {
        "link": link,
        "image": link.image,
        "generation": link.image.generation,
        "image_url": image_url,
        "page_url": _absolute(request, request.path),
    }
    return _public_headers(render(request, "gallery/share.html", context))


@login_not_required
@require_GET
def share_image(request: HttpRequest, token: str) -> HttpResponse:
    link = _get_active_share_link(token)
    if link is None:
        return _share_gone(request)
    image = link.image
    # The file name is the link's (no hidden prompt in it), for the object store too.
    disposition = content_disposition_header(False, link.file_name)
    response = _storage_redirect(
        image.file, image.content_type, disposition, cache_control="public, no-cache"
    )
    if response is None:
        response = _original_response(image, filename=link.file_name, download=False)
    return _public_headers(response)


# Image files


def _storage_redirect(
    file: FieldFile, content_type: str, disposition: str | None, cache_control: str
) -> HttpResponse | None:
    """On S3, a redirect to a short-lived presigned URL of the file, so that its bytes go from
    the object store to the browser without passing through Python; the store answers with
    this type, disposition and caching. None on a storage without URLs of its own (local
    disk), which the view answers itself.

    Only call this after the same checks as for serving the file: anyone holding the URL may
    fetch it until it expires (AWS_QUERYSTRING_EXPIRE)."""
    if settings.STORAGES["default"]["BACKEND"] != settings.S3_STORAGE:
        return None
    overrides = {"ResponseContentType": content_type, "ResponseCacheControl": cache_control}
    if disposition:
        overrides["ResponseContentDisposition"] = disposition
    response = HttpResponseRedirect(file.storage.url(file.name, parameters=overrides))
    response["X-Content-Type-Options"] = "nosniff"
    return response


def _private_redirect(
    file: FieldFile, content_type: str, disposition: str | None = None
) -> HttpResponse | None:
    """A redirect to the owner's file that their browser may keep while the URL it points
    at is still valid (it is signed for AWS_QUERYSTRING_EXPIRE seconds), and the file there
    for a day, as on local disk."""
    response = _storage_redirect(file, content_type, disposition, "private, max-age=86400")
    if response is not None:
        expire = settings.STORAGES["default"]["OPTIONS"]["querystring_expire"]
        patch_cache_control(response, private=True, max_age=expire // 2)
    return response


def _private(response: FileResponse) -> FileResponse:
    response["X-Content-Type-Options"] = "nosniff"
    # A shared cache must never hand one user's image to another.
    patch_cache_control(response, private=True, max_age=86400)
    return response


def _original_response(image: Image, *, filename: str, download: bool) -> FileResponse:
    response = FileResponse(
        image.file.open("rb"),
        content_type=image.content_type,
        as_attachment=download,
        filename=filename,
    )
    response["X-Content-Type-Options"] = "nosniff"
    return response


def _thumbnail_response(thumbnail: FieldFile) -> HttpResponse:
    if not thumbnail:
        raise Http404("This image has no thumbnail of that size yet.")
    redirect = _private_redirect(thumbnail, "image/webp")
    return redirect or _private(FileResponse(thumbnail.open("rb"), content_type="image/webp"))


@require_GET
def image_file(request: HttpRequest, pk: int) -> HttpResponse:
    image = _get_image_for_user(request, pk)
    download = "download" in request.GET
    disposition = content_disposition_header(download, image.download_name)
    redirect = _private_redirect(image.file, image.content_type, disposition)
    return redirect or _private(
        _original_response(image, filename=image.download_name, download=download)
    )


@require_GET
def image_thumbnail(request: HttpRequest, pk: int) -> HttpResponse:
    return _thumbnail_response(_get_image_for_user(request, pk).thumbnail)


@require_GET
def image_thumbnail_large(request: HttpRequest, pk: int) -> HttpResponse:
    return _thumbnail_response(_get_image_for_user(request, pk).thumbnail_large)
