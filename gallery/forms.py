from __future__ import annotations

import uuid
from datetime import timedelta

from django import forms
from django.db import IntegrityError, transaction
from django.utils import timezone

from gallery import provider
from gallery.models import (
    Collection,
    Generation,
    GenerationQuerySet,
    Image,
    Post,
    ShareLink,
    request_fingerprint,
    reserve,
)

ASPECT_RATIO_LABELS = {
    "auto": "Auto (square)",
    "1:1": "1:1 square",
    "2:3": "2:3 portrait",
    "3:2": "3:2 landscape",
    "3:4": "3:4 portrait",
    "4:3": "4:3 landscape",
    "4:5": "4:5 portrait",
    "5:4": "5:4 landscape",
    "9:16": "9:16 tall",
    "16:9": "16:9 wide",
    "21:9": "21:9 cinema",
    "1:4": "1:4 banner, tall",
    "4:1": "4:1 banner, wide",
    "1:8": "1:8 strip, tall",
    "8:1": "8:1 strip, wide",
}


# The largest id a BigAutoField holds (a signed 64-bit integer, in PostgreSQL and SQLite alike).
MAX_ID = 2**63 - 1


def parse_id(value: str) -> int | None:
    """An id from a URL or a form, strictly: ASCII digits from 1 to MAX_ID, else None.
    str.isdigit() takes "²" and "١٢", which int() refuses or reads, and a database refuses a
    number past its integers: to this, all of them are simply no id."""
    if not (value.isascii() and value.isdigit()) or len(value) > len(str(MAX_ID)):
        return None
    number = int(value)
    return number if 1 <= number <= MAX_ID else None


def parse_ids(values: list[str], limit: int | None = None) -> list[int]:
    """The valid ids among `values` (comma-separated ones too), in order, at most `limit`."""
    ids = (parse_id(part) for value in values for part in value.split(","))
    return [number for number in ids if number is not None][:limit]


class IdConverter:
    """The `<id:pk>` path converter: an id as parse_id reads it. Anything else matches no URL,
    so it is not found (404) before any view runs."""

    regex = "[0-9]{1,19}"

    def to_python(self, value: str) -> int:
        number = parse_id(value)
        if number is None:
            raise ValueError(value)
        return number

    def to_url(self, value: int) -> str:
        return str(value)


def _choice_field(values: tuple[str, ...], labels: dict[str, str], initial: str, what: str):
    return forms.ChoiceField(
        choices=[(value, labels.get(value, value)) for value in values],
        initial=initial,
        error_messages={
            "required": f"Choose {what}.",
            "invalid_choice": f"“%(value)s” is not a valid {what}; choose one of "
            + ", ".join(values)
            + ".",
        },
    )


class GenerationForm(forms.ModelForm):
    prompt = forms.CharField(
        max_length=provider.PROMPT_MAX_LENGTH,
        widget=forms.Textarea(
            attrs={
                "rows": 1,
                "placeholder": "Describe an image: a banana astronaut above a neon city…",
            }
        ),
        error_messages={
            "required": "Write a prompt: describe the image you want.",
            "max_length": "The prompt is %(show_value)s characters long; the most the image "
            "service takes is %(limit_value)s. Shorten it and try again.",
        },
    )
    aspect_ratio = _choice_field(
        provider.ASPECT_RATIOS, ASPECT_RATIO_LABELS, "auto", "aspect ratio"
    )
    resolution = _choice_field(
        provider.RESOLUTIONS, {"1K": "1K (fast)", "2K": "2K", "4K": "4K (slow)"}, "1K", "resolution"
    )
    output_format = _choice_field(
        provider.OUTPUT_FORMATS, {"png": "PNG", "jpg": "JPEG"}, "png", "file format"
    )
    count = forms.TypedChoiceField(
        choices=[(n, str(n)) for n in range(1, 5)],
        coerce=int,
        initial=1,
        required=False,
        empty_value=1,
        label="Images",
        error_messages={"invalid_choice": "Ask for 1 to 4 images at a time."},
    )
    # A new random key in every rendered form: the same form sent twice is made once.
    key = forms.UUIDField(widget=forms.HiddenInput, initial=uuid.uuid4)
    # Set by "Generate again anyway": make it although the same image was made before.
    again = forms.BooleanField(required=False, widget=forms.HiddenInput)

    class Meta:
        model = Generation
        fields = ["prompt", "aspect_ratio", "resolution", "output_format"]

    def __init__(self, data=None, *args, **kwargs) -> None:
        if data is not None and not _is_uuid(data.get("key", "")):
            # A form rendered before there were keys (or a script's post) gets one of its own,
            # and so does the form rendered again after it: it is guarded from then on.
            data = data.copy()
            data["key"] = str(uuid.uuid4())
        super().__init__(data, *args, **kwargs)

    @property
    def fingerprint(self) -> str:
        return request_fingerprint(*(self.cleaned_data[name] for name in self.Meta.fields))

    def already_made(self, owner) -> Image | None:
        """The newest finished image of `owner` of this prompt and these settings, unless
        this is "Generate again anyway" or this form was sent already."""
        if self.cleaned_data["again"]:
            return None
        image = Image.objects.owned_by(owner).made_from(self.fingerprint).first()
        if image is None or self.was_posted(owner):
            return None
        return image

    def was_posted(self, owner) -> bool:
        return Post.objects.filter(owner=owner, key=self.cleaned_data["key"]).exists()

    def posted_before(self, owner) -> list[Generation]:
        """What the first sending of this form made (none once they are deleted)."""
        made = Generation.objects.owned_by(owner).filter(post=self.cleaned_data["key"])
        return list(made.order_by("id"))

    def save_for(self, owner, *, address: str | None) -> list[Generation]:
        """Create `count` generations of the same prompt and settings for `owner`, each
        counted against their limits (LimitReached when they do not allow them all), once per
        form key (AlreadyPosted when it was sent before)."""
        settings = {name: self.cleaned_data[name] for name in self.Meta.fields}
        count = self.cleaned_data["count"] or 1
        post = self.cleaned_data["key"]
        with reserve(owner, settings["resolution"], count, address=address, post=post):
            return [
                Generation.objects.create(owner=owner, post=post, **settings) for _ in range(count)
            ]


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(str(value))
    except ValueError:
        return False
    return True


class GalleryFilterForm(forms.Form):
    """The gallery's search box and filters, read from the query string."""

    q = forms.CharField(required=False, max_length=200, label="Search prompts")
    status = forms.ChoiceField(
        required=False,
        choices=[
            ("", "Any status"),
            ("pending", "In progress"),
            ("done", "Done"),
            ("failed", "Failed"),
        ],
    )
    favorites = forms.BooleanField(required=False, label="Favourites only")
    aspect_ratio = forms.ChoiceField(
        required=False,
        choices=[("", "Any shape")] + [(v, ASPECT_RATIO_LABELS[v]) for v in provider.ASPECT_RATIOS],
    )
    resolution = forms.ChoiceField(
        required=False, choices=[("", "Any size")] + [(v, v) for v in provider.RESOLUTIONS]
    )
    before = forms.IntegerField(
        required=False, min_value=1, max_value=MAX_ID, widget=forms.HiddenInput
    )

    def __init__(self, *args, **kwargs) -> None:
        # Its own ids: the composer on the same page has fields of the same names.
        kwargs.setdefault("auto_id", "filter_%s")
        super().__init__(*args, **kwargs)

    def filter(self, queryset: GenerationQuerySet, rows: int | None = None) -> GenerationQuerySet:
        """Apply the valid filters; a bad value is ignored rather than shown as an error.
        `rows`: how many generations the queryset holds, if known (for the search)."""
        data = self.cleaned_data if self.is_valid() else {}
        queryset = queryset.search(data.get("q", "").strip(), rows)
        queryset = queryset.with_status(data.get("status", ""))
        if data.get("favorites"):
            queryset = queryset.favorites()
        if data.get("aspect_ratio"):
            queryset = queryset.filter(aspect_ratio=data["aspect_ratio"])
        if data.get("resolution"):
            queryset = queryset.filter(resolution=data["resolution"])
        return queryset

    @property
    def is_filtered(self) -> bool:
        data = self.cleaned_data if self.is_valid() else {}
        return any(
            data.get(name) for name in ("q", "status", "favorites", "aspect_ratio", "resolution")
        )

    def counter(self) -> str:
        """The gallery counter (GalleryCounts.of) that is just what the filters pick, if one
        is: a status group alone, or the favourites alone; else ""."""
        data = self.cleaned_data if self.is_valid() else {}
        on = {
            name
            for name in ("q", "status", "favorites", "aspect_ratio", "resolution")
            if data.get(name)
        }
        if on == {"status"}:
            return data["status"]
        return "favorites" if on == {"favorites"} else ""

    def cursor(self) -> int | None:
        return self.cleaned_data.get("before") if self.is_valid() else None


EXPIRY_CHOICES = [
    ("", "Never expires"),
    ("1", "Expires in 1 hour"),
    ("24", "Expires in 1 day"),
    ("168", "Expires in 7 days"),
    ("720", "Expires in 30 days"),
]


class ShareLinkForm(forms.Form):
    show_prompt = forms.BooleanField(required=False, label="Show the prompt on the shared page")
    expires_in_hours = forms.TypedChoiceField(
        choices=EXPIRY_CHOICES, coerce=int, empty_value=None, required=False, label="Expiry"
    )
    # Asked the other way round, so that a form without the box (or an older page) keeps
    # the default: downloads allowed.
    preview_only = forms.BooleanField(
        required=False, label="Preview only: no download, the original is not offered"
    )
    max_views = forms.IntegerField(
        required=False,
        min_value=1,
        max_value=1_000_000,
        label="Maximum views",
        error_messages={"min_value": "A link needs at least 1 view; leave it empty for no limit."},
    )
    password = forms.CharField(
        required=False,
        max_length=128,
        strip=False,
        widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}),
        label="Password",
    )
    note = forms.CharField(required=False, max_length=200, label="Note (only you see it)")

    def save_for(self, target: Image | Collection) -> ShareLink:
        """A link to an image, or an album link to a collection, with the options chosen."""
        hours = self.cleaned_data["expires_in_hours"]
        kind = "collection" if isinstance(target, Collection) else "image"
        link = ShareLink(
            **{kind: target},
            show_prompt=self.cleaned_data["show_prompt"],
            expires_at=timezone.now() + timedelta(hours=hours) if hours else None,
            allow_download=not self.cleaned_data["preview_only"],
            max_views=self.cleaned_data["max_views"],
            note=self.cleaned_data["note"],
        )
        link.set_password(self.cleaned_data["password"])
        link.save()
        return link

    def error_text(self) -> str:
        return " ".join(message for errors in self.errors.values() for message in errors)


class ShareLinkOptionsForm(ShareLinkForm):
    """An existing link's options. Its expiry is kept unless another is chosen, its password
    unless a new one is typed or it is removed; its views so far count towards a new maximum."""

    expires_in_hours = forms.ChoiceField(
        choices=[("keep", "Keep its expiry"), *EXPIRY_CHOICES], required=False, label="Expiry"
    )
    password = forms.CharField(
        required=False,
        max_length=128,
        strip=False,
        widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}),
        label="New password",
    )
    remove_password = forms.BooleanField(required=False, label="Remove the password")

    def __init__(self, *args, link: ShareLink, **kwargs) -> None:
        initial = {
            "show_prompt": link.show_prompt,
            "expires_in_hours": "keep",
            "preview_only": not link.allow_download,
            "max_views": link.max_views,
            "note": link.note,
        }
        super().__init__(*args, initial=initial, **kwargs)
        self.link = link

    def clean(self) -> dict:
        data = super().clean()
        if data.get("password") and data.get("remove_password"):
            raise forms.ValidationError("Type a new password or remove it, not both.")
        return data

    def save(self) -> ShareLink:
        link, data = self.link, self.cleaned_data
        link.show_prompt = data["show_prompt"]
        link.allow_download = not data["preview_only"]
        link.max_views = data["max_views"]
        link.note = data["note"]
        # A form without the field (an older page) keeps the expiry too.
        expiry = data["expires_in_hours"] if "expires_in_hours" in self.data else "keep"
        if expiry != "keep":
            hours = int(expiry or 0)
            link.expires_at = timezone.now() + timedelta(hours=hours) if hours else None
        if data["password"] or data["remove_password"]:
            link.set_password(data["password"])
        link.save(
            update_fields=[
                "show_prompt",
                "allow_download",
                "max_views",
                "note",
                "expires_at",
                "password",
            ]
        )
        return link


class SharePasswordForm(forms.Form):
    password = forms.CharField(
        max_length=128,
        strip=False,
        widget=forms.PasswordInput(attrs={"autocomplete": "current-password", "autofocus": True}),
        error_messages={"required": "Type the password you were given with the link."},
    )


class SelectionForm(forms.Form):
    """The generations picked in select mode."""

    ids = forms.TypedMultipleChoiceField(
        coerce=int, error_messages={"required": "Select at least one image first."}
    )

    def __init__(self, *args, queryset: GenerationQuerySet, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # Only the user's own generations are valid choices: anything else is "not found".
        self.queryset = queryset
        self.fields["ids"].choices = [(str(pk), pk) for pk in parse_ids(self.data.getlist("ids"))]

    def selected(self) -> GenerationQuerySet:
        return self.queryset.filter(pk__in=self.cleaned_data["ids"])


class BulkActionForm(SelectionForm):
    ACTIONS = [
        ("favorite", "Favourite"),
        ("unfavorite", "Unfavourite"),
        ("export", "Download zip"),
        ("delete", "Delete"),
    ]

    action = forms.ChoiceField(choices=ACTIONS, error_messages={"required": "Choose an action."})
    confirm = forms.BooleanField(required=False)


NAME_ERRORS = {
    "required": "Name the collection.",
    "max_length": "A collection's name is at most %(limit_value)d characters long "
    "(this one has %(show_value)d).",
}


class CollectionForm(forms.ModelForm):
    """A new collection, or a renamed one: a name unique to its owner, whatever its case."""

    name = forms.CharField(max_length=100, error_messages=NAME_ERRORS)
    description = forms.CharField(
        required=False,
        max_length=1000,
        widget=forms.Textarea(attrs={"rows": 2}),
        error_messages={
            "max_length": "Keep the description to %(limit_value)d characters "
            "(it has %(show_value)d)."
        },
    )

    class Meta:
        model = Collection
        fields = ["name", "description"]

    def __init__(self, *args, owner, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.instance.owner = owner

    def clean_name(self) -> str:
        name = self.cleaned_data["name"].strip()
        taken = Collection.objects.owned_by(self.instance.owner).named(name)
        if taken.exclude(pk=self.instance.pk).exists():
            raise forms.ValidationError(self.taken_message(name))
        return name

    @staticmethod
    def taken_message(name: str) -> str:
        return f"You already have a collection named “{name}”."

    def save_unique(self) -> Collection | None:
        """Save the valid form; None, with the name's error on the form, when another request
        (a second tab, a script) took the name between the check and the write."""
        try:
            with transaction.atomic():
                return self.save()
        except IntegrityError:
            self.add_error("name", self.taken_message(self.cleaned_data["name"]))
            return None


class CollectForm(forms.Form):
    """Which collection to put images in (or take them out of): one of the user's, or a new
    one by name (an existing one of that name, whatever its case, is used)."""

    collection = forms.ModelChoiceField(
        queryset=Collection.objects.none(),
        required=False,
        empty_label="Choose a collection",
        error_messages={"invalid_choice": "That collection no longer exists."},
    )
    new_collection = forms.CharField(
        required=False,
        max_length=100,
        label="Or a new collection",
        error_messages=NAME_ERRORS,
    )

    def __init__(self, *args, owner, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.owner = owner
        self.fields["collection"].queryset = Collection.objects.owned_by(owner)

    def clean(self) -> dict:
        data = super().clean()
        if not self.errors and not data.get("collection") and not data.get("new_collection"):
            raise forms.ValidationError("Choose a collection, or name a new one.")
        return data

    def collection_for(self) -> tuple[Collection, bool]:
        """The chosen collection, made first if it is new; and whether it was made."""
        if chosen := self.cleaned_data["collection"]:
            return chosen, False
        name = self.cleaned_data["new_collection"].strip()
        # get_or_create, so that a double click makes one collection, not an error.
        return Collection.objects.get_or_create(
            owner=self.owner, name__iexact=name, defaults={"name": name}
        )
