"""`cfd3d serve` in a real browser: Debian's chromium driven by Playwright (headless,
software WebGL). The app runs in a subprocess on 127.0.0.1; every request the page makes
elsewhere is refused and reported."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cfd3d.batch.plan import RunSpec

pytest.importorskip("gradio", reason="the web app needs the ui extra: pip install 'cfd3d[ui]'")
sync_api = pytest.importorskip(
    "playwright.sync_api", reason="the browser test needs Playwright: pip install 'cfd3d[dev]'"
)

SMALL_EXPORT = {"mesh_resolution": 24, "turntable_frames": 3, "turntable_size": 32}
STEPS = 16
CHROMIUM_NAMES = ("chromium", "chromium-browser")
CHROMIUM_ARGS = [
    "--no-sandbox",  # root in a container has no user namespace for the sandbox
    "--use-angle=swiftshader",  # software WebGL: no GPU needed
    "--enable-unsafe-swiftshader",
]


def find_chromium() -> str | None:
    return next(filter(None, map(shutil.which, CHROMIUM_NAMES)), None)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The app on 127.0.0.1:PORT with small exports; yields ``(url, out folder)``."""
    root = tmp_path_factory.mktemp("serve")
    out, port = root / "out", free_port()
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "GRADIO_TEMP_DIR": str(root / "gradio"),
        "HF_HUB_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
    }
    cmd = [sys.executable, "-m", "cfd3d.cli", "serve", "--port", str(port), "--out", str(out)]
    cmd += ["--device", "cpu", "--overrides", json.dumps(SMALL_EXPORT), "--preview-every", "2"]
    log = (root / "server.log").open("w")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 90
    while True:
        assert proc.poll() is None, (root / "server.log").read_text()
        try:
            with urllib.request.urlopen(url, timeout=2):
                break
        except OSError:
            assert time.monotonic() < deadline, "the app did not start within 90 s"
            time.sleep(0.2)
    yield url, out
    proc.terminate()
    try:
        proc.wait(timeout=30)
    finally:
        log.close()
        if proc.poll() is None:
            proc.kill()


@pytest.fixture(scope="module")
def browser():
    chromium = find_chromium()
    if chromium is None:
        reason = (
            "no chromium browser found (install the Debian package: apt-get install chromium; "
            "'make test' does it where apt-get is available)"
        )
        if os.environ.get("CFD3D_REQUIRE_BROWSER") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=chromium, headless=True, args=CHROMIUM_ARGS
        )
        yield browser
        browser.close()


@pytest.fixture
def page(browser, server):
    """A fresh page on the app; requests that leave 127.0.0.1 are refused and listed."""
    url, _ = server
    context = browser.new_context(viewport={"width": 1280, "height": 1000}, accept_downloads=True)
    page = context.new_page()
    outside: list[str] = []

    def local_only(route) -> None:
        if route.request.url.startswith((url, "blob:", "data:")):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    page.route("**/*", local_only)
    page.goto(url)
    yield page
    context.close()
    assert outside == [], f"the page reached beyond 127.0.0.1: {outside}"


def canvas_drawn(png: bytes) -> float:
    """The fraction of the image's central part that differs from its commonest colour."""
    rgb = np.asarray(Image.open(BytesIO(png)).convert("RGB"), dtype=np.int32)
    h, w, _ = rgb.shape
    centre = rgb[h // 5 : h - h // 5, w // 5 : w - w // 5].reshape(-1, 3)
    colours, counts = np.unique(centre, axis=0, return_counts=True)
    background = colours[counts.argmax()]
    return float((np.abs(centre - background).sum(axis=1) > 30).mean())


def test_a_prompt_becomes_a_model_in_the_3d_viewer_with_downloads(page, server):
    _, out = server
    expect = sync_api.expect
    page.locator("#prompt textarea").fill("a red cube")
    page.locator("#steps input").fill(str(STEPS))
    page.locator("#generate").click()
    status = page.locator("#status textarea")
    expect(status).to_have_value(re.compile(rf"step \d+ / {STEPS} · t \d+ · loss"), timeout=60_000)
    expect(page.locator("#preview img")).to_be_visible(timeout=60_000)
    expect(status).to_have_value(re.compile(rf"^done: {STEPS} steps"), timeout=120_000)

    canvas = page.locator("#model canvas")
    expect(canvas).to_be_visible(timeout=30_000)
    drawn = 0.0
    for _ in range(40):  # the viewer draws once the GLB has loaded
        drawn = canvas_drawn(canvas.screenshot())
        if drawn > 0.05:
            break
        page.wait_for_timeout(250)
    assert drawn > 0.05, f"the 3D viewer stayed blank ({drawn:.3f} of its centre drawn)"
    video = page.locator("#video video")
    expect(video).to_have_attribute("src", re.compile(r"turntable\.mp4$"))

    spec = RunSpec("a red cube", preset="cpu-demo", steps=STEPS, overrides=SMALL_EXPORT)
    folder = out / spec.folder_name()
    assert [p.name for p in out.iterdir()] == [folder.name]
    assert (folder / "summary.json").exists() and (folder / "config.json").exists()
    links = page.locator("#downloads a[download]")
    expect(links).to_have_count(3)
    for i, name in enumerate(("model.glb", "turntable.mp4", "turntable.gif")):
        link = links.nth(i)
        assert link.get_attribute("download") == name
        with page.expect_download() as download:
            link.click()
        assert Path(download.value.path()).read_bytes() == (folder / name).read_bytes(), name


def test_an_unknown_word_and_bad_steps_show_a_message(page, server):
    _, out = server
    expect = sync_api.expect
    status = page.locator("#status textarea")
    page.locator("#prompt textarea").fill("a purple dragon")
    page.locator("#steps input").fill("4")
    page.locator("#generate").click()
    expect(status).to_have_value(
        re.compile(r"^Error: the embedded prior does not know the word\(s\) 'dragon'.*prior-vocab"),
        timeout=60_000,
    )
    page.locator("#prompt textarea").fill("a red cube")
    page.locator("#steps input").fill("-3")
    page.locator("#generate").click()
    expect(status).to_have_value(re.compile(r"^Error: steps must be a whole number of at least 1"))
    assert "Traceback" not in page.content()
    assert not any("dragon" in p.name for p in out.iterdir())
