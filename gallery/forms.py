from __future__ import annotations

from django import forms
from django.contrib.auth.forms import UserCreationForm

from gallery import provider
from gallery.models import Generation

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
            attrs={"rows": 3, "placeholder": "A banana astronaut floating above a neon city…"}
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

    class Meta:
        model = Generation
        fields = ["prompt", "aspect_ratio", "resolution", "output_format"]

    def save_for(self, owner) -> list[Generation]:
        """Create `count` generations of the same prompt and settings for `owner`."""
        settings = {name: self.cleaned_data[name] for name in self.Meta.fields}
        return [
            Generation.objects.create(owner=owner, **settings)
            for _ in range(self.cleaned_data["count"] or 1)
        ]


class SignupForm(UserCreationForm):
    class Meta(UserCreationForm.Meta):
        fields = ("username",)
