"""What an answer cost: the tokens the provider reported, priced from a per-model table (``model_prices``).

Dated variants (``gpt-4o-2024-08-06``) are priced as their family (``gpt-4o``): the longest table entry that
prefixes the model's name wins. Models the table does not know (local, extractive, self-hosted) cost nothing.
"""

DEFAULT_PRICES: dict[str, tuple[float, float]] = {  # USD per million tokens: (prompt, completion)
    "gpt-4o": (2.50, 10.00),
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4.1": (2.00, 8.00),
    "gpt-4.1-mini": (0.40, 1.60),
}


def cost_usd(
    prices: dict[str, tuple[float, float]], model: str | None, prompt_tokens: int, completion_tokens: int
) -> float:
    rates = _rates(prices, model or "")
    return (prompt_tokens * rates[0] + completion_tokens * rates[1]) / 1_000_000


def _rates(prices: dict[str, tuple[float, float]], model: str) -> tuple[float, float]:
    if model in prices:
        return prices[model]
    families = [name for name in prices if model.startswith(name + "-")]
    return prices[max(families, key=len)] if families else (0.0, 0.0)
