"""`vlae explore` in a real browser (Debian's chromium through selenium and chromium-driver), and every
kind of malformed request answered with a 4xx and a message.

The server runs as the user runs it (`python -m vlae_fast.cli explore CKPT --port P`) on a free loopback port.
"""
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zlib

import pytest

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(url: str, method: str = "GET", body: bytes | None = None, headers: dict | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


@pytest.fixture(scope="module")
def server(tiny_ckpt, mnist_dir, tmp_path_factory):
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    log = open(tmp_path_factory.mktemp("explore") / "server.log", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "vlae_fast.cli", "explore", str(tiny_ckpt), "--port", str(port),
                             "--data-dir", str(mnist_dir), "--device", "cpu"], stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            if proc.poll() is not None:
                break
            try:
                if request(url + "/api/info")[0] == 200:
                    break
            except OSError:
                time.sleep(0.25)
        log.seek(0)
        assert proc.poll() is None, f"the server stopped: {log.read()}"
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    log.seek(0)
    printed = log.read()
    assert f"at http://127.0.0.1:{port}/" in printed and "Traceback" not in printed, printed


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)):
        pytest.fail(f"the browser test needs {CHROMIUM} and {CHROMEDRIVER}: apt-get install -y chromium chromium-driver "
                    "(.ci/run does this)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1100,760",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(options=opts, service=Service(CHROMEDRIVER))  # no selenium-manager download
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def settled(driver, renders_before: int, timeout: float = 60) -> int:
    """Wait until the page has drawn more images than before and has nothing in flight or scheduled."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        body = driver.find_element("tag name", "body")
        renders, busy = int(body.get_attribute("data-renders")), body.get_attribute("data-busy")
        if renders > renders_before and busy == "0":
            time.sleep(0.2)  # a debounced request may still be scheduled: look again
            body = driver.find_element("tag name", "body")
            if body.get_attribute("data-busy") == "0" and int(body.get_attribute("data-renders")) == renders:
                return renders
        time.sleep(0.05)
    raise AssertionError(f"the page did not redraw within {timeout} s: {driver.find_element('id', 'status').text}")


def test_dragging_level_2_changes_the_image_and_no_other_level(server, browser, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains

    browser.get(server + "/")
    renders = settled(browser, 0)
    text = {l: browser.find_element("id", f"values-{l}").text for l in (1, 2, 3)}
    image = browser.find_element("id", "image").get_attribute("src")
    assert image.startswith("data:image/png;base64,") and text[2] == "(0.00, 0.00)"

    pad = browser.find_element("id", "pad-2")
    drag = ActionChains(browser).move_to_element(pad).click_and_hold()  # the pad's centre: (0, 0)
    for _ in range(5):
        drag = drag.move_by_offset(16, -12)  # right and up: both values grow
    drag.release().perform()
    settled(browser, renders)

    after = {l: browser.find_element("id", f"values-{l}").text for l in (1, 2, 3)}
    x, y = (float(v) for v in after[2].strip("()").split(","))
    assert x > 1 and y > 1, after[2]  # 80 px right, 60 px up on a 220 px pad spanning [-3, 3]
    assert after[1] == text[1] and after[3] == text[3]  # the other levels' codes did not move
    shown = browser.find_element("id", "image").get_attribute("src")
    assert shown != image
    # what is shown is the decode of what the page holds: level 2 moved, levels 1 and 3 as they were
    controls = browser.execute_script("return controls;")
    assert controls[0] == [0, 0] and controls[2] == [0, 0] and controls[1] == [x, y]
    status, body = request(server + "/api/decode", "POST", json.dumps({"controls": controls}).encode())
    assert status == 200 and json.loads(body)["image"] == shown
    browser.save_screenshot(str(tmp_path / "explore.png"))


def png_header(width: int, height: int) -> bytes:
    """A PNG that claims width x height pixels (its data is a stub): Pillow reads the size from the header."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    chunk = lambda kind, data: struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


def a_png(size: int = 28) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    noise = bytes((i * 7919) % 251 for i in range(size * size))  # incompressible enough to span many bytes
    Image.frombytes("L", (size, size), noise).save(buf, format="PNG")
    return buf.getvalue()


MALFORMED = [  # (method, path, body, headers, status)
    ("POST", "/api/decode", b"not json", {}, 400),
    ("POST", "/api/decode", b"[]", {}, 400),
    ("POST", "/api/decode", b'{"controls": [[0, 0], [0, 0]]}', {}, 400),  # 2 levels for 3
    ("POST", "/api/decode", b'{"controls": [[0, 0], [0, 0, 0], [0, 0]]}', {}, 400),  # 3 numbers for a 2-d level
    ("POST", "/api/decode", b'{"controls": [[0, 0], [NaN, 0], [0, 0]]}', {}, 400),
    ("POST", "/api/decode", b'{"controls": [[0, 0], [Infinity, 0], [0, 0]]}', {}, 400),
    ("POST", "/api/decode", b'{"controls": [[0, 0], [1e308, 0], [0, 0]]}', {}, 400),  # finite but far out
    ("POST", "/api/decode", b'{"controls": [[0, 0], [10.5, 0], [0, 0]]}', {}, 400),  # just past the limit
    ("POST", "/api/decode", b'{"controls": [[0, 0], ["1", 0], [0, 0]]}', {}, 400),
    ("POST", "/api/decode", b'{"controls": [[0, 0], [true, 0], [0, 0]]}', {}, 400),
    ("POST", "/api/decode", b'{"controls": [[0, 0], null, [0, 0]]}', {}, 400),
    ("POST", "/api/decode", b"[" * 100000, {}, 413),  # over 64 KiB
    ("GET", "/api/decode", None, {}, 405),
    ("GET", "/api/prior", None, {}, 400),  # no seed
    ("GET", "/api/prior?seed=-1", None, {}, 400),
    ("GET", "/api/prior?seed=abc", None, {}, 400),
    ("GET", "/api/prior?seed=99999999999999999999", None, {}, 400),
    ("GET", "/api/posterior?index=10000", None, {}, 400),  # the test set has 0 .. 9999
    ("GET", "/api/posterior?index=1.5", None, {}, 400),
    ("POST", "/api/encode", b"", {}, 400),
    ("POST", "/api/encode", b"GIF89a but not really", {}, 415),
    ("POST", "/api/encode", a_png()[:400], {}, 415),  # truncated mid-data
    ("POST", "/api/encode", png_header(20000, 20000), {}, 413),  # a decompression bomb, refused from its header
    ("POST", "/api/encode", b"\0" * 16, {"Content-Length": str((4 << 20) + 1)}, 413),  # over 4 MiB: refused unread
    ("GET", "/api/info", None, {"Host": "attacker.example"}, 400),  # DNS rebinding
    ("GET", "/api/nothing", None, {}, 404),
]


@pytest.mark.parametrize("method,path,body,headers,status", MALFORMED, ids=[f"{m} {p} {i}" for i, (m, p, *_ ) in enumerate(MALFORMED)])
def test_malformed_requests_get_a_4xx_and_a_message(server, method, path, body, headers, status):
    got, answer = request(server + path, method, body, headers)
    assert got == status, answer[:300]
    assert b"Traceback" not in answer and answer.strip()
    if "Host" not in headers:
        assert json.loads(answer)["error"]


def test_good_requests_answer(server):
    status, body = request(server + "/api/encode", "POST", a_png(64))
    assert status == 200, body
    res = json.loads(body)
    assert [len(c) for c in res["controls"]] == [2, 2, 2] and res["image"].startswith("data:image/png;base64,")
    status, body = request(server + "/api/posterior?index=9999")
    assert status == 200 and len(json.loads(body)["controls"]) == 3
    status, body = request(server + "/api/decode", "POST", b'{"controls": [[0, 0], [10, -10], [0.5, 3]]}')
    assert status == 200, body
