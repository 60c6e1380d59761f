"""The staff dashboard's query strings, parsed strictly: a month as 2026-11, dates as
2026-11-30 (ASCII digits only), from the year 2000 to 2999, so that every bad value is a plain
error and never a 500 (date arithmetic past the year 9999 would be one)."""

from __future__ import annotations

import re
from datetime import date, timedelta

from django import forms

FIRST_YEAR, LAST_YEAR = 2000, 2999


def _in_years(day: date) -> date:
    if not FIRST_YEAR <= day.year <= LAST_YEAR:
        raise forms.ValidationError(f"Pick a date from {FIRST_YEAR} to {LAST_YEAR}.")
    return day


class MonthField(forms.CharField):
    """A calendar month written YYYY-MM, as `<input type="month">` sends it; its first day."""

    def to_python(self, value: str) -> date | None:
        value = super().to_python(value).strip()
        if not value:
            return None
        match = re.fullmatch(r"([0-9]{4})-([0-9]{2})", value)
        if not match or not 1 <= int(match[2]) <= 12:
            raise forms.ValidationError(f"“{value}” is not a month: write it as 2026-11.")
        return _in_years(date(int(match[1]), int(match[2]), 1))


class DayField(forms.CharField):
    """A day written YYYY-MM-DD, as `<input type="date">` sends it."""

    def to_python(self, value: str) -> date | None:
        value = super().to_python(value).strip()
        if not value:
            return None
        try:
            if not re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", value):
                raise ValueError(value)
            day = date.fromisoformat(value)
        except ValueError:
            raise forms.ValidationError(
                f"“{value}” is not a date: write it as 2026-11-30."
            ) from None
        return _in_years(day)


class MonthForm(forms.Form):
    month = MonthField(required=False)


class LedgerRangeForm(forms.Form):
    """The days of a CSV download, both included."""

    start = DayField(label="From")
    end = DayField(label="To")

    def clean(self) -> dict:
        cleaned = super().clean()
        start, end = cleaned.get("start"), cleaned.get("end")
        if start and end and end < start:
            raise forms.ValidationError("The last day comes before the first.")
        return cleaned

    def bounds(self) -> tuple[date, date]:
        """From the first day up to, not including, the day after the last."""
        return self.cleaned_data["start"], self.cleaned_data["end"] + timedelta(days=1)
