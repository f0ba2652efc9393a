"""End to end: scripts/serve.py on loopback, driven by a real headless Chromium through selenium.

The page is loaded, an image is uploaded through its file input, and the test waits (bounded)
until the original, the mask and the overlay images have loaded; a screenshot is saved to
``artifacts/serve_screenshot.png``. Skipped, with the reason, when selenium, Debian's
``chromium`` or ``chromedriver`` is not installed (``apt-get install chromium chromium-driver``).

Run as a script to take the README screenshot with a trained experiment::

    python tests/serve/test_browser.py --weights_path /tmp/serve_w/unet_shapes \\
        --image data/shapes/test_image/test_0003.png --out docs/img/serve_screenshot.png
"""

import contextlib
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(REPO, "scripts", "serve.py")
ARTIFACTS = os.path.join(REPO, "artifacts")
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--hide-scrollbars")
SERVER_START_TIMEOUT = 240  # seconds: loading TensorFlow on a busy 2-core machine is slow
RESULT_TIMEOUT = 120


def find_browser():
    """``(chromium, chromedriver)`` paths, or the reason they cannot be used."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return None, "selenium is not installed (pip install selenium; it is in the dev extra)"
    chromium = os.environ.get("KSEG_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    driver = os.environ.get("KSEG_CHROMEDRIVER") or shutil.which("chromedriver")
    if not chromium or not driver:
        missing = " and ".join(n for n, p in (("chromium", chromium), ("chromedriver", driver)) if not p)
        return None, (f"{missing} not installed; install Debian's packages with "
                      "`apt-get install -y chromium chromium-driver` to run the browser test")
    return (chromium, driver), None


@contextlib.contextmanager
def demo_server(weights_path, *extra_args, cwd=None):
    """Start scripts/serve.py on 127.0.0.1 with a free port; yield its URL; stop it with SIGTERM."""
    proc = subprocess.Popen(
        [sys.executable, SCRIPT, "--weights_path", weights_path, "--host", "127.0.0.1", "--port", "0",
         *extra_args],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=cwd or REPO,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONUNBUFFERED="1"))
    lines, q = [], queue.Queue()

    def drain():
        for line in proc.stdout:
            lines.append(line)
            q.put(line)
        q.put(None)

    threading.Thread(target=drain, daemon=True).start()
    try:
        url, deadline = None, time.monotonic() + SERVER_START_TIMEOUT
        while url is None:
            try:
                line = q.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                line = ""
            if line is None or time.monotonic() > deadline:
                raise AssertionError("the demo server did not start:\n" + "".join(lines[-30:]))
            m = re.search(r"on (http://127\.0\.0\.1:\d+/)", line)
            url = m.group(1) if m else None
        yield url
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        demo_server.output = "".join(lines)


@contextlib.contextmanager
def chromium_driver(chromium, chromedriver, profile_dir, size=(1280, 1000)):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for flag in CHROMIUM_FLAGS:
        opts.add_argument(flag)
    opts.add_argument(f"--user-data-dir={profile_dir}")
    opts.add_argument(f"--window-size={size[0]},{size[1]}")
    service = Service(executable_path=chromedriver, log_output=os.path.join(profile_dir, "..", "chromedriver.log"))
    driver = webdriver.Chrome(options=opts, service=service)
    try:
        driver.set_page_load_timeout(60)
        yield driver
    finally:
        driver.quit()


IMAGES_LOADED_JS = """
return !document.getElementById('result').hidden &&
  ['original', 'mask', 'overlay'].every(function (id) {
    var img = document.getElementById(id);
    return img.complete && img.naturalWidth > 0;
  });
"""


def upload_and_wait(driver, url, image_path):
    """Open the page, upload ``image_path`` through the file input and wait for the results."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url)
    driver.find_element(By.ID, "file").send_keys(os.path.abspath(image_path))
    driver.find_element(By.ID, "submit").click()
    WebDriverWait(driver, RESULT_TIMEOUT, poll_frequency=0.25).until(
        lambda d: d.execute_script(IMAGES_LOADED_JS) or d.find_element(By.ID, "error").is_displayed())
    error = driver.find_element(By.ID, "error")
    assert not error.is_displayed(), f"the page shows an error: {error.text}"


def fit_window_to_page(driver):
    """Grow the window so a screenshot shows the whole page (headless has no scrolling screenshots)."""
    width, height, chrome_h = driver.execute_script(
        "return [window.outerWidth, document.documentElement.scrollHeight, "
        "window.outerHeight - window.innerHeight];")
    driver.set_window_size(width, min(height + chrome_h, 4000))
    time.sleep(0.3)


def test_upload_through_the_page_in_chromium(tiny_experiment, tiny_dataset, tmp_path):
    browser, reason = find_browser()
    if browser is None:
        pytest.skip(reason)
    from PIL import Image
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    test_dir = os.path.join(tiny_dataset, "test_image")
    image_path = os.path.join(test_dir, sorted(os.listdir(test_dir))[0])
    with Image.open(image_path) as im:
        width, height = im.size
    (tmp_path / "profile").mkdir()
    with demo_server(tiny_experiment) as url, chromium_driver(*browser, str(tmp_path / "profile")) as driver:
        upload_and_wait(driver, url, image_path)
        sizes = driver.execute_script(
            "return ['original', 'mask', 'overlay'].map(id => [document.getElementById(id).naturalWidth, "
            "document.getElementById(id).naturalHeight]);")
        assert sizes == [[width, height]] * 3  # all three at the image's own size
        rows = driver.find_elements(By.CSS_SELECTOR, "#legend tbody tr")
        assert [r.text.split(" \u00b7 ")[0] for r in rows] == ["0", "1", "2", "3"]
        assert "c0" in rows[0].text
        swatch = rows[1].find_element(By.CSS_SELECTOR, ".swatch").value_of_css_property("background-color")
        assert swatch in ("rgba(128, 0, 0, 1)", "rgb(128, 0, 0)")  # VOC colour of class 1
        meta = driver.find_element(By.ID, "meta").text
        assert f"{width}\u00d7{height}" in meta and "ms" in meta
        os.makedirs(ARTIFACTS, exist_ok=True)
        shot = os.path.join(ARTIFACTS, "serve_screenshot.png")
        fit_window_to_page(driver)
        assert driver.save_screenshot(shot)
        with Image.open(shot) as im:
            assert im.size[0] > 0 and im.size[1] > 0

        # a file that is not an image: the page shows the server's JSON error
        bad = tmp_path / "notes.txt"
        bad.write_text("not an image\n")
        driver.find_element(By.ID, "file").send_keys(str(bad))
        driver.find_element(By.ID, "submit").click()
        WebDriverWait(driver, 60, poll_frequency=0.25).until(
            lambda d: d.find_element(By.ID, "error").is_displayed())
        assert "not a supported image" in driver.find_element(By.ID, "error").text
    assert "stopped" in demo_server.output  # SIGTERM ends the server cleanly


def take_readme_screenshot(weights_path, image_path, out, size=(1180, 780)):
    """Upload ``image_path`` to a server on ``weights_path`` and save a compact screenshot at ``out``."""
    from PIL import Image

    browser, reason = find_browser()
    if browser is None:
        raise SystemExit(reason)
    with tempfile.TemporaryDirectory() as tmp:
        os.mkdir(os.path.join(tmp, "profile"))
        with demo_server(weights_path) as url, chromium_driver(*browser, os.path.join(tmp, "profile"), size) as d:
            upload_and_wait(d, url, image_path)
            fit_window_to_page(d)
            raw = os.path.join(tmp, "shot.png")
            d.save_screenshot(raw)
        with Image.open(raw) as im:
            # an adaptive 256-colour palette keeps the README image small
            im.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(out, optimize=True)
    print(f"wrote {out} ({os.path.getsize(out) // 1024} KB)")


if __name__ == "__main__":
    import argparse

    p = argparse.ArgumentParser(description="take the README screenshot of the web demo")
    p.add_argument("--weights_path", required=True)
    p.add_argument("--image", required=True)
    p.add_argument("--out", default=os.path.join(REPO, "docs", "img", "serve_screenshot.png"))
    p.add_argument("--width", type=int, default=1180)
    p.add_argument("--height", type=int, default=780)
    a = p.parse_args()
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    take_readme_screenshot(a.weights_path, a.image, a.out, (a.width, a.height))
