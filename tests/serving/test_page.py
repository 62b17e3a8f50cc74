"""The page at `/` of the local server's REST port, in a real headless Chromium driven by Selenium.

The page's drawn pixels are checked against the class map that TF Serving's gRPC API returns for the same
image (official stubs, through `FCNClient`) coloured with `keras_fcn.visualize`'s palette. Screenshots are
saved under pytest's tmp path and, when `KERAS_FCN_ARTIFACTS` names a folder, there too.
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import urllib.error
import urllib.request

import numpy as np
import pytest
from PIL import Image
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait
from serving_testing import build_test_model, random_images

from keras_fcn.export import export_saved_model
from keras_fcn.serving import FCNClient, ModelServer
from keras_fcn.serving.wire.images import encode_png
from keras_fcn.visualize import colorize

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="needs Chromium and its driver on PATH (Debian: apt-get install chromium chromium-driver)",
)

NAMES = {1: ["background", "road", "car"], 2: ["background", "sky", "tree", "person", "dog"]}
PIXEL_LIMIT = 64 * 64  # serve_png refuses larger requests: the page must say so
WAIT_SECONDS = 120


@pytest.fixture(scope="module")
def base_path(tmp_path_factory):
    """Two versions with different classes, served as two models; returns (models config, {version: model})."""
    folder = tmp_path_factory.mktemp("page")
    base = str(folder / "fcn")
    models = {}
    for version, names in NAMES.items():
        model = build_test_model(len(names), seed=version, variant="fcn32s" if version == 1 else "fcn8s")
        export_saved_model(
            model, base, version=version, class_names=names, max_decoded_pixels=PIXEL_LIMIT, verbose=False
        )
        models[version] = model
    # Two models for the pickers: `fcn` serves both versions, `first` only version 1.
    config = folder / "models.config"
    entries = [
        f'config {{ name: "{name}" base_path: "{base}" model_version_policy {{ {policy} }} }}'
        for name, policy in (("fcn", "all {}"), ("first", "specific { versions: 1 }"))
    ]
    config.write_text(f"model_config_list {{ {' '.join(entries)} }}\n")
    return str(config), models


@pytest.fixture(scope="module")
def server(base_path):
    with ModelServer(model_config_file=base_path[0], port=0, rest_port=0) as started:
        yield started


@pytest.fixture(scope="module")
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1200,820"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def open_page(browser, server) -> None:
    browser.get(server.rest_address + "/")
    wait_for_state(browser, {"ready", "error"})


def wait_for_state(browser, states: set[str]) -> str:
    body = browser.find_element(By.TAG_NAME, "body")
    WebDriverWait(browser, WAIT_SECONDS).until(lambda _: body.get_attribute("data-state") in states)
    return body.get_attribute("data-state")


def upload(browser, path) -> str:
    """Chooses `path` in the file input; returns the page's state once it has answered."""
    browser.execute_script("document.body.dataset.state = 'sent'")
    browser.find_element(By.ID, "file").send_keys(str(path))
    return wait_for_state(browser, {"done", "error"})


def canvas_pixels(browser, element_id: str) -> np.ndarray:
    """The RGBA pixels drawn on a canvas, `(H, W, 4)` uint8 (read back as a lossless PNG)."""
    url = browser.execute_script(f"return document.getElementById('{element_id}').toDataURL('image/png')")
    data = base64.b64decode(url.split(",", 1)[1])
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGBA"))


def save_screenshot(browser, tmp_path, name: str) -> str:
    path = str(tmp_path / name)
    assert browser.save_screenshot(path), path
    artifacts = os.environ.get("KERAS_FCN_ARTIFACTS")
    if artifacts:
        os.makedirs(artifacts, exist_ok=True)
        shutil.copy(path, os.path.join(artifacts, name))
    return path


def grpc_class_map(server, image_png: bytes, version: int, model: str = "fcn") -> np.ndarray:
    with FCNClient(server.grpc_address, model, version=version) as client:
        answer = client.predict([image_png])
    assert answer.model_version == version
    return answer.class_ids[0]


def check_drawing(browser, image: np.ndarray, class_ids: np.ndarray, opacity: float, zero: bool = False) -> None:
    """The class-map canvas holds the palette colour of each class (class 0 left clear unless `zero`);
    the visible canvas is the image with those colours blended in at the slider's opacity."""
    palette = colorize(np.arange(class_ids.max() + 1))  # keras_fcn's colours, independent of the page
    drawn = canvas_pixels(browser, "classmap")
    assert drawn.shape[:2] == class_ids.shape
    painted = (class_ids != 0) | zero
    np.testing.assert_array_equal(drawn[..., 3], np.where(painted, 255, 0))
    np.testing.assert_array_equal(drawn[painted][:, :3], palette[class_ids][painted])
    view = canvas_pixels(browser, "view")[..., :3].astype(np.float64)
    colours = palette[class_ids].astype(np.float64)
    blended = np.where(painted[..., None], (1 - opacity) * image + opacity * colours, image)
    np.testing.assert_allclose(view, blended, atol=2)  # 8-bit compositing rounds


def legend(browser) -> dict[str, bool]:
    """{class name: present in the class map} as the legend lists them."""
    items = browser.find_elements(By.CSS_SELECTOR, "#legend li")
    names = [item.find_element(By.CLASS_NAME, "name").text for item in items]
    return {name: "absent" not in item.get_attribute("class") for name, item in zip(names, items, strict=True)}


def test_extension_lists_models_and_class_colours(server):
    with urllib.request.urlopen(server.rest_address + "/v1/keras_fcn/models", timeout=30) as reply:
        assert json.load(reply) == {
            "models": [{"name": "fcn", "versions": ["2", "1"]}, {"name": "first", "versions": ["1"]}]
        }
    with urllib.request.urlopen(server.rest_address + "/v1/keras_fcn/models/fcn/versions/1", timeout=30) as reply:
        info = json.load(reply)
    assert info["name"] == "fcn" and info["version"] == "1" and info["class_names"] == NAMES[1]
    assert {"serving_default", "serve_encoded", "serve_png"} <= set(info["signatures"])
    assert info["colors"] == colorize(np.arange(3)).tolist()
    for path, message in (
        ("/v1/keras_fcn/models/nope", "Servable not found for request: Latest(nope)"),
        ("/v1/keras_fcn/models/fcn/versions/7", "Servable not found for request: Specific(fcn, 7)"),
        ("/v1/keras_fcn/other", "Malformed request: GET /v1/keras_fcn/other"),
    ):
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(server.rest_address + path, timeout=30)
        assert refused.value.code == 404 and json.load(refused.value) == {"error": message}
    with urllib.request.urlopen(server.rest_address + "/", timeout=30) as reply:
        assert reply.headers["Content-Type"].startswith("text/html")
        assert "default-src 'self'" in reply.headers["Content-Security-Policy"]


def test_page_draws_the_class_map_grpc_returns(server, browser, tmp_path):
    open_page(browser, server)
    versions = Select(browser.find_element(By.ID, "version"))
    assert [o.text for o in versions.options] == ["latest (2)", "2", "1"]
    assert browser.find_element(By.ID, "version-picker").is_displayed()
    models = Select(browser.find_element(By.ID, "model"))
    assert [o.text for o in models.options] == ["fcn", "first"]

    image = random_images(1, 40, 56, seed=3)[0]
    path = tmp_path / "street.png"
    path.write_bytes(encode_png(image))
    assert upload(browser, path) == "done", browser.find_element(By.ID, "error").text
    class_ids = grpc_class_map(server, path.read_bytes(), version=2)
    assert len(np.unique(class_ids)) > 1  # a map of one class would check little
    check_drawing(browser, image, class_ids, opacity=0.6)
    assert legend(browser) == {name: k in class_ids for k, name in enumerate(NAMES[2])}
    meta = browser.find_element(By.ID, "meta").text
    assert meta.startswith("fcn, version 2 (serve_png)") and "56×40 px" in meta and " ms" in meta

    view = browser.find_element(By.ID, "view")
    ActionChains(browser).move_to_element_with_offset(view, 7, -5).perform()
    pointer = browser.find_element(By.ID, "pointer")
    x, y = int(pointer.get_attribute("data-x")), int(pointer.get_attribute("data-y"))
    assert int(pointer.get_attribute("data-class-id")) == class_ids[y, x]
    assert pointer.text == f"({x}, {y}): {NAMES[2][class_ids[y, x]]}"
    save_screenshot(browser, tmp_path, "page_overlay.png")

    # Class 0 painted too, at another opacity.
    browser.find_element(By.ID, "background").click()
    browser.execute_script(
        "const s = document.getElementById('opacity'); s.value = 25; s.dispatchEvent(new Event('input'))"
    )
    check_drawing(browser, image, class_ids, opacity=0.25, zero=True)
    browser.find_element(By.ID, "background").click()
    browser.execute_script(
        "const s = document.getElementById('opacity'); s.value = 60; s.dispatchEvent(new Event('input'))"
    )

    # Another version from the picker: the same image is sent again, to version 1 with its own classes.
    browser.execute_script("document.body.dataset.state = 'sent'")
    versions.select_by_value("1")
    assert wait_for_state(browser, {"done", "error"}) == "done", browser.find_element(By.ID, "error").text
    class_ids = grpc_class_map(server, path.read_bytes(), version=1)
    check_drawing(browser, image, class_ids, opacity=0.6)
    assert legend(browser) == {name: k in class_ids for k, name in enumerate(NAMES[1])}
    assert browser.find_element(By.ID, "meta").text.startswith("fcn, version 1 (serve_png)")

    # Another model: `first` serves one version, so its version picker is hidden.
    browser.execute_script("document.body.dataset.state = 'sent'")
    models.select_by_value("first")
    assert wait_for_state(browser, {"done", "error"}) == "done", browser.find_element(By.ID, "error").text
    assert not browser.find_element(By.ID, "version-picker").is_displayed()
    assert browser.find_element(By.ID, "meta").text.startswith("first, version 1 (serve_png)")
    check_drawing(browser, image, grpc_class_map(server, path.read_bytes(), version=1, model="first"), opacity=0.6)


def test_page_sends_a_rotated_jpeg_as_shown(server, browser, tmp_path):
    # EXIF orientation 6: shown turned a quarter, which TensorFlow's decoder ignores; the page sends the
    # pixels it shows, so the class map fits the picture on screen.
    open_page(browser, server)
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "phone.jpg"
    Image.fromarray(random_images(1, 24, 40, seed=5)[0]).save(path, exif=exif.tobytes())
    assert upload(browser, path) == "done", browser.find_element(By.ID, "error").text
    assert "40×24 px" not in browser.find_element(By.ID, "meta").text
    assert "24×40 px" in browser.find_element(By.ID, "meta").text  # width 24, height 40 once turned
    assert canvas_pixels(browser, "classmap").shape[:2] == (40, 24)


def test_page_errors_are_readable(server, browser, tmp_path):
    open_page(browser, server)
    notes = tmp_path / "notes.txt"
    notes.write_text("not a picture\n")
    assert upload(browser, notes) == "error"
    error = browser.find_element(By.ID, "error")
    assert error.is_displayed() and "notes.txt is not an image" in error.text

    # The same refusal for a file dropped on the page (a drop event carrying the file).
    browser.execute_script(
        """document.body.dataset.state = 'sent';
        const files = new DataTransfer();
        files.items.add(new File(['plain text'], 'dropped.txt', {type: 'text/plain'}));
        document.getElementById('drop').dispatchEvent(new DragEvent('drop', {dataTransfer: files}));"""
    )
    assert wait_for_state(browser, {"done", "error"}) == "error"
    assert "dropped.txt is not an image" in error.text

    large = tmp_path / "large.png"
    large.write_bytes(encode_png(random_images(1, 72, 72)[0]))  # 5184 pixels, over the limit
    assert upload(browser, large) == "error"
    assert "images too large: 5184 decoded pixels in one request, the limit is 4096" in error.text
    save_screenshot(browser, tmp_path, "page_error.png")


def test_page_says_when_the_server_is_gone(base_path, browser, tmp_path):
    server = ModelServer(model_config_file=base_path[0], port=0, rest_port=0).start()
    try:
        open_page(browser, server)
    finally:
        server.stop()
    path = tmp_path / "image.png"
    path.write_bytes(encode_png(random_images(1, 16, 16)[0]))
    assert upload(browser, path) == "error"
    assert "Cannot reach the server" in browser.find_element(By.ID, "error").text
