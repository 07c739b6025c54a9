"""The status page in a real browser: headless Chromium (Debian's) driven over WebDriver
(chromedriver) by Selenium. Run by the ignored test `browser_status_page` in
tests/status_page.rs (through scripts/browser), which starts the real daemon against the
simulated Loops API and passes what to check:

    status_page.py --url http://127.0.0.1:PORT --hostile NAME --screenshot DIR

and, in the environment, LOOPWATCH_BROWSER_SECRETS: every secret of the world, one per
line, none of which may be anywhere in the DOM. Exits 0 when every check holds, else 1 with
one line per failed check.
"""

import argparse
import base64
import os
import sys
import tempfile

from selenium import webdriver
from selenium.common.exceptions import NoAlertPresentException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    # A laptop screen.
    "--window-size=1440,900",
]

failures = []


def check(ok, what):
    print(("ok   " if ok else "FAIL ") + what)
    if not ok:
        failures.append(what)


def full_page_png(driver, path):
    """A screenshot of the whole page, not only the viewport (Chrome DevTools)."""
    width = driver.execute_script("return document.documentElement.scrollWidth")
    height = driver.execute_script("return document.documentElement.scrollHeight")
    shot = driver.execute_cdp_cmd(
        "Page.captureScreenshot",
        {
            "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": width, "height": height, "scale": 1},
        },
    )
    with open(path, "wb") as f:
        f.write(base64.b64decode(shot["data"]))
    print(f"screenshot {path} ({width}x{height})")


def no_alert(driver):
    try:
        driver.switch_to.alert
        return False
    except NoAlertPresentException:
        return True


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--hostile", required=True)
    p.add_argument("--screenshot", required=True, help="directory for the PNGs")
    p.add_argument("--approve", help="the delivery id of a deploy waiting for approval")
    args = p.parse_args()
    secrets = [s for s in os.environ.get("LOOPWATCH_BROWSER_SECRETS", "").splitlines() if s]
    check(len(secrets) > 0, "the secrets to look for were given")

    opts = webdriver.ChromeOptions()
    opts.binary_location = os.environ.get("LOOPWATCH_CHROMIUM", "/usr/bin/chromium")
    for f in FLAGS:
        opts.add_argument(f)
    profile = tempfile.mkdtemp(prefix="lw-chromium-")
    opts.add_argument(f"--user-data-dir={profile}")
    service = Service(executable_path=os.environ.get("LOOPWATCH_CHROMEDRIVER", "/usr/bin/chromedriver"))
    driver = webdriver.Chrome(options=opts, service=service)
    try:
        driver.set_page_load_timeout(30)
        driver.get(args.url + "/")
        check(driver.title == "loopwatch status", f"the page loads (title {driver.title!r})")
        check(no_alert(driver), "no alert: the hostile name did not run")
        check(len(driver.find_elements(By.TAG_NAME, "script")) == 0, "no <script> element in the DOM")

        if not args.approve:
            rows = {r.get_attribute("data-target"): r for r in driver.find_elements(By.CSS_SELECTOR, "tr[data-target]")}
            check(set(rows) == {"qwen", "llama"}, f"both targets listed ({sorted(rows)})")
            if "qwen" in rows:
                qwen = rows["qwen"].text
                check("ok" in qwen and "run_id=run-1" in qwen, "qwen: ok, with its filter")
                check("complete" in qwen, "qwen: checkpoints by status")
                check(args.hostile in qwen, "qwen: the newest completed checkpoint is the hostile name, as text")

            sink = driver.find_elements(By.CSS_SELECTOR, "tr[data-sink='dead-end']")
            check(len(sink) == 1, "the dead-end sink is listed")
            if sink:
                text = sink[0].text
                check("1 dead" in text, "dead-end: one dead delivery")
                check("loopwatch deliveries redeliver --dead --sink dead-end" in text, "dead-end: its replay line")
                check("[redacted]" in text, "dead-end: the echoed token is redacted in its last error")

            dead = driver.find_elements(By.CSS_SELECTOR, "#dead ~ .card tr[data-delivery]")
            check(len(dead) == 1, f"one dead delivery row ({len(dead)})")
            if dead:
                text = dead[0].text
                check(args.hostile in text, "the dead delivery names the hostile checkpoint, as text")
                did = dead[0].get_attribute("data-delivery")
                check(f"loopwatch deliveries redeliver {did}" in text, "the dead delivery's own replay line")

        if args.approve:
            rows = driver.find_elements(By.CSS_SELECTOR, f"#deploys ~ .card tr[data-deploy='{args.approve}']")
            check(len(rows) == 1, f"the waiting deploy #{args.approve} is listed ({len(rows)})")
            if rows:
                text = rows[0].text
                check("awaiting approval" in text, "the waiting deploy shows its stage")
                check(f"loopwatch deliveries approve {args.approve} --by" in text,
                      "the waiting deploy shows the line that approves it")

        source = driver.page_source
        for s in secrets:
            check(s not in source, f"secret #{secrets.index(s) + 1} is not in the DOM")
        os.makedirs(args.screenshot, exist_ok=True)
        if args.approve:
            full_page_png(driver, os.path.join(args.screenshot, "status-approval.png"))
        else:
            full_page_png(driver, os.path.join(args.screenshot, "status-page.png"))

            # One target's history: the dead attempt with its status code.
            driver.get(args.url + "/targets/qwen")
            check(no_alert(driver), "/targets/qwen: no alert")
            check(len(driver.find_elements(By.TAG_NAME, "script")) == 0, "/targets/qwen: no <script> element")
            body = driver.find_element(By.TAG_NAME, "body").text
            check(args.hostile in body, "/targets/qwen: the hostile checkpoint, as text")
            check("410" in body and "dead" in body, "/targets/qwen: the dead attempt with its status code")
            check("HTTP 204" in body, "/targets/qwen: the delivered attempt with its status code")
            source = driver.page_source
            for s in secrets:
                check(s not in source, f"/targets/qwen: secret #{secrets.index(s) + 1} is not in the DOM")
            full_page_png(driver, os.path.join(args.screenshot, "status-target.png"))
    finally:
        driver.quit()
    if failures:
        print(f"{len(failures)} check(s) failed", file=sys.stderr)
        return 1
    print("every check passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
