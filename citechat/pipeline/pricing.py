"""What an answer costs: a per-model price table (``CITECHAT_MODEL_PRICES``) applied to its token counts.

Shared by the offline evaluation (cost per answer in a report) and by live observability, so both quote the same
figure for the same answer. Prices are USD per million input (prompt) and output (completion) tokens, as the
providers publish them. Answers written without a paid model (the extractive answerer, a local GGUF model) cost 0.
A model missing from the table has an unknown cost (``None``), never a silent 0.
"""

from collections.abc import Mapping

Prices = Mapping[str, tuple[float, float]]

DEFAULT_PRICES: dict[str, tuple[float, float]] = {
    "gpt-4o": (2.50, 10.00),
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4.1": (2.00, 8.00),
    "gpt-4.1-mini": (0.40, 1.60),
}
FREE_PROVIDERS = frozenset({"extractive", "local"})
PER_TOKENS = 1_000_000


def price_of(model: str, prices: Prices) -> tuple[float, float] | None:
    """The model's (input, output) price: an exact entry, else the longest entry that is a dated or suffixed form
    of it ("gpt-4o-2024-08-06" is priced as "gpt-4o", but "gpt-4o-mini" never as "gpt-4o" when it has its own)."""
    if model in prices:
        return prices[model]
    prefixes = [name for name in prices if model.startswith(f"{name}-")]
    return prices[max(prefixes, key=len)] if prefixes else None


def cost_usd(
    provider: str, model: str | None, prompt_tokens: int, completion_tokens: int, prices: Prices
) -> float | None:
    """The cost of one call (or one answer's calls) in USD; ``None`` when the model's price is unknown."""
    if provider in FREE_PROVIDERS:
        return 0.0
    price = price_of(model or "", prices)
    if price is None:
        return None
    return (prompt_tokens * price[0] + completion_tokens * price[1]) / PER_TOKENS
