"""LLM cost from the tokens a request used: a small price table by model family.

Prices are USD per million tokens (input, output), list prices of Anthropic's models
(the same on Bedrock on demand). Prompt-cache writes cost 1.25x the input price and cache
reads 0.1x. Unknown models are priced like
Sonnet, and the basis says so. These are what the report and the run's spending cap
count, not a bill.
"""

from __future__ import annotations

import math

from saeflow.ports import TokenUsage, ToolRequest

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
CACHE_WRITE_FACTOR = 1.25
CACHE_READ_FACTOR = 0.10
# For a request's worst case before it is sent: input tokens are at most one per this
# many characters of its text (English JSON runs at ~3.5), output at most max_tokens.
CHARS_PER_TOKEN_FLOOR = 3


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


def usage_usd(model_id: str | None, usage: TokenUsage) -> float:
    """What one request cost, cache reads and writes at their own prices."""
    (inp, out), _ = price_per_million(model_id)
    total = (
        usage.input_tokens * inp
        + usage.cache_write_tokens * inp * CACHE_WRITE_FACTOR
        + usage.cache_read_tokens * inp * CACHE_READ_FACTOR
        + usage.output_tokens * out
    )
    return total / 1_000_000


def request_ceiling_usd(model_id: str | None, request: ToolRequest) -> float:
    """An upper bound of what ``request`` can cost (all input written to the cache)."""
    chars = len(request.system) + len(request.prompt) + len(str(request.tool.input_schema))
    input_tokens = math.ceil(chars / CHARS_PER_TOKEN_FLOOR)
    (inp, out), _ = price_per_million(model_id)
    return (input_tokens * inp * CACHE_WRITE_FACTOR + request.max_tokens * out) / 1_000_000


def micro_usd(usd: float) -> int:
    """Whole micro-dollars (what the run's spend counter adds), rounded up."""
    return math.ceil(round(usd * 1_000_000, 6))
