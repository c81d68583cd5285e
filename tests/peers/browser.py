"""Drives voxd's demo page in real headless Chromium over WebDriver (selenium, chromedriver) for
tests/browser.rs, and prints what it saw as one JSON object on the last line of stdout. It decides
nothing: the Rust test asserts on the report.

Modes:
  talk     Opens /?autostart=1 with a fake microphone that plays --wav (Chromium's
           --use-file-for-fake-audio-capture), waits until a turn was interrupted and a later one
           completed, then types a question that calls a tool and uses the settings panel, both
           from the keyboard, takes screenshots (desktop and phone width) and reads the
           browser's console.
  refused  The server needs a key: opens /?autostart=1 (no token), waits for the page's refusal
           message, then /?autostart=1&token=--token and waits for the session to open.
  resume   Opens /?autostart=1 (--base is a proxy that cuts the session's connection once the
           answer's audio flows), types a question with a long answer, and waits until the page
           came back to its session and the answer played to its end.

Waits are polls with a generous deadline (a hang guard, never a timing assertion).
"""

import argparse
import json
import os
import sys
import time

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

PATIENCE_S = 90

SNAPSHOT_JS = """
const text = (el) => (el ? el.textContent : null);
const notice = document.getElementById('notice');
const speaker = document.getElementById('speaker');
const counts = {};
for (const li of document.querySelectorAll('#events li')) {
  counts[li.dataset.type] = (counts[li.dataset.type] || 0) + 1;
}
return {
  url: location.href,
  connection: document.getElementById('connection').dataset.state,
  resumes: Number(document.getElementById('connection').dataset.resumes || 0),
  done: [...document.querySelectorAll('#events li[data-type="response_done"]')].map((li) =>
    JSON.parse(li.textContent),
  ),
  notice: notice.hidden ? null : notice.textContent,
  speaker: {
    state: speaker.dataset.state,
    played_ms: Number(speaker.dataset.playedMs || 0),
    dropped_ms: Number(speaker.dataset.droppedMs || 0),
  },
  events: counts,
  speech_ms: [...document.querySelectorAll('#events li[data-type="speech_stopped"]')].map(
    (li) => JSON.parse(li.textContent).duration_ms,
  ),
  settings_status: text(document.getElementById('settings-status')),
  turns: [...document.querySelectorAll('.turn')].map((li) => {
    const user = li.querySelector('.user-text');
    const heard = li.querySelector('.heard');
    return {
      turn: Number(li.dataset.turn),
      status: li.dataset.status,
      user: li.querySelector('.user').hidden ? null : user.textContent,
      user_final: user.dataset.final === 'true',
      bot: li.querySelector('.bot').hidden ? null : text(li.querySelector('.bot-text')),
      heard: heard.hidden ? null : heard.textContent,
      ttft_ms: li.dataset.ttftMs ? Number(li.dataset.ttftMs) : null,
      tools: [...li.querySelectorAll('.tools li')].map((t) => t.textContent),
      waterfall: [...li.querySelectorAll('.waterfall .seg')].map((s) => s.dataset.stage),
      figures: text(li.querySelector('.figures')),
    };
  }),
  overflow_x: document.documentElement.scrollWidth > window.innerWidth,
};
"""


def browser(args, wav=None):
    options = webdriver.ChromeOptions()
    options.binary_location = args.chromium
    for flag in [
        "--headless=new",
        "--no-sandbox",  # the tests may run as root (CI containers)
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--no-first-run",
        "--window-size=1280,1000",
        "--use-fake-ui-for-media-stream",  # grant the microphone without a prompt
        "--use-fake-device-for-media-stream",
        # /?autostart=1 is for kiosks launched like this: sound without a click.
        "--autoplay-policy=no-user-gesture-required",
    ]:
        options.add_argument(flag)
    if wav:
        # `%noloop`: play the file once, then silence, instead of looping it.
        options.add_argument(f"--use-file-for-fake-audio-capture={wav}%noloop")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(executable_path=args.chromedriver)
    return webdriver.Chrome(options=options, service=service)


def wait(driver, what, cond):
    """Polls the page until cond(snapshot) holds; returns the snapshot, or raises with the last
    one after PATIENCE_S (a hung page)."""
    deadline = time.monotonic() + PATIENCE_S
    while True:
        snap = driver.execute_script(SNAPSHOT_JS)
        if cond(snap):
            return snap
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: never happened; the page shows {json.dumps(snap)}")
        time.sleep(0.1)


def console(driver):
    return [{"level": e["level"], "message": e["message"]} for e in driver.get_log("browser")]


def barge_in_then_answer(snap):
    interrupted = [t["turn"] for t in snap["turns"] if t["status"] == "interrupted"]
    return bool(interrupted) and any(
        t["status"] == "completed" and t["turn"] > interrupted[0] for t in snap["turns"]
    )


def talk(args):
    driver = browser(args, wav=args.wav)
    report = {}
    try:
        driver.get(f"{args.base}/?autostart=1")
        report["title"] = driver.title
        report["conversation"] = wait(driver, "a barge-in, then a completed answer", barge_in_then_answer)

        # A typed turn that calls a tool, from the keyboard: type, press Enter.
        driver.find_element(By.ID, "text-input").send_keys("what is my balance", Keys.ENTER)
        report["typed"] = wait(
            driver,
            "the typed turn's tool call and answer",
            lambda s: any(t["tools"] and t["status"] == "completed" for t in s["turns"]),
        )

        # The settings panel, from the keyboard only: focus, type, Tab to Apply, press Enter.
        driver.find_element(By.ID, "instructions").click()
        active = driver.switch_to.active_element
        active.send_keys("Answer in one short sentence.")
        active.send_keys(Keys.TAB)
        driver.switch_to.active_element.send_keys("en-us")  # voice
        driver.switch_to.active_element.send_keys(Keys.TAB)  # greeting: left empty
        driver.switch_to.active_element.send_keys(Keys.TAB)
        report["apply_focused"] = driver.switch_to.active_element.get_attribute("id")
        driver.switch_to.active_element.send_keys(Keys.ENTER)
        report["settings"] = wait(
            driver, "session_updated", lambda s: (s["settings_status"] or "").startswith("Applied")
        )["settings_status"]

        os.makedirs(args.out, exist_ok=True)
        desktop = os.path.join(args.out, "demo-desktop.png")
        driver.save_screenshot(desktop)
        driver.set_window_size(390, 844)
        time.sleep(0.3)  # let the layout settle after the resize before the picture
        phone = os.path.join(args.out, "demo-phone.png")
        driver.save_screenshot(phone)
        report["phone"] = driver.execute_script(SNAPSHOT_JS)["overflow_x"]
        report["screenshots"] = [desktop, phone]
        report["final"] = driver.execute_script(SNAPSHOT_JS)
        report["console"] = console(driver)
    finally:
        driver.quit()
    return report


def refused(args):
    driver = browser(args)
    report = {}
    try:
        driver.get(f"{args.base}/?autostart=1")
        report["without_token"] = wait(driver, "the refusal message", lambda s: s["notice"])
        driver.get(f"{args.base}/?autostart=1&token={args.token}")
        report["with_token"] = wait(driver, "the session opens", lambda s: s["connection"] == "open")
        report["console"] = console(driver)
    finally:
        driver.quit()
    return report


def resume(args):
    driver = browser(args, wav=args.wav)
    report = {}
    try:
        driver.get(f"{args.base}/?autostart=1")
        wait(driver, "the session opens", lambda s: s["connection"] == "open")
        driver.find_element(By.ID, "text-input").send_keys("tell me a long story about the sea", Keys.ENTER)
        report["resumed"] = wait(driver, "the dropped connection resumes", lambda s: s["resumes"] >= 1)
        report["final"] = wait(
            driver,
            "the answer plays to its end",
            lambda s: s["done"] and s["speaker"]["state"] == "idle",
        )
        report["console"] = console(driver)
    finally:
        driver.quit()
    return report


def main():
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["talk", "refused", "resume"])
    p.add_argument("--base", required=True)
    p.add_argument("--chromium", required=True)
    p.add_argument("--chromedriver", required=True)
    p.add_argument("--wav")
    p.add_argument("--out")
    p.add_argument("--token")
    args = p.parse_args()
    report = {"talk": talk, "refused": refused, "resume": resume}[args.mode](args)
    print(json.dumps(report))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
