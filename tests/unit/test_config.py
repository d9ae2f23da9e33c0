"""Configuration: defaults, cross-field rules, boot refusal with every problem, masking."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from parley.config import describe, load_settings, startup_warnings
from parley.errors import ConfigError

GOOD = {
    "MCP_LLM_PROVIDER": "openai-compatible",
    "MCP_LLM_BASE_URL": "http://127.0.0.1:8080/v1",
    "MCP_LLM_MODEL": "smollm2",
    "MCP_LLM_API_KEY": "sk-local-1234567890",
}


def problems(env: dict[str, str]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_settings(env)
    return info.value.problems


def test_a_full_openai_compatible_config_validates() -> None:
    s = load_settings(GOOD)
    assert s.llm_provider == "openai-compatible"
    assert s.model == "smollm2"
    assert s.price_input_per_m_usd == Decimal(0)
    assert s.turn_timeout_seconds == 360
    assert s.session_idle_ttl_seconds == 7200
    assert s.session_max_age_seconds == 86400
    assert s.max_live_sessions == 200
    assert s.max_header_bytes == 16 * 1024
    assert s.body_timeout_seconds == 10
    assert s.effective_database_url.startswith("sqlite+aiosqlite:///")


def test_the_default_provider_is_anthropic_and_needs_its_key() -> None:
    (problem,) = problems({})
    assert problem.startswith("ANTHROPIC_API_KEY:")
    s = load_settings({"ANTHROPIC_API_KEY": "sk-ant-0123456789"})
    assert s.llm_provider == "anthropic"
    assert s.model == "claude-sonnet-4-5"
    assert s.max_output_tokens == 4096
    assert startup_warnings(s) == []  # priced from the Claude table: no zero-price warning


def test_anthropic_options_are_validated_together() -> None:
    found = problems(
        {
            "ANTHROPIC_API_KEY": " ",
            "ANTHROPIC_BASE_URL": "http://169.254.169.254/",
            "ANTHROPIC_PRICES": "claude-x=abc",
            "ANTHROPIC_FALLBACK_PRICE_PER_M_USD": "5",
        }
    )
    assert [p.split(":")[0] for p in found] == [
        "ANTHROPIC_API_KEY",
        "ANTHROPIC_BASE_URL",
        "ANTHROPIC_PRICES",
        "ANTHROPIC_FALLBACK_PRICE_PER_M_USD",
    ]


def test_anthropic_thinking_budget_has_the_api_minimum() -> None:
    (problem,) = problems({"ANTHROPIC_API_KEY": "k" * 20, "ANTHROPIC_THINKING_BUDGET": "100"})
    assert problem.startswith("ANTHROPIC_THINKING_BUDGET:")


def test_allowed_models_start_with_the_default() -> None:
    s = load_settings(GOOD | {"PARLEY_ALLOWED_MODELS": "other, smollm2 ,third"})
    assert s.models == ("smollm2", "other", "third")


def test_every_missing_variable_is_reported_at_once() -> None:
    found = problems({"MCP_LLM_PROVIDER": "openai-compatible"})
    assert [p.split(":")[0] for p in found] == ["MCP_LLM_BASE_URL", "MCP_LLM_MODEL", "MCP_LLM_API_KEY"]


@pytest.mark.parametrize("blank", ["", "   "])
def test_blank_model_and_key_are_refused(blank: str) -> None:
    found = problems(GOOD | {"MCP_LLM_MODEL": blank, "MCP_LLM_API_KEY": blank})
    assert {p.split(":")[0] for p in found} == {"MCP_LLM_MODEL", "MCP_LLM_API_KEY"}


def test_unknown_provider_is_refused() -> None:
    (problem,) = problems(GOOD | {"MCP_LLM_PROVIDER": "openai"})
    assert problem.startswith("MCP_LLM_PROVIDER:")


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("ftp://example.com/v1", "http or https"),
        ("http://169.254.169.254/latest", "link-local"),
        ("http://[fd00:ec2::254]/", "metadata"),
        ("http://metadata.google.internal/v1", "metadata"),
        ("http://127.0.0.1\\@1.1.1.1/v1", "backslashes"),
        ("http://user:pw@example.com/v1", "credentials"),
        ("http://127.0.0.1:8080/v1?key=1", "query string"),
        ("http://127.0.0.1:8080/v1#chat", "fragment"),
        ("http://[127.0.0.1]:8080/v1", "not a valid URL"),
    ],
)
def test_unsafe_base_urls_are_refused(url: str, fragment: str) -> None:
    (problem,) = problems(GOOD | {"MCP_LLM_BASE_URL": url})
    assert problem.startswith("MCP_LLM_BASE_URL:")
    assert fragment in problem


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://2852039166/v1", "169.254.169.254 is a link-local or cloud-metadata address"),
        ("http://0xa9fea9fe/v1", "169.254.169.254 is a link-local or cloud-metadata address"),
        ("http://0251.0376.0251.0376/v1", "169.254.169.254 is a link-local or cloud-metadata address"),
        ("http://2130706433:8080/v1", "host '2130706433' is a numeric form of 127.0.0.1; write it as 127.0.0.1"),
        ("http://0x7f.1:8080/v1", "host '0x7f.1' is a numeric form of 127.0.0.1; write it as 127.0.0.1"),
        ("http://4294967296:8080/v1", "host '4294967296' ends in a number but is not an IPv4 address"),
    ],
)
@pytest.mark.parametrize(
    ("variable", "env"),
    [
        ("MCP_LLM_BASE_URL", GOOD),
        ("ANTHROPIC_BASE_URL", {"ANTHROPIC_API_KEY": "sk-ant-0123456789"}),
    ],
)
def test_numeric_ipv4_hosts_are_refused_for_either_provider(
    variable: str, env: dict[str, str], url: str, message: str
) -> None:
    (problem,) = problems(env | {variable: url})
    assert problem.startswith(f"{variable}: ")
    assert message in problem


def test_production_refuses_plain_http_unless_allow_listed() -> None:
    (problem,) = problems(GOOD | {"PARLEY_ENV": "production", "MCP_LLM_BASE_URL": "http://vllm.internal:8000/v1"})
    assert "MCP_LLM_ALLOWED_HOSTS" in problem
    ok = load_settings(
        GOOD
        | {
            "PARLEY_ENV": "production",
            "MCP_LLM_BASE_URL": "http://vllm.internal:8000/v1",
            "MCP_LLM_ALLOWED_HOSTS": "other, vllm.internal",
        }
    )
    assert ok.llm_allowed_hosts == ["other", "vllm.internal"]
    assert load_settings(GOOD | {"PARLEY_ENV": "production", "MCP_LLM_BASE_URL": "https://api.example.com/v1"})


def test_production_never_allows_metadata_even_when_allow_listed() -> None:
    found = problems(
        GOOD
        | {
            "PARLEY_ENV": "production",
            "MCP_LLM_BASE_URL": "http://169.254.169.254/v1",
            "MCP_LLM_ALLOWED_HOSTS": "169.254.169.254",
        }
    )
    assert any("link-local" in p for p in found)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("MCP_LLM_PRICE_INPUT_PER_M_USD", "-1"),
        ("MCP_LLM_PRICE_OUTPUT_PER_M_USD", "abc"),
        ("PARLEY_TURN_TIMEOUT_SECONDS", "0"),
        ("PARLEY_MAX_LIVE_SESSIONS", "many"),
        ("PARLEY_MAX_HEADER_BYTES", "100"),
        ("PARLEY_BODY_TIMEOUT_SECONDS", "0"),
    ],
)
def test_bad_numbers_name_their_variable(name: str, value: str) -> None:
    (problem,) = problems(GOOD | {name: value})
    assert problem.startswith(f"{name}:")
    assert repr(value) in problem


def test_prices_are_exact_decimals_and_blank_means_zero() -> None:
    s = load_settings(GOOD | {"MCP_LLM_PRICE_INPUT_PER_M_USD": "0.1", "MCP_LLM_PRICE_OUTPUT_PER_M_USD": ""})
    assert s.price_input_per_m_usd == Decimal("0.1")
    assert s.price_output_per_m_usd == Decimal(0)


def test_zero_prices_warn_that_cost_and_budgets_are_inert() -> None:
    (warning,) = startup_warnings(load_settings(GOOD))
    assert "budgets are inert" in warning
    assert startup_warnings(load_settings(GOOD | {"MCP_LLM_PRICE_INPUT_PER_M_USD": "1"})) == []


def test_system_prompt_from_env_or_file(tmp_path: Path) -> None:
    assert load_settings(GOOD | {"PARLEY_SYSTEM_PROMPT": "Be brief."}).resolved_system_prompt() == "Be brief."
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("From a file.\n")
    s = load_settings(GOOD | {"PARLEY_SYSTEM_PROMPT_FILE": str(prompt)})
    assert s.resolved_system_prompt() == "From a file."
    (problem,) = problems(GOOD | {"PARLEY_SYSTEM_PROMPT_FILE": str(tmp_path / "missing.txt")})
    assert problem.startswith("PARLEY_SYSTEM_PROMPT_FILE:")


def test_database_url_must_use_an_async_driver() -> None:
    (problem,) = problems(GOOD | {"DATABASE_URL": "postgresql://u:p@localhost/db"})
    assert problem.startswith("DATABASE_URL:")


def test_describe_masks_secrets() -> None:
    rows = dict(describe(load_settings(GOOD | {"DATABASE_URL": "postgresql+asyncpg://app:hunter2@db/parley"})))
    assert rows["MCP_LLM_API_KEY"] == "****7890"
    assert "hunter2" not in rows["DATABASE_URL"]
    assert "sk-local" not in " ".join(rows.values())
