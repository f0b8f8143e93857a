"""The rollout dashboard (GET / on the admin listener) in a real headless Chromium, against a
real `switchyard demo` on free loopback ports:

  1. without a key only the prompt shows; a wrong key is refused with the API's message;
  2. with the key: promote v2 and see the status strip go RELEASING -> RAMPING_UP -> SUCCEEDED
     and the split reach 100, replica blocks and live figures (traffic runs meanwhile);
  3. an API error (promote the current deployment) is shown with the API's message;
  4. slower settings through the settings form, promote v1, pause and resume it; the event
     log grows;
  5. kill -9 the demo mid-promotion, start it again on the same ports and data directory: the
     open page (never reloaded) reconnects and shows the restored promotion, then force roll
     forward (with its confirmation) finishes it;
  6. with canary analysis on, promote v3 (30% errors): the analysis panel appears, the strip
     ends FAILED and the failed check shows.

The browser console must stay free of errors, except the failed requests each step provokes on
purpose (401 for the wrong key, 409 for the refused promote, refused connections while
switchyard is down). Screenshots of four moments go to --screenshots (default: a new temp dir).

  python dashboard_browser.py --bin target/debug/switchyard [--screenshots DIR]

Needs Debian's chromium and chromium-driver (/usr/bin/chromedriver), and selenium.
"""

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

# Records every value the status strip, the split and the connection line take, so a status
# shown for less than a poll interval (RELEASING lasts well under a second) is still seen.
OBSERVER = """
window.__seen = {status: [], split: [], conn: []};
const watch = (id, attr, into) => {
  const node = document.getElementById(id);
  const read = () => attr ? node.getAttribute(attr) : node.textContent;
  const push = () => { const v = read(); const a = window.__seen[into]; if (a[a.length - 1] !== v) a.push(v); };
  push();
  new MutationObserver(push).observe(node, {attributes: true, childList: true, characterData: true, subtree: true});
};
watch('status-strip', 'data-status', 'status');
watch('split-percent', null, 'split');
watch('conn', null, 'conn');
window.__samePage = 'yes';
"""


def free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


class Demo:
    def __init__(self, binary, proxy_port, admin_port, key, data_dir, log_path):
        self.args = [binary, "demo", "--listen", f"127.0.0.1:{proxy_port}",
                     "--admin-listen", f"127.0.0.1:{admin_port}", "--data-dir", data_dir]
        self.env = dict(os.environ, SWITCHYARD_API_KEY=key)
        self.admin = f"http://127.0.0.1:{admin_port}"
        self.log_path = log_path
        self.proc = None

    def start(self):
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.args, env=self.env, stdout=log, stderr=log)
        deadline = time.time() + 60
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"the demo exited ({self.proc.returncode}); log in {self.log_path}")
            try:
                with urllib.request.urlopen(self.admin + "/readyz", timeout=1) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.3)
        raise SystemExit(f"the demo is not ready after 60 s; log in {self.log_path}")

    def kill9(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def traffic(proxy, stop):
    """Steady requests through the proxy, so the figures have something to show."""
    while not stop.is_set():
        try:
            req = urllib.request.Request(proxy + "/v1/chat/completions", data=b'{"max_tokens": 4}')
            with urllib.request.urlopen(req, timeout=5) as r:
                r.read()
        except (urllib.error.URLError, OSError):
            time.sleep(0.2)  # switchyard is down (the restart step): try again shortly
        time.sleep(0.05)


class Check:
    def __init__(self):
        self.failures = []
        self.passed = 0

    def __call__(self, ok, what):
        if ok:
            self.passed += 1
            print(f"  ok    {what}")
        else:
            self.failures.append(what)
            print(f"  FAIL  {what}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--screenshots", default=None)
    ap.add_argument("--chromedriver", default=shutil.which("chromedriver") or "/usr/bin/chromedriver")
    a = ap.parse_args()
    shots = a.screenshots or tempfile.mkdtemp(prefix="switchyard-dashboard-shots-")
    os.makedirs(shots, exist_ok=True)
    work = tempfile.mkdtemp(prefix="switchyard-dashboard-test-")
    proxy_port, admin_port = free_ports(2)
    key = f"dash-{os.getpid()}"
    demo = Demo(a.bin, proxy_port, admin_port, key, os.path.join(work, "data"),
                os.path.join(work, "demo.log"))
    check = Check()
    stop_traffic = threading.Event()
    driver = None
    try:
        demo.start()
        # Four clients: with one, v3 got about 15 requests per analysis interval, and 0.7^15
        # (0.5 %) of the time none of them failed, so v3 passed. Step 6 also asks for 20 per
        # interval, so that a slow spell is inconclusive, not a pass.
        for _ in range(4):
            threading.Thread(target=traffic, args=(f"http://127.0.0.1:{proxy_port}", stop_traffic),
                             daemon=True).start()

        opts = webdriver.ChromeOptions()
        opts.binary_location = shutil.which("chromium") or shutil.which("chromium-browser") or "/usr/bin/chromium"
        for arg in ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                    "--window-size=1280,2000", f"--user-data-dir={os.path.join(work, 'profile')}"]:
            opts.add_argument(arg)
        opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        driver = webdriver.Chrome(service=Service(a.chromedriver), options=opts)
        wait = WebDriverWait(driver, 60, poll_frequency=0.1)
        tid = lambda t: driver.find_element(By.CSS_SELECTOR, f'[data-testid="{t}"]')
        status = lambda: tid("status-strip").get_attribute("data-status")
        split = lambda: tid("split-percent").text

        def console(allowed, phase):
            """The console's errors since the last call, except those matching `allowed`."""
            bad = [e["message"] for e in driver.get_log("browser")
                   if e["level"] == "SEVERE" and not any(s in e["message"] for s in allowed)]
            check(not bad, f"no console errors ({phase}){'' if not bad else ': ' + repr(bad)}")

        def wait_for(cond, what, timeout=60):
            try:
                WebDriverWait(driver, timeout, poll_frequency=0.1).until(lambda d: cond())
                check(True, what)
                return True
            except TimeoutException:
                check(False, what + " (timed out)")
                return False

        print("== 1. key prompt")
        driver.get(demo.admin + "/")
        check(tid("api-key-input").is_displayed(), "the key prompt shows")
        check(not tid("status-strip").is_displayed() and not tid("promote-button").is_displayed(),
              "without a key nothing but the prompt shows")
        tid("api-key-input").send_keys("wrong-key")
        tid("api-key-submit").click()
        wait_for(lambda: "rejected" in driver.find_element(By.ID, "login-error").text,
                 "a wrong key is refused with a message")
        console(["401"], "wrong key: only its 401")

        print("== 2. promote v2")
        tid("api-key-input").send_keys(key)
        tid("api-key-submit").click()
        wait_for(lambda: tid("status-strip").is_displayed() and status() is not None, "the dashboard opens")
        check(driver.execute_script("return sessionStorage.getItem('switchyard.apiKey')") == key,
              "the key is in sessionStorage")
        check(key not in driver.current_url and key not in driver.execute_script("return document.cookie"),
              "the key is in neither the URL nor a cookie")
        driver.execute_script(OBSERVER)
        wait_for(lambda: len(Select(tid("promote-select")).options) >= 3, "the promote select lists the deployments")
        Select(tid("promote-select")).select_by_value("v2")
        log_before = len(tid("event-log").find_elements(By.TAG_NAME, "li"))
        tid("promote-button").click()
        if wait_for(lambda: status() == "RAMPING_UP", "the strip shows RAMPING_UP", 30):
            wait_for(lambda: tid("replicas-candidate").find_elements(By.CSS_SELECTOR, "li.ready, li.starting"),
                     "candidate replica blocks appear", 10)
            driver.save_screenshot(os.path.join(shots, "1-ramping-up.png"))
        wait_for(lambda: status() == "SUCCEEDED" and split() == "100", "the strip reaches SUCCEEDED, split 100", 60)
        seen = driver.execute_script("return window.__seen.status")
        order = [s for s in seen if s in ("RELEASING", "RAMPING_UP", "SUCCEEDED")]
        check(order[:3] == ["RELEASING", "RAMPING_UP", "SUCCEEDED"],
              f"the strip went RELEASING -> RAMPING_UP -> SUCCEEDED (saw {seen})")
        check("100" in driver.execute_script("return window.__seen.split"), "the split reached 100")
        lit = driver.find_elements(By.CSS_SELECTOR, '[data-testid="status-strip"] li.lit')
        check(len(lit) == 1 and lit[0].get_attribute("aria-current") == "step" and lit[0].text.strip() == "SUCCEEDED",
              "the current status is marked by more than colour (aria-current, text)")
        wait_for(lambda: len(tid("event-log").find_elements(By.TAG_NAME, "li")) > log_before,
                 "the event log grew", 10)
        first = tid("event-log").find_elements(By.TAG_NAME, "li")[0].text
        check("SUCCEEDED" in first, f"the event log is newest first ({first!r})")
        wait_for(lambda: any(v.text not in ("–", "0.0") for v in driver.find_elements(
            By.CSS_SELECTOR, '#figures [data-series="requests_per_s"] .value')),
            "the figures show live requests/s", 30)
        check(len(driver.find_elements(By.CSS_SELECTOR, "#plan-steps li")) > 0, "the planned steps show")
        console([], "promotion")

        print("== 3. an API error shows the API's message")
        Select(tid("promote-select")).select_by_value("v2")
        wait_for(lambda: tid("promote-button").is_enabled(), "promote is enabled once no promotion runs", 10)
        tid("promote-button").click()
        wait_for(lambda: "already the current deployment" in driver.find_element(By.ID, "error").text,
                 "promoting the current deployment shows the API's error")
        console(["409"], "refused promote: only its 409")

        print("== 4. slower settings, promote v1, pause and resume")
        field = driver.find_element(By.NAME, "stabilization_time_seconds")
        field.clear()
        field.send_keys("30")
        driver.find_element(By.ID, "settings-save").click()
        wait_for(lambda: "Save settings: done" in driver.find_element(By.ID, "notice").text, "settings saved")
        req = urllib.request.Request(demo.admin + "/v1/models/demo/environments/production",
                                     headers={"Authorization": f"Api-Key {key}"})
        with urllib.request.urlopen(req, timeout=5) as r:
            rc = json.load(r)["promotion_settings"]["rolling_deploy_config"]
        check(rc["stabilization_time_seconds"] == 30, "the API has the new stabilization time")
        wait_for(lambda: "30 s" in driver.find_element(By.ID, "plan-line").text, "the plan follows the settings", 10)
        log_before = len(tid("event-log").find_elements(By.TAG_NAME, "li"))
        Select(tid("promote-select")).select_by_value("v1")
        wait_for(lambda: tid("promote-button").is_enabled(), "promote is enabled", 10)
        tid("promote-button").click()
        wait_for(lambda: status() == "RAMPING_UP" and tid("pause-button").is_enabled(), "v1's promotion ramps up", 30)
        tid("pause-button").click()
        wait_for(lambda: status() == "PAUSED", "pause: the strip shows PAUSED", 60)
        wait_for(lambda: tid("resume-button").is_enabled(), "resume is enabled while paused", 5)
        driver.save_screenshot(os.path.join(shots, "2-paused.png"))
        tid("resume-button").click()
        wait_for(lambda: status() == "RAMPING_UP", "resume: the strip shows RAMPING_UP again", 30)
        wait_for(lambda: len(tid("event-log").find_elements(By.TAG_NAME, "li")) >= log_before + 3,
                 "the event log grew (promote, pause, resume)", 10)
        check(driver.find_elements(By.CSS_SELECTOR, "#plan-steps li.now"), "the plan marks the current step")
        console([], "pause and resume")

        print("== 5. kill -9 and restart: the open page reconnects")
        before = status()
        demo.kill9()
        wait_for(lambda: "disconnected" in driver.find_element(By.ID, "conn").text,
                 "the page notices switchyard is gone", 30)
        demo.start()
        wait_for(lambda: driver.find_element(By.ID, "conn").text == "live", "the page reconnects by itself", 30)
        with urllib.request.urlopen(req, timeout=5) as r:
            restored = json.load(r)["in_progress_promotion"]
        wait_for(lambda: status() == restored["status"], f"the strip shows the restored promotion ({restored['status']}, was {before})", 15)
        check(restored["candidate_deployment_id"] == "v1" and driver.find_element(By.ID, "cand-name").text == "v1",
              "the restored promotion is v1's")
        check(driver.execute_script("return window.__samePage") == "yes", "without a reload")
        driver.save_screenshot(os.path.join(shots, "3-reconnected.png"))
        console(["net::ERR_", "Failed to fetch"], "restart: only refused connections")
        if restored["status"] not in ("SUCCEEDED", "FAILED", "CANCELED"):
            wait_for(lambda: tid("force-roll-forward-button").is_enabled(), "force roll forward is enabled", 30)
            tid("force-roll-forward-button").click()
            WebDriverWait(driver, 5).until(lambda d: d.switch_to.alert)
            alert = driver.switch_to.alert
            check("Force roll forward" in alert.text, "force roll forward asks for confirmation")
            alert.accept()
            wait_for(lambda: status() == "SUCCEEDED" and split() == "100", "force roll forward: SUCCEEDED, split 100", 60)
        console([], "force roll forward")

        print("== 6. canary analysis rolls v3 back: the verdict panel shows")
        patch = urllib.request.Request(
            demo.admin + "/v1/models/demo/environments/production", method="PATCH",
            data=json.dumps({"promotion_settings": {
                "rolling_deploy_config": {"stabilization_time_seconds": 4},
                "analysis": {"enabled": True, "interval_seconds": 5, "min_requests": 20}}}).encode(),
            headers={"Authorization": f"Api-Key {key}", "Content-Type": "application/json"})
        urllib.request.urlopen(patch, timeout=10).read()
        check(driver.find_element(By.ID, "analysis").get_attribute("hidden") is not None,
              "no analysis panel while the last promotion ran without analysis")
        Select(tid("promote-select")).select_by_value("v3")
        wait_for(lambda: tid("promote-button").is_enabled(), "promote is enabled", 10)
        tid("promote-button").click()
        wait_for(lambda: driver.find_element(By.ID, "analysis").is_displayed(), "the analysis panel appears", 30)
        wait_for(lambda: status() == "FAILED", "analysis fails v3: the strip shows FAILED", 120)
        # The strip follows the event at once; the panel follows with the environment's
        # (rate-limited) refresh, and must end on the verdict that rolled v3 back: the
        # second failure in a row (failure_limit 2).
        wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, "#analysis-checks li.fail")
                 and "2 consecutive failures · last: fail" in driver.find_element(By.ID, "analysis-line").text.lower()
                 and "FAILED" in driver.find_element(By.ID, "promo-line").text,
                 "the verdict that rolled v3 back and its failed check show", 10)
        driver.save_screenshot(os.path.join(shots, "4-analysis-failed.png"))
        console([], "analysis")
    finally:
        stop_traffic.set()
        if driver is not None:
            driver.quit()
        demo.stop()
        if check.failures:
            print(f"kept {work} (demo.log) for a look")
        else:
            shutil.rmtree(work, ignore_errors=True)
    print(f"screenshots in {shots}")
    print(f"dashboard browser test: {check.passed} passed, {len(check.failures)} failed")
    return 1 if check.failures else 0


if __name__ == "__main__":
    sys.exit(main())
