from __future__ import annotations

from django import forms

from api.models import ApiToken


class ApiTokenForm(forms.Form):
    name = forms.CharField(
        max_length=100,
        label="Name",
        help_text="What the token is for, so you know which to revoke: “backup script”, say.",
        error_messages={
            "required": "Name the token: say what will use it.",
            "max_length": "Keep the name to %(limit_value)s characters (it has %(show_value)s).",
        },
    )

    def __init__(self, *args, user, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.user = user

    def clean_name(self) -> str:
        name = self.cleaned_data["name"]
        if ApiToken.objects.owned_by(self.user).active().filter(name__iexact=name).exists():
            raise forms.ValidationError(
                "You already have a token of that name; choose another, or revoke that one first."
            )
        return name

    def save(self) -> tuple[ApiToken, str]:
        return ApiToken.create_for(self.user, self.cleaned_data["name"])
