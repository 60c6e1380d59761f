from __future__ import annotations

from decimal import Decimal

from django import template
from django.conf import settings
from django.utils.translation import ngettext

register = template.Library()


@register.filter
def credits(n: int) -> str:
    """ "1 credit", "1,250 credits"."""
    return ngettext("%(n)s credit", "%(n)s credits", n) % {"n": f"{n:,}"}


@register.filter
def money(amount: Decimal | int | None) -> str:
    """An amount in PRICE_CURRENCY, with cents and as many more places as it has (up to the
    ledger's six): "1.48 USD", "0.0125 USD"; empty for none."""
    if amount is None:
        return ""
    amount = Decimal(amount)
    exponent = amount.normalize().as_tuple().exponent
    places = min(6, max(2, -exponent if isinstance(exponent, int) else 2))
    return f"{amount:,.{places}f} {settings.PRICE_CURRENCY}".strip()


@register.filter
def percent(fraction: float | None) -> str:
    """0.125 as "12.5 %"; a dash when there is nothing to divide."""
    if fraction is None:
        return "–"
    return f"{fraction * 100:.1f} %"
