"""Cost: from reported usage (tokens x the table's prices) it reproduces the published per-image prices to the
cent; without usage it takes the table's price; a run's rows carry their cost, the run's spend is their sum,
and retries that were not billed are not counted. Prices can be overridden one key at a time."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pixelmill.errors import ConfigError
from pixelmill.models.cost import Expected, actual_cost, batch_cost, expected_cost
from pixelmill.models.table import ModelSpec, builtin_table
from pixelmill.reports.status import read_status
from pixelmill.testing import Emulator
from tests.runs import prompts, read_output, run_api, write_jsonl

SIZES = ("1024x1024", "1024x1536", "1536x1024")
# Output tokens behind the per-image prices (reference, section 5), per quality, for the three sizes.
TOKENS = {"low": (272, 408, 400), "medium": (1056, 1584, 1568), "high": (4160, 6240, 6208)}
# Published per-image prices (reference, section 5).
PUBLISHED = {
    "gpt-image-1": {"low": (0.011, 0.016, 0.016), "medium": (0.042, 0.063, 0.063), "high": (0.167, 0.25, 0.25)},
    "gpt-image-1.5": {"low": (0.009, 0.013, 0.013), "medium": (0.034, 0.051, 0.050),
                      "high": (0.133, 0.200, 0.199)},
}


def spec(name: str) -> ModelSpec:
    found = builtin_table().get(name)
    assert found is not None
    return found


def openai_usage(text: int = 0, image: int = 0, out: int = 0, text_out: int = 0) -> dict[str, Any]:
    return {
        "input_tokens": text + image, "output_tokens": out + text_out, "total_tokens": text + image + out + text_out,
        "input_tokens_details": {"text_tokens": text, "image_tokens": image},
        "output_tokens_details": {"image_tokens": out, "text_tokens": text_out},
    }


def gemini_usage(image_out: int, text_in: int = 0, image_in: int = 0, text_out: int = 0,
                 thoughts: int = 0) -> dict[str, Any]:
    usage: dict[str, Any] = {
        "promptTokenCount": text_in + image_in,
        "candidatesTokenCount": image_out + text_out,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": text_in},
                                {"modality": "IMAGE", "tokenCount": image_in}],
        "candidatesTokensDetails": [{"modality": "IMAGE", "tokenCount": image_out}]
        + ([{"modality": "TEXT", "tokenCount": text_out}] if text_out else []),
    }
    if thoughts:
        usage["thoughtsTokenCount"] = thoughts
    return usage


@pytest.mark.parametrize("model", sorted(PUBLISHED))
def test_usage_reproduces_published_openai_prices_to_the_cent(model: str) -> None:
    for quality, prices in PUBLISHED[model].items():
        for size, tokens, published in zip(SIZES, TOKENS[quality], prices, strict=True):
            cost = actual_cost(spec(model), {"quality": quality, "size": size}, openai_usage(out=tokens), 1)
            assert cost is not None
            assert abs(cost - published) < 0.005, (model, quality, size, cost, published)  # to the cent
            # The table's own estimate for that size and quality is the same amount.
            table = expected_cost(spec(model), {"quality": quality, "size": size}, 1)
            assert table is not None and round(table.expected, 2) == round(published, 2)


@pytest.mark.parametrize(("model", "size", "tokens", "published", "batch"), [
    ("gemini-3.1-flash-image", "512", 747, 0.045, 0.022),
    ("gemini-3.1-flash-image", "1K", 1120, 0.067, 0.034),
    ("gemini-3.1-flash-image", "2K", 1680, 0.101, 0.050),
    ("gemini-3.1-flash-image", "4K", 2520, 0.151, 0.076),
    ("gemini-3-pro-image", "1K", 1120, 0.134, 0.067),
    ("gemini-3-pro-image", "4K", 2000, 0.24, 0.12),
    ("gemini-2.5-flash-image", None, 1290, 0.039, 0.0195),
])
def test_usage_reproduces_published_gemini_prices_to_the_cent(model: str, size: str | None, tokens: int,
                                                               published: float, batch: float) -> None:
    params: dict[str, Any] = {"imageConfig": {"imageSize": size}} if size else {}
    cost = actual_cost(spec(model), params, gemini_usage(tokens), 1)
    assert cost is not None and abs(cost - published) < 0.001
    table = expected_cost(spec(model), params, 1)
    assert table is not None and abs(table.expected - published) < 0.001
    discounted = batch_cost(spec(model), table)
    assert discounted is not None and abs(discounted.expected - batch) < 0.001


@pytest.mark.parametrize(("model", "quality", "size", "price"), [
    ("dall-e-3", "standard", "1024x1024", 0.040), ("dall-e-3", "standard", "1792x1024", 0.080),
    ("dall-e-3", "hd", "1024x1024", 0.080), ("dall-e-3", "hd", "1024x1792", 0.120),
    ("dall-e-3", None, "1024x1024", 0.040),  # the API's default quality is standard
    ("dall-e-2", None, "256x256", 0.016), ("dall-e-2", None, "512x512", 0.018), ("dall-e-2", None, None, 0.020),
])
def test_per_image_models_cost_the_table_price(model: str, quality: str | None, size: str | None,
                                               price: float) -> None:
    params = {k: v for k, v in (("quality", quality), ("size", size)) if v}
    assert actual_cost(spec(model), params, None, 2) == pytest.approx(2 * price)
    assert expected_cost(spec(model), params, 2) == Expected(2 * price, 2 * price, 2 * price)
    assert batch_cost(spec(model), Expected(1, 1, 1)) is None  # no batch discount known for OpenAI


def test_every_kind_of_token_is_priced() -> None:
    """Input text and image tokens, image output and text output each at their own rate."""
    cost = actual_cost(spec("gpt-image-1"), {}, openai_usage(text=100, image=500, out=4160), 1)
    assert cost == pytest.approx((100 * 5.0 + 500 * 10.0 + 4160 * 40.0) / 1e6)
    cost = actual_cost(spec("gpt-image-1.5"), {}, openai_usage(out=1056, text_out=50), 1)
    assert cost == pytest.approx((1056 * 32.0 + 50 * 10.0) / 1e6)
    # Without details the split is unknown: each token at the dearer rate of its side (input: image 8.0 over
    # text 5.0; output: image 30.0), what the bill can be at most.
    cost = actual_cost(spec("gpt-image-2"), {}, {"input_tokens": 40, "output_tokens": 272}, 1)
    assert cost == pytest.approx((40 * 8.0 + 272 * 30.0) / 1e6)
    # Gemini without a per-modality split: prompt at max(text_in, image_in), candidates at max(image, text out).
    cost = actual_cost(spec("gemini-3-pro-image"), {}, {"promptTokenCount": 100, "candidatesTokenCount": 1200}, 1)
    assert cost == pytest.approx((100 * 2.0 + 1200 * 120.0) / 1e6)
    # Details that do not add up to the total: the rest at the dearer rate.
    cost = actual_cost(spec("gpt-image-2"), {}, {"input_tokens": 40, "input_tokens_details": {"text_tokens": 30},
                                                 "output_tokens": 272}, 1)
    assert cost == pytest.approx((30 * 5.0 + 10 * 8.0 + 272 * 30.0) / 1e6)
    cost = actual_cost(spec("gemini-3-pro-image"), {}, gemini_usage(1120, text_in=300, image_in=560, text_out=20,
                                                                     thoughts=400), 1)
    assert cost == pytest.approx((300 * 2.0 + 560 * 2.0 + 1120 * 120.0 + (20 + 400) * 12.0) / 1e6)


def test_expected_range_of_auto_quality_and_size() -> None:
    """quality auto: low is the low price, expected the high one (what the API picks); size auto: at most the
    dearest listed size."""
    value = expected_cost(spec("gpt-image-2"), {}, 1)
    assert value is not None
    assert value.low == pytest.approx(272 * 30.0 / 1e6)
    assert value.expected == pytest.approx(4160 * 30.0 / 1e6)
    assert value.high >= 6240 * 30.0 / 1e6
    # gpt-image-2 takes free sizes: tokens scale with the area.
    big = expected_cost(spec("gpt-image-2"), {"quality": "high", "size": "2048x2048"}, 1)
    assert big is not None and big.expected == pytest.approx(4 * 4160 * 30.0 / 1e6)
    assert expected_cost(spec("gpt-image-2"), {"quality": "low"}, 3, prompt_chars=400, input_images=2) is not None


def test_no_price_is_none() -> None:
    from pixelmill.models.table import permissive_spec

    unknown = permissive_spec("my-model", "openai")
    assert expected_cost(unknown, {}, 1) is None
    assert actual_cost(unknown, {}, openai_usage(out=100), 1) is None


# ---------------------------------------------------------------- runs


def test_rows_carry_their_cost_and_the_run_spends_their_sum(emulator_thread: Emulator, tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", prompts(10))
    report = run_api(emulator_thread, src, tmp_path / "run", quality="low", size="1024x1024", n=2, concurrency=4)
    assert report.exit_code == 0
    rows = read_output(tmp_path / "run")
    gpt2 = spec("gpt-image-2")
    for row in rows:
        info = row["pixelmill"]
        usage = info["usage"]
        assert usage["output_tokens"] == 2 * 272
        expected = (usage["input_tokens_details"]["text_tokens"] * 5.0 + 2 * 272 * 30.0) / 1e6
        assert info["cost_usd"] == pytest.approx(expected, abs=1e-6)
        assert info["cost_usd"] == pytest.approx(actual_cost(gpt2, info["parameters"], usage, 2), abs=1e-6)
    total = sum(r["pixelmill"]["cost_usd"] for r in rows)
    assert report.stats.spent == pytest.approx(total, abs=1e-5)
    assert read_status(tmp_path / "run").spent == pytest.approx(total, abs=1e-5)


def test_retries_that_were_not_billed_are_not_counted(emulator_thread: Emulator, tmp_path: Path) -> None:
    emulator_thread.configure(faults={"server_error": 0.4}, seed=11)
    src = write_jsonl(tmp_path / "in.jsonl", prompts(30))
    report = run_api(emulator_thread, src, tmp_path / "run", quality="low", size="1024x1024", max_retries=10)
    assert report.exit_code == 0
    sent = emulator_thread.count(endpoint="generations")
    assert sent > 30 + 5  # failures happened and were retried
    rows = read_output(tmp_path / "run")
    per_row = [r["pixelmill"]["cost_usd"] for r in rows]
    # Each row paid for exactly one image, however many attempts it took.
    assert all(abs(c - 272 * 30.0 / 1e6) < 0.0002 for c in per_row)
    assert report.stats.spent == pytest.approx(sum(per_row), abs=1e-5)


def test_gemini_rows_are_costed_from_usage_metadata(make_emulator: Any, tmp_path: Path) -> None:
    from pixelmill.api import run_config
    from pixelmill.options import build_config, job_options
    from tests.runs import TEST_KEY

    emu = make_emulator()
    src = write_jsonl(tmp_path / "in.jsonl", prompts(3))
    config = build_config("generate", src, job_options(
        output=tmp_path / "run", provider="gemini", model="gemini-3.1-flash-image", base_url=emu.gemini_base_url,
        api_key=TEST_KEY, resolution="2K"))
    report = run_config(config)
    assert report.exit_code == 0
    for row in read_output(tmp_path / "run"):
        info = row["pixelmill"]
        assert info["usage"]["candidatesTokensDetails"][-1]["tokenCount"] == 1680
        assert abs(info["cost_usd"] - 0.101) < 0.001  # the published 2K price


# ---------------------------------------------------------------- overriding prices


def test_a_partial_entry_overrides_one_price(tmp_path: Path) -> None:
    models = tmp_path / "prices.toml"
    models.write_text('[models."gpt-image-2".price]\nimage_out = 60.0\n'
                      '[models."gemini-3-pro-image-preview".price.output_tokens]\n"4K" = 2500\n'
                      '[presets.openai]\nfast = "gpt-image-2"\n')
    table = builtin_table().merged(models)
    mine = table.get("gpt-image-2")
    assert mine is not None and mine.price.image_out == 60.0
    assert mine.price.text_in == 5.0 and mine.price.output_tokens == spec("gpt-image-2").price.output_tokens
    assert mine.sizes == spec("gpt-image-2").sizes and mine.free_size == spec("gpt-image-2").free_size
    pro = table.get("gemini-3-pro-image")  # overridden through its alias
    assert pro is not None and pro.price.output_tokens == {"1K": 1120, "2K": 1120, "4K": 2500}
    assert table.resolve_preset("openai", "fast") == "gpt-image-2"
    assert table.resolve_preset("openai", "best") == "gpt-image-2"  # other presets kept
    assert builtin_table().get("gpt-image-2").price.image_out == 30.0  # type: ignore[union-attr]


def test_a_new_model_must_be_complete(tmp_path: Path) -> None:
    models = tmp_path / "prices.toml"
    models.write_text('[models."my-image-model".price]\nimage_out = 10.0\n')
    with pytest.raises(ConfigError, match=r"my-image-model.*family"):
        builtin_table().merged(models)
    models.write_text('[models."my-image-model"]\nfamily = "openai"\n[models."my-image-model".price.per_image]\n'
                      '"standard:1024x1024" = 0.05\n')
    added = builtin_table().merged(models).get("my-image-model")
    assert added is not None and expected_cost(added, {}, 1) == Expected(0.05, 0.05, 0.05)


def test_a_run_uses_the_overridden_price(emulator_thread: Emulator, tmp_path: Path) -> None:
    models = tmp_path / "prices.toml"
    models.write_text('[models."gpt-image-2".price]\nimage_out = 60.0\ntext_in = 0.0\n')
    src = write_jsonl(tmp_path / "in.jsonl", prompts(2))
    report = run_api(emulator_thread, src, tmp_path / "run", quality="low", size="1024x1024", models_file=models)
    assert report.exit_code == 0
    assert [r["pixelmill"]["cost_usd"] for r in read_output(tmp_path / "run")] == [272 * 60.0 / 1e6] * 2
