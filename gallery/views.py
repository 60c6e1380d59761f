from __future__ import annotations

from django.contrib import messages
from django.contrib.auth import login
from django.contrib.auth.decorators import login_not_required
from django.http import FileResponse, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils.cache import patch_cache_control
from django.utils.text import slugify
from django.views.decorators.http import require_GET, require_http_methods, require_POST
from django_htmx.http import reswap, retarget

from gallery import tasks
from gallery.forms import GenerationForm, SignupForm
from gallery.models import Generation, Image

PAGE_SIZE = 24
MAX_WATCHED = 100


def _get_generation_for_user(request: HttpRequest, pk: int) -> Generation:
    return get_object_or_404(Generation.objects.owned_by(request.user), pk=pk)


def _get_image_for_user(request: HttpRequest, pk: int) -> Image:
    return get_object_or_404(Image.objects.owned_by(request.user), pk=pk)


def _pending_ids(user) -> list[int]:
    return list(
        Generation.objects.owned_by(user).pending().values_list("pk", flat=True)[:MAX_WATCHED]
    )


def _gallery_context(request: HttpRequest, form: GenerationForm) -> dict:
    generations = list(
        Generation.objects.owned_by(request.user).prefetch_related("images")[: PAGE_SIZE + 1]
    )
    more = len(generations) > PAGE_SIZE
    generations = generations[:PAGE_SIZE]
    return {
        "form": form,
        "generations": generations,
        "next_cursor": generations[-1].pk if more else None,
        "pending_ids": [g.pk for g in generations if g.is_pending],
    }


@login_not_required
@require_http_methods(["GET", "POST"])
def signup(request: HttpRequest) -> HttpResponse:
    if request.user.is_authenticated:
        return redirect("gallery:index")
    form = SignupForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        user = form.save()
        login(request, user, backend="django.contrib.auth.backends.ModelBackend")
        messages.success(request, f"Welcome, {user.username}! Describe an image to begin.")
        return redirect("gallery:index")
    return render(request, "registration/signup.html", {"form": form})


@require_GET
def index(request: HttpRequest) -> HttpResponse:
    return render(request, "gallery/index.html", _gallery_context(request, GenerationForm()))


@require_POST
def create(request: HttpRequest) -> HttpResponse:
    form = GenerationForm(request.POST)
    if not form.is_valid():
        if request.htmx:
            response = render(request, "gallery/index.html#generate-form", {"form": form})
            return reswap(retarget(response, "#generate-form"), "outerHTML")
        # Without htmx the whole page comes back with the prompt and the messages in place.
        context = _gallery_context(request, form)
        return render(request, "gallery/index.html", context, status=400)
    generations = form.save_for(request.user)
    tasks.wake_submission()
    if not request.htmx:
        return redirect("gallery:index")
    fresh = GenerationForm(initial={k: form.cleaned_data[k] for k in form.Meta.fields[1:]})
    context = {
        "generations": generations,
        "form": fresh,
        "pending_ids": _pending_ids(request.user),
    }
    return render(request, "gallery/index.html#created", context)


@require_GET
def updates(request: HttpRequest) -> HttpResponse:
    """One request refreshes every pending card on the page (out-of-band swaps)."""
    ids = [int(v) for v in request.GET.get("ids", "").split(",") if v.isdigit()][:MAX_WATCHED]
    generations = list(
        Generation.objects.owned_by(request.user).filter(pk__in=ids).prefetch_related("images")
    )
    context = {
        "generations": generations,
        "pending_ids": [g.pk for g in generations if g.is_pending],
    }
    return render(request, "gallery/index.html#updates", context)


@require_POST
def retry(request: HttpRequest, pk: int) -> HttpResponse:
    generation = _get_generation_for_user(request, pk)
    if generation.retry():
        tasks.wake_submission()
    if not request.htmx:
        return redirect("gallery:index")
    context = {"generation": generation, "pending_ids": _pending_ids(request.user)}
    return render(request, "gallery/index.html#retried", context)


def _file_response(image: Image, field: str, *, download: bool) -> FileResponse:
    if field == "thumbnail":
        response = FileResponse(image.thumbnail.open("rb"), content_type="image/webp")
    else:
        name = slugify(image.generation.prompt[:60]) or "image"
        response = FileResponse(
            image.file.open("rb"),
            content_type=image.content_type,
            as_attachment=download,
            filename=f"banana-{name}-{image.generation_id}-{image.index + 1}.{image.extension}",
        )
    response["X-Content-Type-Options"] = "nosniff"
    # Private: a shared cache must never hand one user's image to another.
    patch_cache_control(response, private=True, max_age=86400)
    return response


@require_GET
def image_file(request: HttpRequest, pk: int) -> FileResponse:
    image = _get_image_for_user(request, pk)
    return _file_response(image, "file", download="download" in request.GET)


@require_GET
def image_thumbnail(request: HttpRequest, pk: int) -> FileResponse:
    return _file_response(_get_image_for_user(request, pk), "thumbnail", download=False)
