"""Debian's headless Chromium driven by selenium through Debian's chromedriver (Playwright cannot
download its browsers here, nor Selenium Manager its drivers), for the browser tests."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service

__all__ = ["CHROMEDRIVER", "CHROMIUM", "chromium", "require_chromium"]

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
_FLAGS = (
    "--headless=new",
    "--no-sandbox",  # runs as root here
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
)


def require_chromium() -> tuple[Path, Path]:
    """Chromium and its driver; a skip without them, a failure under CI=true."""
    missing = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not path.exists()]
    if missing:
        why = f"{', '.join(missing)} missing: apt-get install chromium chromium-driver (.ci/run does)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"the browser test cannot be skipped under CI=true: {why}")
        pytest.skip(why)
    return CHROMIUM, CHROMEDRIVER


@contextmanager
def chromium(directory: Path, *, javascript: bool = True) -> Iterator[webdriver.Chrome]:
    """Headless Chromium with a fresh profile under `directory`, its console log kept
    (goog:loggingPrefs), JavaScript on or off."""
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)  # with the Service's path: Selenium Manager never runs
    for flag in _FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={directory / 'profile'}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    if not javascript:
        options.add_experimental_option("prefs", {"profile.managed_default_content_settings.javascript": 2})
    service = Service(executable_path=str(CHROMEDRIVER), log_output=str(directory / "chromedriver.log"))
    driver = webdriver.Chrome(options=options, service=service)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(directory / "profile", ignore_errors=True)
