"""The agent's page (GET /) in a real headless Chromium (Debian's `chromium` + `chromium-driver`, driven by
Selenium; .ci/run installs them): a person types a question, is asked for the server's token, gives it, asks
again and watches the thoughts, the search with its passages and the answer appear. The screenshot goes to
$AGENT_SCREENSHOT (docs/img/agent.png was made so), else to the test's tmp dir.

Selenium with Debian's chromium-driver rather than Playwright: the driver is built from the same source package
as the browser, so their versions always match, and nothing is ever downloaded (Playwright pins its own browser
builds)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import httpx
import pytest

from searchrl.protocol import R1_SEARCHER
from tests.conftest import tiny_config_at
from tests.integration.agent_kit import start_agent, stop_agent

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and DRIVER), reason="needs Debian's chromium and chromium-driver (apt-get install -y ...)"
)
TOKEN = "page-test-token-0123456789"
QUESTION = "In which city was Orlen Vask born?"


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    work = tmp_path_factory.mktemp("agent-page")
    cfg = tiny_config_at(work / "run")
    cfg.security.bind_host = "127.0.0.1"
    proc, base = start_agent(cfg, work, "agent", env={"SEARCHRL_TOKEN": TOKEN})
    yield base
    stop_agent(proc)


@pytest.fixture()
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1200,1000"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(options=opts, service=Service(executable_path=DRIVER))
    yield driver
    driver.quit()


def test_a_question_typed_in_the_page_shows_the_searches_and_the_answer(url, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 300)
    browser.get(url)
    wait.until(lambda d: "tiny-searcher" in d.find_element(By.ID, "info").text)
    browser.find_element(By.ID, "question").send_keys(QUESTION)
    browser.find_element(By.ID, "ask").click()
    wait.until(ec.visibility_of_element_located((By.ID, "token")))  # 401: the page asks for the token
    assert "bearer token" in browser.find_element(By.ID, "error").text
    browser.find_element(By.ID, "token").send_keys(TOKEN, Keys.TAB)
    browser.find_element(By.ID, "ask").click()

    wait.until(ec.visibility_of_element_located((By.ID, "answer")))
    expected = httpx.post(
        f"{url}/v1/answer",
        json={"question": QUESTION},
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=300,
    ).json()
    thoughts = [e.text.strip() for e in browser.find_elements(By.CSS_SELECTOR, ".thought pre")]
    segments = [e["text"] for e in expected["trace"] if e["type"] == "segment"]
    assert thoughts == [s.strip() for s in segments]
    queries = [e.text for e in browser.find_elements(By.CSS_SELECTOR, ".search .query")]
    assert queries == [e["query"] for e in expected["trace"] if e["type"] == "search"]
    assert queries and queries[0] == R1_SEARCHER.extract_query(segments[0])
    passages = browser.find_elements(By.CSS_SELECTOR, ".search .passage")
    assert passages and all(p.text for p in passages)
    value = browser.find_element(By.CSS_SELECTOR, "#answer .value").text
    assert value == (expected["answer"] or "(no answer tags in the response)").strip()
    assert f"{expected['searches']} search(es)" in browser.find_element(By.CSS_SELECTOR, "#answer .meta").text
    assert (
        not browser.find_element(By.ID, "token").is_displayed()
        and not browser.find_element(By.ID, "error").text
    )

    shot = Path(os.environ.get("AGENT_SCREENSHOT") or tmp_path / "agent.png")
    shot.parent.mkdir(parents=True, exist_ok=True)
    browser.set_window_size(1200, browser.execute_script("return document.body.scrollHeight") + 120)
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
