"""Settings: env prefix, the seeds' config.yaml keys, secrets from secrets.toml, secrets never shown."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.core.settings import load_settings

SEED_CONFIG = """
gemini_api_key: "seed-key-123"
caption_model: "gemini-2.5-flash-lite"
processing:
  image_max_size: 512
  max_retries: 5
  retry_backoff_seconds: 1.5
  per_request_sleep_seconds: 0.25
"""


def test_seed_config_yaml_is_read(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text(SEED_CONFIG)
    s = load_settings()
    assert s.processing.image_max_size == 512
    assert s.processing.max_retries == 5
    assert s.processing.retry_backoff_seconds == 1.5
    assert s.processing.per_request_sleep_seconds == 0.25
    assert s.caption_model == "gemini-2.5-flash-lite"
    assert s.gemini_api_key is not None and s.gemini_api_key.get_secret_value() == "seed-key-123"


def test_env_overrides_yaml_and_nests(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "config.yaml").write_text(SEED_CONFIG)
    monkeypatch.setenv("WORKBENCH_PROCESSING__IMAGE_MAX_SIZE", "1024")
    monkeypatch.setenv("WORKBENCH_DOWNLOAD__PER_HOST_LIMIT", "3")
    monkeypatch.setenv("WORKBENCH_WORKSPACE", str(tmp_path / "elsewhere"))
    s = load_settings()
    assert s.processing.image_max_size == 1024
    assert s.processing.max_retries == 5  # still from the YAML
    assert s.download.per_host_limit == 3
    assert s.workspace == tmp_path / "elsewhere"


def test_secrets_toml_and_sdk_env_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / ".streamlit").mkdir()
    (tmp_path / ".streamlit" / "secrets.toml").write_text('gemini_api_key = "from-secrets"\n')
    assert load_settings().gemini_api_key.get_secret_value() == "from-secrets"  # type: ignore[union-attr]
    monkeypatch.setenv("GEMINI_API_KEY", "from-sdk-env")
    assert load_settings().gemini_api_key.get_secret_value() == "from-sdk-env"  # type: ignore[union-attr]
    monkeypatch.setenv("WORKBENCH_GEMINI_API_KEY", "from-our-env")
    assert load_settings().gemini_api_key.get_secret_value() == "from-our-env"  # type: ignore[union-attr]


def test_secret_never_appears_in_repr_or_dump(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORKBENCH_GEMINI_API_KEY", "super-secret-value")
    s = load_settings()
    assert "super-secret-value" not in repr(s)
    assert "super-secret-value" not in str(s.model_dump())
    assert "super-secret-value" not in s.model_dump_json()


def test_bad_yaml_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text("- just\n- a list\n")
    with pytest.raises(ValueError, match="config.yaml"):
        load_settings()
