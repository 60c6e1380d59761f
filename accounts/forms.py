from __future__ import annotations

from datetime import timedelta

from allauth.account import forms as allauth_forms
from django import forms
from django.utils import timezone

from accounts.models import Invite, Preferences, Registration

INVITE_EXPIRY_CHOICES = [
    ("", "Never"),
    (1, "In a day"),
    (7, "In a week"),
    (30, "In 30 days"),
]


class LoginForm(allauth_forms.LoginForm):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fields["login"].label = "Username or email"
        self.fields["remember"].label = "Keep me logged in on this device"


class RegistrationForm(forms.ModelForm):
    class Meta:
        model = Registration
        fields = ["mode", "email_domains"]
        labels = {"mode": "Who can sign up", "email_domains": "Allowed email domains"}
        widgets = {
            "mode": forms.RadioSelect,
            "email_domains": forms.Textarea(attrs={"rows": 3, "placeholder": "example.com"}),
        }

    def clean_email_domains(self) -> str:
        text = self.cleaned_data["email_domains"].replace(",", "\n")
        domains = [d.strip().lower().lstrip("@") for d in text.splitlines() if d.strip()]
        bad = [d for d in domains if "." not in d or " " in d or "@" in d]
        if bad:
            raise forms.ValidationError(
                f"“{bad[0]}” is not a domain: write one like example.com, one per line."
            )
        return "\n".join(dict.fromkeys(domains))


class InviteForm(forms.Form):
    email = forms.EmailField(
        required=False,
        label="For this email address only (optional)",
        help_text="An invite for an address is mailed to it, and no other address can use it.",
    )
    expires_in_days = forms.TypedChoiceField(
        choices=INVITE_EXPIRY_CHOICES, coerce=int, empty_value=None, required=False,
        label="Expires",
    )  # fmt: skip

    def save_for(self, staff) -> Invite:
        days = self.cleaned_data["expires_in_days"]
        return Invite.objects.create(
            email=self.cleaned_data["email"],
            expires_at=timezone.now() + timedelta(days=days) if days else None,
            created_by=staff,
        )


class DecisionForm(forms.Form):
    decision = forms.ChoiceField(choices=[("approved", "Approve"), ("refused", "Refuse")])


class PreferencesForm(forms.ModelForm):
    class Meta:
        model = Preferences
        fields = ["file_provenance"]
