"""Estimated LLM cost from token counts: a small price table by model family.

Prices are USD per million tokens (input, output), list prices of Anthropic's models
(the same on Bedrock on demand). They are estimates for the report and the budget cap,
not a bill. Unknown models are priced like Sonnet, and the basis says so.
"""

from __future__ import annotations

# (substring of the model id, (input USD / 1M tokens, output USD / 1M tokens)); first match wins.
PRICE_TABLE: tuple[tuple[str, tuple[float, float]], ...] = (
    ("opus-4-5", (5.0, 25.0)),
    ("opus-4-1", (15.0, 75.0)),
    ("opus-4", (15.0, 75.0)),
    ("3-opus", (15.0, 75.0)),
    ("haiku-4-5", (1.0, 5.0)),
    ("3-5-haiku", (0.8, 4.0)),
    ("3-haiku", (0.25, 1.25)),
    ("sonnet", (3.0, 15.0)),
)
FALLBACK_PRICE = (3.0, 15.0)

# What labelling one feature costs in tokens (explain + score), for the budget cap
# before any call is made; measured ballpark for 10 explain and ~12 held-out examples.
TYPICAL_TOKENS_PER_FEATURE = (3500, 400)


def price_per_million(model_id: str | None) -> tuple[tuple[float, float], str]:
    """((input, output) USD per 1M tokens, how the price was chosen)."""
    if not model_id:
        return (0.0, 0.0), "no LLM used"
    lowered = model_id.lower()
    for needle, price in PRICE_TABLE:
        if needle in lowered:
            return price, f"list price for '{needle}' models"
    return FALLBACK_PRICE, f"unknown model {model_id!r}: priced like Sonnet"


def estimate_usd(model_id: str | None, input_tokens: int, output_tokens: int) -> float:
    (inp, out), _ = price_per_million(model_id)
    return round((input_tokens * inp + output_tokens * out) / 1_000_000, 6)


def usd_per_feature(model_id: str | None) -> float:
    return estimate_usd(model_id, *TYPICAL_TOKENS_PER_FEATURE)
