"""Drive nmt-serve's page in headless Chromium: type sentences, translate, read what rendered,
and save a screenshot. The browser test uses `PageDriver`; run as a script, it makes the
README's picture:

    python docs/screenshot.py -m runs/multi30k_de_en -o docs/serve-page.png \\
        "Ein Mann fährt mit dem Fahrrad eine Straße entlang." "Zwei Hunde spielen im Schnee."

Needs Debian's chromium and chromium-driver and the selenium package (`pip install -e
".[test]"`); nothing is downloaded.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path


def find_browser() -> tuple[str, str] | None:
    """Chromium and its driver, where both are installed."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver") or (
        "/usr/lib/chromium/chromedriver"
        if os.path.exists("/usr/lib/chromium/chromedriver")
        else None
    )
    return (browser, driver) if browser and driver else None


class PageDriver:
    """One headless Chromium window on nmt-serve's page."""

    def __init__(self, url: str, width: int = 1280, height: int = 1000):
        os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager must not go online
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        found = find_browser()
        if found is None:
            raise RuntimeError("needs Debian's chromium and chromium-driver")
        options = webdriver.ChromeOptions()
        options.binary_location = found[0]
        for argument in ("--headless=new", "--no-sandbox", "--disable-gpu"):
            options.add_argument(argument)
        options.add_argument(f"--window-size={width},{height}")
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        self.driver = webdriver.Chrome(service=Service(found[1]), options=options)
        self.url = url
        self.driver.get(url)

    def translate(self, sentences: list[str], beam: int | None = None, timeout: float = 60) -> dict:
        """Type the sentences, press Translate, wait until the search view has drawn; what the
        page shows: the results table, the heatmap's size and the beam search's columns."""
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.ui import WebDriverWait

        find = self.driver.find_element
        WebDriverWait(self.driver, timeout).until(
            lambda d: "Loading" not in find(By.ID, "about").text
        )
        source = find(By.ID, "source")
        source.clear()
        source.send_keys("\n".join(sentences))
        if beam is not None:
            field = find(By.ID, "beam")
            field.clear()
            field.send_keys(str(beam))
        find(By.ID, "translate").click()

        def drawn(driver) -> bool:
            error = find(By.ID, "error").text
            if error:
                raise AssertionError(f"the page shows an error: {error}")
            steps = find(By.ID, "steps-section")
            return steps.is_displayed() and bool(find(By.ID, "steps").text or not beam or beam > 1)

        WebDriverWait(self.driver, timeout).until(drawn)
        rows = [
            [cell.text for cell in row.find_elements(By.TAG_NAME, "td")]
            for row in find(By.ID, "results").find_elements(By.CSS_SELECTOR, "tbody tr")
        ]
        heatmap = find(By.ID, "heatmap")
        return {
            "rows": rows,
            "heatmap_rows": len(heatmap.find_elements(By.CSS_SELECTOR, "tbody tr")),
            "heatmap_cells": len(heatmap.find_elements(By.CSS_SELECTOR, "tbody td")),
            "heatmap_columns": len(heatmap.find_elements(By.CSS_SELECTOR, "thead th")) - 1,
            "steps": len(find(By.ID, "steps").find_elements(By.CLASS_NAME, "step")),
            "nbest_rows": len(
                find(By.ID, "nbest-table").find_elements(By.CSS_SELECTOR, "tbody tr")
            ),
            "overflow": self.driver.execute_script(
                "return document.documentElement.scrollWidth - window.innerWidth"
            ),
        }

    def console_errors(self) -> list[str]:
        return [e["message"] for e in self.driver.get_log("browser") if e["level"] == "SEVERE"]

    def screenshot(self, path: Path) -> None:
        """The whole page, as tall as it is."""
        height = self.driver.execute_script("return document.documentElement.scrollHeight")
        width = self.driver.get_window_size()["width"]
        self.driver.set_window_size(width, height + 120)
        self.driver.save_screenshot(str(path))

    def close(self) -> None:
        self.driver.quit()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-m", "--model", required=True)
    parser.add_argument("-o", "--output", default="docs/serve-page.png")
    parser.add_argument("sentences", nargs="+")
    args = parser.parse_args()
    server = subprocess.Popen(
        [sys.executable, "-m", "nmt", "serve", "-m", args.model, "--port", "0"],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stderr is not None
        for line in server.stderr:
            found = re.search(r"serving on (http://\S+)", line)
            if found:
                break
        else:
            sys.exit("nmt-serve did not start")
        page = PageDriver(found[1])
        shown = page.translate(args.sentences)
        page.screenshot(Path(args.output))
        page.close()
        print(f"{args.output}: {shown['rows']}")
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
