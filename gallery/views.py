from __future__ import annotations

from allauth.account.adapter import get_adapter
from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_not_required
from django.db.models import Exists, OuterRef
from django.db.models.fields.files import FieldFile
from django.http import (
    FileResponse,
    Http404,
    HttpRequest,
    HttpResponse,
    HttpResponseRedirect,
    StreamingHttpResponse,
)
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.cache import patch_cache_control
from django.utils.http import (
    content_disposition_header,
    url_has_allowed_host_and_scheme,
    urlencode,
)
from django.utils.translation import ngettext
from django.views.decorators.http import require_GET, require_http_methods, require_POST
from django_htmx.http import reswap, retarget

from accounts.models import Preferences
from gallery import export, tasks
from gallery.context_processors import absolute_url
from gallery.forms import (
    BulkActionForm,
    CollectForm,
    CollectionForm,
    GalleryFilterForm,
    GenerationForm,
    SelectionForm,
    ShareLinkForm,
    ShareLinkOptionsForm,
    SharePasswordForm,
    parse_id,
    parse_ids,
)
from gallery.models import (
    AlreadyPosted,
    Collection,
    CollectionItem,
    GalleryCounts,
    Generation,
    GenerationQuerySet,
    Image,
    ImageQuerySet,
    LimitReached,
    ShareLink,
    covers,
    is_link_unfurler,
    wait_words,
)
from gallery.provenance import Provenance

PAGE_SIZE = 24
MAX_WATCHED = 100
# "1000+ of 100000 shown": a filter's matches are counted this far and no further, so that the
# count costs the same in a gallery of any size.
MAX_COUNTED = 1000
SETTINGS_FIELDS = ["aspect_ratio", "resolution", "output_format"]


def _get_generation_for_user(request: HttpRequest, pk: int) -> Generation:
    return get_object_or_404(Generation.objects.owned_by(request.user), pk=pk)


def _get_image_for_user(request: HttpRequest, pk: int) -> Image:
    return get_object_or_404(
        Image.objects.owned_by(request.user).select_related("generation"), pk=pk
    )


def _get_collection_for_user(request: HttpRequest, pk: int) -> Collection:
    return get_object_or_404(Collection.objects.owned_by(request.user), pk=pk)


def _get_active_share_link(token: str) -> ShareLink | None:
    links = ShareLink.objects.active().select_related("image__generation", "collection")
    return links.filter(token=token).first()


def _next_url(request: HttpRequest, default: str) -> str:
    """Where to go back to after a POST: the form's `next` if it is a path on this site (a
    bare word would be taken for a view's name by `redirect`)."""
    target = request.POST.get("next", "")
    safe = target.startswith("/") and url_has_allowed_host_and_scheme(
        target, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    )
    return target if target and safe else default


def _pending_ids(user) -> list[int]:
    return list(
        Generation.objects.owned_by(user).pending().values_list("pk", flat=True)[:MAX_WATCHED]
    )


def _next_page_url(request: HttpRequest, more: bool, last: int) -> str:
    """The next page's URL (the same query, a keyset cursor), or none after the last."""
    if not more:
        return ""
    query = {k: v for k, v in request.GET.items() if k != "before"}
    return "?" + urlencode({**query, "before": last})


def _gallery_page(
    request: HttpRequest,
    filters: GalleryFilterForm,
    generations: GenerationQuerySet,
    rows: int | None = None,
    newest: list[int] | None = None,
) -> dict:
    """One page of a grid (the gallery's or a collection's), keyset-paged on the id so its
    cost stays flat; `rows`: how many generations `generations` holds, if known (for the
    search); `newest`: the ids of what the filters match, newest first, if they were read
    already (at least a page and one more, or all)."""
    if newest is None:
        generations = filters.filter(generations, rows).before(filters.cursor())
    else:
        generations = Generation.objects.filter(pk__in=newest[: PAGE_SIZE + 1]).order_by("-id")
    page = list(generations.prefetch_related("images")[: PAGE_SIZE + 1])
    more = len(page) > PAGE_SIZE
    page = page[:PAGE_SIZE]
    return {
        "generations": page,
        "next_url": _next_page_url(request, more, page[-1].pk if page else 0),
        "pending_ids": [g.pk for g in page if g.is_pending],
    }


def _matching(
    filters: GalleryFilterForm, generations: GenerationQuerySet, counts: dict[str, int]
) -> tuple[str, list[int] | None]:
    """How many generations the filters match, for "8 of 65 shown": a counter when it is the
    same thing (one status, or the favourites), else counted up to MAX_COUNTED; and the ids
    it counted, newest first, if it did.

    The ids rather than a count, because the first page is among them, and because asking
    for the newest MAX_COUNTED + 1 makes PostgreSQL read a search's few matches from the
    trigram index and sort them, where for one page it may walk the gallery back from the
    newest (the cheaper plan when matches are spread evenly, and a slow one when they
    happen to be old)."""
    if counter := filters.counter():
        return str(counts[counter]), None
    matching = filters.filter(generations, counts["total"])
    ids = list(matching.values_list("pk", flat=True)[: max(MAX_COUNTED, PAGE_SIZE) + 1])
    return (f"{MAX_COUNTED}+" if len(ids) > MAX_COUNTED else str(len(ids))), ids


def _grid_context(
    request: HttpRequest, generations: GenerationQuerySet, counts: dict[str, int]
) -> dict:
    """A grid page's filters, counters, first page and the select bar's collections."""
    filters = GalleryFilterForm(request.GET)
    shown, newest = _matching(filters, generations, counts) if filters.is_filtered else (None, None)
    if filters.cursor() is not None:
        newest = None  # a later page: not among the newest
    return {
        "filters": filters,
        "counts": counts,
        "shown": shown,
        "collect_form": CollectForm(owner=request.user),
        **_gallery_page(request, filters, generations, counts["total"], newest),
    }


def _gallery_context(request: HttpRequest, form: GenerationForm) -> dict:
    generations = Generation.objects.owned_by(request.user)
    return {"form": form, **_grid_context(request, generations, GalleryCounts.of(request.user))}


def _counts_for(request: HttpRequest, collection: str) -> dict[str, int]:
    """The counters of the page a request came from: the gallery's (kept per user), or one
    collection's (counted over its items; a collection of someone else's counts nothing)."""
    pk = parse_id(collection)
    if pk is None:
        return GalleryCounts.of(request.user)
    generations = Generation.objects.owned_by(request.user)
    return generations.filter(collection_items__collection_id=pk).counts()


def _remix_initial(request: HttpRequest) -> dict:
    """Prefill the form from ?remix=<id>: the same prompt and settings as that generation."""
    remix = parse_id(request.GET.get("remix", ""))
    if remix is None:
        return {}
    generation = _get_generation_for_user(request, remix)
    return {name: getattr(generation, name) for name in ["prompt", *SETTINGS_FIELDS]}


def _client_address(request: HttpRequest) -> str:
    """The client's address as the sign-in limits count it (TRUSTED_PROXY_COUNT)."""
    return get_adapter(request).get_client_ip(request)


@require_GET
def index(request: HttpRequest) -> HttpResponse:
    if request.htmx and "before" in request.GET:
        # Infinite scroll: the next page of cards and the loader for the one after.
        rows = GalleryCounts.of(request.user)["total"]
        filters = GalleryFilterForm(request.GET)
        page = _gallery_page(request, filters, Generation.objects.owned_by(request.user), rows)
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
        "counts": GalleryCounts.of(request.user),
    }
    return render(request, "gallery/index.html#created", context)


@require_GET
def updates(request: HttpRequest) -> HttpResponse:
    """One request refreshes every pending card on the page (out-of-band swaps)."""
    ids = parse_ids(request.GET.getlist("ids"), limit=MAX_WATCHED)
    generations = list(
        Generation.objects.owned_by(request.user).filter(pk__in=ids).prefetch_related("images")
    )
    pending_ids = [g.pk for g in generations if g.is_pending]
    collection = request.GET.get("collection", "")
    context = {"generations": generations, "pending_ids": pending_ids, "in_collection": collection}
    if len(pending_ids) < len(generations):
        # Something finished since the last refresh: the counters changed too.
        context["counts"] = _counts_for(request, collection)
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
        **_picker_context(request, generation),
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
            "in_collection": request.POST.get("collection", ""),
            "counts": _counts_for(request, request.POST.get("collection", "")),
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
    if action == "export":
        images = Image.objects.owned_by(request.user).filter(generation__in=selected)
        name = f"banana-gallery-selection-{timezone.localdate().isoformat()}.zip"
        empty = "None of the selected images is finished yet: there is nothing to download."
        return _export(request, images, name, empty, _next_url(request, reverse("gallery:index")))
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


def _export(
    request: HttpRequest,
    images: ImageQuerySet,
    filename: str,
    empty: str,
    back: str,
    about: dict | None = None,
) -> HttpResponse:
    if not images.exists():
        messages.info(request, empty)
        return redirect(back)
    provenance = Preferences.file_provenance_of(request.user.pk)
    try:
        return export.zip_response(
            request.user, images, filename=filename, provenance=provenance, about=about
        )
    except export.ExportRunning as running:
        messages.error(request, running.message)
        return redirect(back)


@require_GET
def export_all(request: HttpRequest) -> HttpResponse:
    """Every image of the user's gallery in one zip, with its manifest.json."""
    name = f"banana-gallery-{timezone.localdate().isoformat()}.zip"
    empty = "Your gallery has no finished images yet: there is nothing to download."
    images = Image.objects.owned_by(request.user)
    return _export(request, images, name, empty, reverse("accounts:account"))


# Collections


def _picker_context(request: HttpRequest, generation: Generation) -> dict:
    """The user's collections, each marked whether it holds this generation (one query)."""
    holds = CollectionItem.objects.filter(collection=OuterRef("pk"), generation=generation)
    collections = Collection.objects.owned_by(request.user).annotate(holds=Exists(holds))
    return {"picker_collections": list(collections), "picker_form": CollectForm(owner=request.user)}


def _form_errors(*forms) -> list[str]:
    return [errors[0] for form in forms if not form.is_valid() for errors in form.errors.values()]


@require_http_methods(["GET", "POST"])
def collection_list(request: HttpRequest) -> HttpResponse:
    form = CollectionForm(request.POST or None, owner=request.user)
    if request.method == "POST" and form.is_valid() and (collection := form.save_unique()):
        messages.success(
            request,
            f"Made the collection “{collection.name}”. Select images in the gallery and choose "
            "“Add to collection”.",
        )
        return redirect(collection)
    collections = list(Collection.objects.owned_by(request.user).with_counts())
    cover = covers(collections)
    for collection in collections:
        collection.cover = cover.get(collection.pk)
    context = {"collections": collections, "form": form}
    return render(request, "gallery/collections.html", context, status=400 if form.errors else 200)


@require_GET
def collection_detail(request: HttpRequest, pk: int) -> HttpResponse:
    collection = _get_collection_for_user(request, pk)
    generations = collection.gallery()
    if request.htmx and "before" in request.GET:
        page = _gallery_page(request, GalleryFilterForm(request.GET), generations)
        context = {**page, "next_page": True, "in_collection": collection.pk}
        return render(request, "gallery/index.html#page", context)
    links = list(collection.share_links.all())
    context = {
        **_grid_context(request, generations, generations.counts()),
        "collection": collection,
        "in_collection": collection.pk,
        "share_form": ShareLinkForm(),
        "links": links,
        "active_links": sum(link.is_active for link in links),
    }
    return render(request, "gallery/collection.html", context)


@require_GET
def collection_export(request: HttpRequest, pk: int) -> HttpResponse:
    """The collection's images in one zip, with its manifest.json (as export_all)."""
    collection = _get_collection_for_user(request, pk)
    images, name, about = export.of_collection(collection)
    empty = f"“{collection.name}” has no finished images yet: there is nothing to download."
    return _export(request, images, name, empty, collection.get_absolute_url(), about)


@require_http_methods(["GET", "POST"])
def collection_edit(request: HttpRequest, pk: int) -> HttpResponse:
    collection = _get_collection_for_user(request, pk)
    form = CollectionForm(request.POST or None, instance=collection, owner=request.user)
    if request.method == "POST" and form.is_valid() and form.save_unique():
        messages.success(request, "Saved the collection's name and description.")
        return redirect(collection)
    context = {"collection": collection, "form": form}
    status = 400 if form.errors else 200
    return render(request, "gallery/collection_edit.html", context, status=status)


@require_http_methods(["GET", "POST"])
def collection_delete(request: HttpRequest, pk: int) -> HttpResponse:
    collection = _get_collection_for_user(request, pk)
    if request.method == "POST":
        collection.delete()
        messages.success(
            request, f"Deleted the collection “{collection.name}”. Its images stay in your gallery."
        )
        return redirect("gallery:collections")
    count = collection.items.count()
    return render(
        request, "gallery/collection_delete.html", {"collection": collection, "count": count}
    )


@require_POST
def collection_add(request: HttpRequest) -> HttpResponse:
    """Put the selected generations in a collection (a new one if named): the select bar."""
    selection = SelectionForm(request.POST, queryset=Generation.objects.owned_by(request.user))
    form = CollectForm(request.POST, owner=request.user)
    back = _next_url(request, reverse("gallery:index"))
    if errors := _form_errors(selection, form):
        if request.htmx:
            return render(request, "gallery/index.html#collected", {"error": errors[0]})
        for error in errors:
            messages.error(request, error)
        return redirect(back)
    collection, _ = form.collection_for()
    selected = selection.selected()
    total = selected.count()
    added = collection.add(selected)
    text = ngettext(
        "Added %(n)d image to “%(name)s”.", "Added %(n)d images to “%(name)s”.", added
    ) % {"n": added, "name": collection.name}
    if total > added:
        already = total - added
        text += " " + ngettext("%(n)d was in it already.", "%(n)d were in it already.", already) % {
            "n": already
        }
    if not request.htmx:
        messages.success(request, text)
        return redirect(back)
    context = {
        "status": text,
        "picked": collection,
        # The picker's list gains a collection made here, and its name field empties; on a
        # collection's page it still leaves that collection out.
        "collect_form": CollectForm(owner=request.user),
        "in_collection": parse_id(request.POST.get("in_collection", "")),
    }
    return render(request, "gallery/index.html#collected", context)


@require_POST
def collection_remove(request: HttpRequest, pk: int) -> HttpResponse:
    """Take the selected generations out of the collection; they stay in the gallery."""
    collection = _get_collection_for_user(request, pk)
    selection = SelectionForm(request.POST, queryset=collection.gallery())
    if errors := _form_errors(selection):
        if request.htmx:
            return render(request, "gallery/index.html#collected", {"error": errors[0]})
        messages.error(request, errors[0])
        return redirect(collection)
    ids = list(selection.selected().values_list("pk", flat=True))
    removed = collection.remove(collection.gallery().filter(pk__in=ids))
    text = ngettext(
        "Took %(n)d image out of “%(name)s”; it stays in your gallery.",
        "Took %(n)d images out of “%(name)s”; they stay in your gallery.",
        removed,
    ) % {"n": removed, "name": collection.name}
    if not request.htmx:
        messages.success(request, text)
        return redirect(_next_url(request, collection.get_absolute_url()))
    context = {
        "status": text,
        "removed_ids": ids,
        "counts": collection.gallery().counts(),
    }
    return render(request, "gallery/index.html#collected", context)


@require_http_methods(["GET", "POST"])
def generation_collections(request: HttpRequest, pk: int) -> HttpResponse:
    """The collections one generation is in, to add it to one (or a new one) or take it out:
    a page of its own without JavaScript, a panel in the viewer and on the detail page.
    `in_collection`: the collection whose page the viewer is over, if any; taken out of it, the
    generation's tile leaves that page's grid (out of band) and its counters follow."""
    generation = _get_generation_for_user(request, pk)
    in_collection = parse_id(
        request.POST.get("in_collection") or request.GET.get("in_collection", "")
    )
    status = error = ""
    left = None
    if request.method == "POST":
        form = CollectForm(request.POST, owner=request.user)
        if errors := _form_errors(form):
            error = errors[0]
        else:
            collection, _ = form.collection_for()
            one = Generation.objects.filter(pk=generation.pk)
            if request.POST.get("remove"):
                collection.remove(one)
                status = f"Taken out of “{collection.name}”."
                left = collection if collection.pk == in_collection else None
            else:
                collection.add(one)
                status = f"In “{collection.name}”."
        if not request.htmx:
            if error:
                messages.error(request, error)
            else:
                messages.success(request, status)
            return redirect(_next_url(request, generation.get_absolute_url()))
    context = {
        **_picker_context(request, generation),
        "generation": generation,
        "picker_status": status,
        "picker_error": error,
        "in_collection": in_collection,
        "left": left,
        "counts": left.gallery().counts() if left else None,
    }
    if request.htmx:
        return render(request, "gallery/collections_for.html#picker", context)
    return render(request, "gallery/collections_for.html", context)


@require_POST
def collection_share(request: HttpRequest, pk: int) -> HttpResponse:
    collection = _get_collection_for_user(request, pk)
    form = ShareLinkForm(request.POST)
    if form.is_valid():
        link = form.save_for(collection)
        messages.success(
            request,
            "Album link created. Anyone with the link can see the collection's images, "
            "including those you add later.",
        )
        return redirect(collection.get_absolute_url() + f"#link-{link.pk}")
    messages.error(request, f"No link was made: {form.error_text()}")
    return redirect(collection.get_absolute_url() + "#share")


# Sharing


@require_POST
def share_create(request: HttpRequest, pk: int) -> HttpResponse:
    image = _get_image_for_user(request, pk)
    form = ShareLinkForm(request.POST)
    if form.is_valid():
        link = form.save_for(image)
        messages.success(request, "Share link created. Anyone with the link can see the image.")
        return redirect(image.generation.get_absolute_url() + f"#link-{link.pk}")
    messages.error(request, f"No link was made: {form.error_text()}")
    return redirect(image.generation.get_absolute_url())


@require_GET
def share_list(request: HttpRequest) -> HttpResponse:
    links = ShareLink.objects.owned_by(request.user).select_related(
        "image__generation", "collection"
    )
    return render(request, "gallery/shares.html", {"links": links})


@require_POST
def share_revoke(request: HttpRequest, pk: int) -> HttpResponse:
    link = get_object_or_404(ShareLink.objects.owned_by(request.user), pk=pk)
    link.revoke()
    messages.success(request, "The link is revoked: it no longer opens for anyone.")
    return redirect(_next_url(request, reverse("gallery:shares")))


@require_POST
def share_edit(request: HttpRequest, pk: int) -> HttpResponse:
    """An existing link's options, from its row on the share list or a share panel: the row
    again for htmx, else back to the page with a message."""
    link = get_object_or_404(
        ShareLink.objects.owned_by(request.user).select_related("image__generation", "collection"),
        pk=pk,
    )
    form = ShareLinkOptionsForm(request.POST, link=link)
    if form.is_valid():
        form.save()
        if request.htmx:
            return render(
                request, "gallery/shares.html#link-options", {"link": link, "saved": True}
            )
        messages.success(request, "The link's options are saved.")
    elif request.htmx:
        context = {"link": link, "options_form": form}
        return render(request, "gallery/shares.html#link-options", context)
    else:
        messages.error(request, f"The options are not saved: {form.error_text()}")
    return redirect(_next_url(request, reverse("gallery:shares")))


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


# The share links this browser may open past their gate: the password typed in, or (for a
# link with a maximum of views) a view counted, so that its images still load on that page.
SHARE_UNLOCKED = "share_unlocked"
SHARE_SEEN = "share_seen"


def _remember(request: HttpRequest, key: str, value: int | str) -> None:
    values = request.session.get(key, [])
    if value not in values:
        # The newest few hundred are plenty for one browser, and keep the session small.
        request.session[key] = [*values, value][-300:]


def _is_unlocked(request: HttpRequest, link: ShareLink) -> bool:
    return not link.has_password or link.unlock_key in request.session.get(SHARE_UNLOCKED, [])


def _may_open(request: HttpRequest, link: ShareLink) -> bool:
    """Whether this browser may see the link's files: unlocked, and with a view left or one
    of its views counted already."""
    seen = link.pk in request.session.get(SHARE_SEEN, [])
    return _is_unlocked(request, link) and (seen or not link.is_used_up)


def _count_view(request: HttpRequest, link: ShareLink) -> bool:
    """Counts a page view, False when the link has none left. A chat app drawing a preview
    is not someone viewing the link: it takes nothing, but sees nothing of a used-up link."""
    if is_link_unfurler(request.headers.get("User-Agent", "")):
        return not link.is_used_up
    if not link.record_view():
        return False
    _remember(request, SHARE_SEEN, link.pk)
    return True


def _password_page(request: HttpRequest, link: ShareLink) -> HttpResponse:
    form = SharePasswordForm(request.POST if request.method == "POST" else None)
    status = 200
    if form.is_valid():
        try:
            if link.try_password(form.cleaned_data["password"], _client_address(request)):
                _remember(request, SHARE_UNLOCKED, link.unlock_key)
                return redirect(request.path)
            form.add_error("password", "That password is not right. Check it and try again.")
            status = 400
        except LimitReached as refused:
            form.add_error(None, refused.message)
            status = 429
    response = render(
        request, "gallery/share_password.html", {"link": link, "form": form}, status=status
    )
    if status == 429:
        response["Retry-After"] = str(link.password_wait(_client_address(request)))
    response = _public_headers(response)
    # Under "no-referrer" a browser posts the form with "Origin: null", which Django's CSRF
    # check refuses; "same-origin" still tells other sites nothing.
    response["Referrer-Policy"] = "same-origin"
    return response


@login_not_required
@require_http_methods(["GET", "POST"])
def share_page(request: HttpRequest, token: str) -> HttpResponse:
    link = _get_active_share_link(token)
    if link is None:
        return _share_gone(request)
    # Used up, the link opens no more, but the page counted last still pages its album.
    paging = link.is_album and request.htmx and _may_open(request, link)
    if link.is_used_up and not paging:
        return _share_gone(request)
    if not _is_unlocked(request, link):
        return _password_page(request, link)
    if request.method == "POST":
        return redirect(request.path)
    if link.is_album:
        return _album_page(request, link)
    if not _count_view(request, link):
        return _share_gone(request)
    image_url = absolute_url(request, reverse("share_image", args=[token]))
    context = {
        "link": link,
        "image": link.image,
        "generation": link.image.generation,
        "image_url": image_url,
        "download_url": reverse("share_image", args=[token]) + "?download=1",
        "page_url": absolute_url(request, request.path),
        "og_image": link.image,
        "og_image_url": image_url,
        "og_image_alt": link.image_alt,
    }
    return _public_headers(render(request, "gallery/share.html", context))


def _album_page(request: HttpRequest, link: ShareLink) -> HttpResponse:
    """An album link's page: the collection's images as they are now, newest first, paged
    like the gallery, each served through the link (album_image), nothing of the owner's."""
    images = link.album_images().select_related("generation")
    before = request.GET.get("before", "")
    if before.isdigit():
        images = images.filter(generation_id__lt=int(before))
    page = list(images[: PAGE_SIZE + 1])
    more = len(page) > PAGE_SIZE
    page = page[:PAGE_SIZE]
    context = {
        "link": link,
        "collection": link.collection,
        "images": page,
        "next_url": _next_page_url(request, more, page[-1].generation_id if page else 0),
    }
    if request.htmx and before:
        return _public_headers(render(request, "gallery/album.html#page", context))
    if not _count_view(request, link):
        return _share_gone(request)
    cover = page[0] if page else None
    context.update(
        {
            "count": link.album_images().count(),
            "page_url": absolute_url(request, request.path),
            "og_image": cover,
            "og_image_url": absolute_url(
                request, reverse("album_image", args=[link.token, cover.pk])
            )
            if cover
            else "",
            "og_image_alt": link.alt_for(cover) if cover else "",
        }
    )
    return _public_headers(render(request, "gallery/album.html", context))


def _public_file(
    file: FieldFile, content_type: str, filename: str, *, download: bool = False
) -> HttpResponse:
    """A file anyone holding a share link may see: a presigned redirect on S3, else the
    bytes; named by the link, never cached without asking again."""
    disposition = content_disposition_header(download, filename)
    response = _storage_redirect(file, content_type, disposition, cache_control="public, no-cache")
    if response is None:
        response = _file_response(file, content_type, filename=filename, download=download)
    return _public_headers(response)


def _preview_file(link: ShareLink, image: Image) -> HttpResponse:
    # The large thumbnail: sharp on a 2x screen, and still a fraction of the original.
    thumbnail = image.thumbnail_large or image.thumbnail
    name = link.file_name_for(image).rsplit(".", 1)[0] + ".webp"
    return _public_file(thumbnail, "image/webp", name)


def _refused_download(request: HttpRequest, link: ShareLink) -> HttpResponse | None:
    """The answer to `?download` on a preview-only link: no file, and a page that says so."""
    if "download" in request.GET and not link.allow_download:
        response = render(request, "gallery/share_no_download.html", status=403)
        return _public_headers(response)
    return None


@login_not_required
@require_GET
def share_image(request: HttpRequest, token: str) -> HttpResponse:
    """The image of a share link: the original (as an attachment with `?download`), or only
    the large preview when the owner does not allow downloads."""
    link = _get_active_share_link(token)
    if link is None or link.is_album or not _may_open(request, link):
        return _share_gone(request)
    if refused := _refused_download(request, link):
        return refused
    image = link.image
    if not link.allow_download:
        return _preview_file(link, image)
    download = "download" in request.GET
    if link.show_prompt and Preferences.file_provenance_of(image.generation.owner_id):
        # Shown on the page, so in the file too (without the task id, which is ours).
        response = _streamed(
            image, image.provenance(public=True), link.file_name, download=download
        )
        return _public_headers(response)
    # The file name is the link's (no hidden prompt in it), for the object store too.
    return _public_file(image.file, image.content_type, link.file_name, download=download)


def _album_image(request: HttpRequest, token: str, pk: int) -> tuple[ShareLink, Image] | None:
    """The image of an active album link this browser may open, if it is in the collection
    now: one taken out no longer opens through the link, at once."""
    link = _get_active_share_link(token)
    if link is None or not link.is_album or not _may_open(request, link):
        return None
    image = link.album_images().select_related("generation").filter(pk=pk).first()
    return (link, image) if image else None


@login_not_required
@require_GET
def album_image(request: HttpRequest, token: str, pk: int) -> HttpResponse:
    found = _album_image(request, token, pk)
    if found is None:
        return _share_gone(request)
    link, image = found
    if refused := _refused_download(request, link):
        return refused
    if not link.allow_download:
        return _preview_file(link, image)
    download = "download" in request.GET
    return _public_file(
        image.file, image.content_type, link.file_name_for(image), download=download
    )


@login_not_required
@require_GET
def album_thumbnail(request: HttpRequest, token: str, pk: int) -> HttpResponse:
    found = _album_image(request, token, pk)
    if found is None:
        return _share_gone(request)
    link, image = found
    return _preview_file(link, image)


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


def _private(response: StreamingHttpResponse) -> StreamingHttpResponse:
    response["X-Content-Type-Options"] = "nosniff"
    # A shared cache must never hand one user's image to another.
    patch_cache_control(response, private=True, max_age=86400)
    return response


def _file_response(
    file: FieldFile, content_type: str, *, filename: str, download: bool
) -> FileResponse:
    response = FileResponse(
        file.open("rb"), content_type=content_type, as_attachment=download, filename=filename
    )
    response["X-Content-Type-Options"] = "nosniff"
    return response


def _streamed(
    image: Image, about: Provenance, filename: str, *, download: bool
) -> StreamingHttpResponse:
    """The original with its provenance written in, streamed through this process from local
    disk or the bucket alike: a presigned URL could only hand out the bytes as stored."""
    stream = image.download(about)
    response = StreamingHttpResponse(stream.chunks, content_type=image.content_type)
    response["Content-Length"] = str(stream.size)
    response["Content-Disposition"] = content_disposition_header(download, filename)
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
    if download and Preferences.file_provenance_of(request.user.pk):
        response = _streamed(image, image.provenance(), image.download_name, download=True)
        # Not kept: the next download follows the owner's preference as it is then.
        patch_cache_control(response, private=True, no_cache=True)
        return response
    disposition = content_disposition_header(download, image.download_name)
    redirect = _private_redirect(image.file, image.content_type, disposition)
    return redirect or _private(
        _file_response(
            image.file, image.content_type, filename=image.download_name, download=download
        )
    )


@require_GET
def image_thumbnail(request: HttpRequest, pk: int) -> HttpResponse:
    return _thumbnail_response(_get_image_for_user(request, pk).thumbnail)


@require_GET
def image_thumbnail_large(request: HttpRequest, pk: int) -> HttpResponse:
    return _thumbnail_response(_get_image_for_user(request, pk).thumbnail_large)
