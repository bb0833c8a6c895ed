import pytest


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    """Sensitivity results are cached under LOWBIT_CACHE: each test gets its own."""
    monkeypatch.setenv("LOWBIT_CACHE", str(tmp_path / "cache"))
