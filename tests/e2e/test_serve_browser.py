"""The service's page, and VisualDL's pages on a run's records, in a real headless Chromium
(Debian's `chromium`) driven by Selenium through Debian's `chromedriver`.

Both programs are given by path, so Selenium Manager never runs (it would download a driver).
Skipped when selenium, chromium or chromedriver is missing (`pip install -e ".[dev]"`,
`apt-get install -y chromium chromium-driver`). Screenshots go to the test's tmp folder, and also
to $PADDLEGAN_LITE_SCREENSHOT_DIR when it is set.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi", reason="the service needs the serve extra: pip install -e .[serve]")
pytest.importorskip("selenium", reason="the browser tests need selenium: pip install -e .[dev]")

from helpers import free_port, running_service  # noqa: E402
from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

from paddlegan_lite.inference import Generator  # noqa: E402


def _which(*names: str) -> str | None:
    return next((path for name in names if (path := shutil.which(name))), None)


CHROMIUM = _which("chromium", "chromium-browser")
CHROMEDRIVER = _which("chromedriver")
pytestmark = [
    pytest.mark.skipif(
        CHROMIUM is None,
        reason="no chromium on PATH: apt-get install -y chromium (Debian's browser)",
    ),
    pytest.mark.skipif(
        CHROMEDRIVER is None,
        reason="no chromedriver on PATH: apt-get install -y chromium-driver",
    ),
]
# What a headless browser needs on a machine without a display or outside network: without the
# background-networking flags Chromium keeps trying Google's hosts.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",  # the tests may run as root
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--hide-scrollbars",
    "--mute-audio",
]
TIMEOUT = 30  # seconds for any one thing the page should do


class Browser:
    """A Selenium Chrome driver on Debian's chromium, and its network and console logs.

    chromedriver hands out each log entry once, so `events` and `console` keep them all.
    """

    def __init__(self, profile_dir: Path, width: int = 1100, height: int = 860):
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in CHROMIUM_FLAGS:
            options.add_argument(flag)
        options.add_argument(f"--user-data-dir={profile_dir}")
        options.add_argument(f"--window-size={width},{height}")
        # Start on about:blank: Debian's chromium otherwise opens its new-tab page, which loads
        # some 80 chrome:// resources before the test's page.
        startup = {"session.restore_on_startup": 4, "session.startup_urls": ["about:blank"]}
        options.add_experimental_option("prefs", startup)
        # performance: the DevTools Network events (every request); browser: the console
        options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
        log_path = profile_dir.parent / f"{profile_dir.name}_chromedriver.log"
        service = Service(executable_path=CHROMEDRIVER, log_output=str(log_path))
        with pytest.MonkeyPatch.context() as env:
            env.setenv("SE_OFFLINE", "true")  # should Selenium Manager ever run: no downloads
            self.driver = webdriver.Chrome(options=options, service=service)
        self.events: list[dict] = []
        self.console: list[dict] = []

    def open(self, url: str) -> None:
        self.driver.get(url)

    def run(self, js: str, *args):
        """The value of a JS function body (`return ...`), called with args."""
        return self.driver.execute_script(js, *args)

    def wait_for(self, js: str, timeout: float = TIMEOUT):
        """The JS expression's value once truthy (it may throw meanwhile: the page is loading)."""
        return self.wait_until(
            lambda _: self.run(f"try {{ return {js}; }} catch (e) {{}}"),
            timeout,
            f"waiting for {js}",
        )

    def wait_until(self, check, timeout: float = TIMEOUT, what: str = "", poll: float = 0.05):
        return WebDriverWait(self.driver, timeout, poll_frequency=poll).until(check, what)

    def element(self, element_id: str):
        return self.driver.find_element(By.ID, element_id)

    def type_into(self, element_id: str, text) -> None:
        """What a user does: select the box's text and type over it."""
        box = self.element(element_id)
        box.send_keys(Keys.CONTROL, "a")
        box.send_keys(str(text))

    def screenshot(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        assert self.driver.save_screenshot(str(path))
        return path

    def update_logs(self) -> None:
        for entry in self.driver.get_log("performance"):
            self.events.append(json.loads(entry["message"])["message"])
        self.console += self.driver.get_log("browser")

    def requested_urls(self) -> list[str]:
        self.update_logs()
        return [
            e["params"]["request"]["url"]
            for e in self.events
            if e["method"] == "Network.requestWillBeSent"
        ]

    def page_errors(self) -> list[str]:
        """Console errors and uncaught exceptions; not the console's line for each 4xx answer,
        which the page asks for on purpose."""
        self.update_logs()
        return [
            e["message"]
            for e in self.console
            if e["level"] == "SEVERE" and e.get("source") != "network"
        ]

    def close(self) -> None:
        self.driver.quit()


@pytest.fixture
def browser(tmp_path):
    chromium = Browser(tmp_path / "profile")
    yield chromium
    chromium.close()


def save_screenshot(browser: Browser, tmp_path: Path, name: str) -> Path:
    path = browser.screenshot(tmp_path / name)
    if os.environ.get("PADDLEGAN_LITE_SCREENSHOT_DIR"):
        shutil.copy(path, Path(os.environ["PADDLEGAN_LITE_SCREENSHOT_DIR"]) / name)
    return path


# The pixels an <img> shows, read back through a canvas (gray: the red channel).
PIXELS = """
  const img = document.getElementById(arguments[0]);
  const canvas = document.createElement("canvas");
  canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
  const context = canvas.getContext("2d");
  context.drawImage(img, 0, 0);
  const rgba = context.getImageData(0, 0, canvas.width, canvas.height).data;
  return {width: canvas.width, height: canvas.height,
          red: Array.from(rgba.filter((_, i) => i % 4 === 0))};
"""


def shown(browser: Browser, element: str) -> np.ndarray:
    value = browser.run(PIXELS, element)
    return np.array(value["red"], dtype=np.uint8).reshape(value["height"], value["width"])


def ready(element: str, **data) -> str:
    """JS: the <img> has loaded the image with these data-* values."""
    checks = [f'document.getElementById("{element}").dataset.state === "ready"']
    checks += [
        f'document.getElementById("{element}").dataset.{k} === "{v}"' for k, v in data.items()
    ]
    return " && ".join(checks)


def text_of(browser: Browser, element: str, prop: str = "textContent") -> str:
    return browser.run(f"return document.getElementById(arguments[0]).{prop};", element)


def test_page_explores_a_conditional_model(exported_models, browser, tmp_path):
    model = exported_models["acgan_mnist"]
    gen = Generator(model)
    with running_service(model) as (url, lines):
        browser.open(f"{url}/")
        browser.wait_for('document.body.dataset.ready === "true"')
        browser.wait_for(ready("sample", seed=0, label=0))
        first = shown(browser, "sample")
        np.testing.assert_array_equal(first, gen.generate([0], [0])[0, :, :, 0])

        # Changing the seed changes the image: the service's image for the new seed.
        browser.type_into("seed", 7)
        browser.wait_for(ready("sample", seed=7, label=0))
        seven = shown(browser, "sample")
        np.testing.assert_array_equal(seven, gen.generate([7], [0])[0, :, :, 0])
        assert not np.array_equal(seven, first)
        assert browser.element("seed-slider").get_attribute("value") == "7"

        # Choosing a class fetches that class.
        picker = Select(browser.element("label"))
        assert len(picker.options) == 10
        picker.select_by_value("3")
        browser.wait_for(ready("sample", seed=7, label=3))
        np.testing.assert_array_equal(shown(browser, "sample"), gen.generate([7], [3])[0, :, :, 0])

        # The grid: 16 seeds from 7, class 3, 4 x 4 cells of 28 + 2 pixels of padding.
        browser.wait_for(ready("grid", seeds="7-22"))
        grid = shown(browser, "grid")
        assert grid.shape == (2 + 4 * 30, 2 + 4 * 30)
        np.testing.assert_array_equal(grid[2:30, 2:30], gen.generate([7], [3])[0, :, :, 0])
        # The walk: an animated GIF that loaded; the model summary names the model.
        browser.wait_for(ready("walk", seedA=0, seedB=1))
        summary = text_of(browser, "summary")
        assert "acgan" in summary and "10 classes" in summary
        table = text_of(browser, "cfg", "innerText")
        assert "nz" in table and "100" in table

        browser.run("window.scrollTo(0, 0);")
        shot = save_screenshot(browser, tmp_path, "serve_page.png")
        viewport = browser.run("return [window.innerWidth, window.innerHeight];")
        assert Image.open(shot).size == tuple(viewport)
        # Offline: everything came from the service itself (or from blobs the page made).
        requested = browser.requested_urls()
        assert any(u.startswith(f"{url}/generate?seed=7&label=3") for u in requested)
        assert [u for u in requested if not u.startswith((url, "blob:"))] == []
        assert browser.page_errors() == []
    assert any("GET /generate?seed=7&label=3 200" in line for line in lines)


def test_page_on_an_unconditional_model(exported_models, browser):
    model = exported_models["mlp_gan_mnist"]
    with running_service(model) as (url, _):
        browser.open(f"{url}/")
        browser.wait_for(ready("sample", seed=0, label=""))
        assert not browser.element("label").is_displayed()  # no class picker
        assert "hidden" in browser.element("label-box").get_attribute("class")
        expected = Generator(model).generate([0])[0, :, :, 0]
        np.testing.assert_array_equal(shown(browser, "sample"), expected)

        # A bad value shows the service's message on the page, and the page keeps working.
        browser.type_into("walk-steps", 1)
        browser.element("walk-go").click()
        message = browser.wait_for('document.getElementById("error").textContent')
        assert "steps 1 is out of range" in message
        browser.type_into("seed", 5)
        browser.wait_for(ready("sample", seed=5))
        assert text_of(browser, "error") == ""
        assert browser.page_errors() == []
        assert [u for u in browser.requested_urls() if not u.startswith((url, "blob:"))] == []


# ---------------------------------------------------------------------- VisualDL
@contextlib.contextmanager
def running_visualdl(logdir: Path, timeout: float = 120):
    """`visualdl --logdir` on a free 127.0.0.1 port, as the README runs it: yields its url."""
    port = free_port()
    cmd = [
        sys.executable,
        "-c",
        "import sys; from visualdl.server.app import main; sys.exit(main())",
    ]
    cmd += ["--logdir", str(logdir), "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--language", "en", "--disable-telemetry"]  # telemetry would call out of the machine
    log = open(logdir.parent / "visualdl.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            assert proc.poll() is None, (logdir.parent / "visualdl.log").read_text()[-2000:]
            try:
                with urllib.request.urlopen(f"{url}/app/api/components", timeout=5):
                    break
            except OSError:
                assert time.monotonic() < deadline, f"visualdl did not answer in {timeout} s"
                time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def api_tags(browser: Browser, kind: str) -> set[str]:
    """The tags whose data VisualDL's API sent the page (200): its charts and images are
    canvases and blobs, so the tags are not in the DOM text."""
    browser.update_logs()
    prefix = f"/app/api/{kind}/list?"
    found = set()
    for event in browser.events:
        if event["method"] != "Network.responseReceived":
            continue
        response = event["params"]["response"]
        if prefix in response["url"] and response["status"] == 200:
            query = urllib.parse.parse_qs(response["url"].split("?", 1)[1])
            found.update(query.get("tag", []))
    return found


# Every canvas's pixels as one string: two equal readings a poll apart mean the charts' drawing
# animation has ended (for the screenshot).
CANVASES = "return Array.from(document.querySelectorAll('canvas'), c => c.toDataURL()).join();"


def wait_for_still_canvases(browser: Browser) -> None:
    last = [None]

    def still(_):
        now = browser.run(CANVASES)
        same, last[0] = now == last[0], now
        return same

    browser.wait_until(still, poll=0.25, what="the charts kept changing")


VDL_SCALARS = {"train/loss_d", "train/loss_g", "train/d_real", "train/d_fake"}


def test_visualdl_shows_a_real_runs_scalars_and_samples(exported_models, tmp_path):
    """VisualDL's own pages on the records of the run behind exported_models["acgan_mnist"]."""
    logdir = exported_models["acgan_mnist"].parent / "acgan_mnist" / "vdl"
    assert list(logdir.glob("vdlrecords.*")), f"no VisualDL records in {logdir}"
    local = ("blob:", "data:")
    with running_visualdl(logdir) as url:
        scalars = Browser(tmp_path / "profile_scalars", width=1280, height=900)
        try:
            scalars.open(f"{url}/app/scalar")
            scalars.wait_until(
                lambda _: VDL_SCALARS <= api_tags(scalars, "scalar"),
                timeout=60,
                what=f"VisualDL's API sending {sorted(VDL_SCALARS)}",
            )
            scalars.wait_for(f"document.querySelectorAll('canvas').length >= {len(VDL_SCALARS)}")
            assert "train" in scalars.run("return document.body.innerText;")  # the tag group
            wait_for_still_canvases(scalars)
            save_screenshot(scalars, tmp_path, "visualdl_scalars.png")
            assert [u for u in scalars.requested_urls() if not u.startswith((url, *local))] == []
        finally:
            scalars.close()
        images = Browser(tmp_path / "profile_images", width=1280, height=900)
        try:
            images.open(f"{url}/app/image")
            images.wait_for(
                "Array.from(document.images).some("
                "i => i.src.startsWith('blob:') && i.complete && i.naturalWidth > 28)",
                timeout=60,
            )
            assert api_tags(images, "image") == {"samples"}
            assert "samples" in images.run("return document.body.innerText;")
            # With --disable-telemetry the page loads nothing from outside this machine.
            assert [u for u in images.requested_urls() if not u.startswith((url, *local))] == []
            save_screenshot(images, tmp_path, "visualdl_images.png")
        finally:
            images.close()
