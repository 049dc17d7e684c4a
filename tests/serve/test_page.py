"""The page in a real headless browser (Debian's chromium + chromium-driver through selenium; no download)."""

from __future__ import annotations

import os
import shutil

import pytest

from tests.serve.http_util import post_json

CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
              "--window-size=1280,900", "--disable-extensions", "--no-first-run"):  # fmt: skip
        opts.add_argument(a)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def _find_caption_ranked_well(server) -> dict:
    """A demo caption whose true image the service puts in its top 5 (most are, after the fixture's training)."""
    idx = server["searcher"].index
    hits = []
    for c in idx.captions[::4]:
        _, _, r = post_json(server["url"] + "/search/images", {"query": c["text"], "top_k": 5, "rerank": 10})
        if c["image_id"] in [x["image_id"] for x in r["results"]]:
            hits.append(c)
    assert len(hits) >= len(idx.captions[::4]) // 2, (
        "the trained fixture model should rank most captions well"
    )
    return hits[0]


def test_typing_a_demo_caption_shows_its_image_with_regions(server, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    caption = _find_caption_ranked_well(server)
    browser.get(server["url"] + "/")
    wait = WebDriverWait(browser, 30)
    wait.until(lambda d: "images" in d.find_element(By.ID, "status").text)
    box = browser.find_element(By.ID, "query")
    box.send_keys(caption["text"])
    topk = browser.find_element(By.ID, "top-k")
    topk.clear()
    topk.send_keys("5")
    rerank = browser.find_element(By.ID, "rerank")
    rerank.clear()
    rerank.send_keys("10")
    browser.find_element(By.ID, "search-btn").click()
    wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#results .card.result")))
    cards = browser.find_elements(By.CSS_SELECTOR, "#results .card.result")
    ids = [c.get_attribute("data-image-id") for c in cards]
    assert len(ids) == 5 and caption["image_id"] in ids
    card = cards[ids.index(caption["image_id"])]
    assert card.find_elements(By.CSS_SELECTOR, "svg rect"), "regions drawn over the image"
    img = card.find_element(By.TAG_NAME, "img")
    wait.until(lambda d: d.execute_script("return arguments[0].complete && arguments[0].naturalWidth", img))
    assert "ms total" in browser.find_element(By.ID, "latency").text
    assert "cross-encoder" in card.text
    shot = os.environ.get(
        "IMAGEBERT_SERVE_SCREENSHOT"
    )  # the docs' screenshot: set to docs/serve-screenshot.png
    if shot:
        browser.save_screenshot(shot)
    # clicking an image result asks for its captions
    card.click()
    wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#results .caption.result")))
    rows = browser.find_elements(By.CSS_SELECTOR, "#results .caption.result")
    assert len(rows) == 5 and all(r.text.startswith("#") for r in rows)
    # an error from the API is shown, and the page keeps working
    box = browser.find_element(By.ID, "query")
    box.clear()
    browser.find_element(By.ID, "search-btn").click()
    wait.until(lambda d: d.find_element(By.ID, "error").is_displayed())
    assert "query is empty" in browser.find_element(By.ID, "error").text
    logs = [e for e in browser.get_log("browser") if e["level"] == "SEVERE" and "422" not in e["message"]]
    assert not logs, logs
