"""The web demo's bounds on one request: the work budget (sliding windows), the waiting
queue, and the body size with and without ``Content-Length`` (chunked uploads).

Behaviour is asserted, not wall time: the number of windows the model ran, the status
and headers of the answers, and whether an answer arrived while the model was still
blocked. The model is a hand-written per-pixel function (see ``test_app.py``); chunked
uploads go through Werkzeug's real threaded server on loopback, as ``kseg serve`` runs it.
"""

import contextlib
import http.client
import io
import json
import threading

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("flask", reason="the web demo needs Flask (pip install 'kseg[serve]')")

from kseg.predict import Predictor  # noqa: E402
from kseg.serve import app as app_module  # noqa: E402
from kseg.serve import create_app  # noqa: E402
from kseg.serve.app import ModelGate, QueueFull  # noqa: E402

JOIN = 30  # seconds: only reached when something hangs, which is the failure being tested
RED, BLUE = (255, 0, 0), (0, 0, 255)
FAKE_CONFIG = {"model_name": "fake", "n_classes": 3, "input_height": 32, "input_width": 32,
               "image_init": "divide", "resize_op": 1, "class_names": ["background", "red", "blue"]}


def colour_run(batch):
    """Per-pixel probabilities from the (x/255) colour: red -> class 1 (0.8), blue -> class 2 (0.9)."""
    x = np.asarray(batch)
    red = (x[..., 0] > 0.5) & (x[..., 2] < 0.5)
    blue = (x[..., 2] > 0.5) & (x[..., 0] < 0.5)
    out = np.zeros(x.shape[:3] + (3,), np.float32)
    out[..., 0] = 1.0
    out[red] = (0.1, 0.8, 0.1)
    out[blue] = (0.05, 0.05, 0.9)
    return out


def fake_app(run=colour_run, **kwargs):
    kwargs.setdefault("warmup", False)
    return create_app(predictor=Predictor(run, dict(FAKE_CONFIG)), **kwargs)


def png_bytes(arr):
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


def split_image(h, w, left):
    img = np.zeros((h, w, 3), np.uint8)
    img[:, :left] = RED
    img[:, left:] = BLUE
    return img


def post(client, data, filename="x.png"):
    return client.post("/api/predict", data={"image": (io.BytesIO(data), filename)},
                       content_type="multipart/form-data")


def assert_json_error(resp, status, *words):
    assert resp.status_code == status, resp.get_data(as_text=True)
    assert resp.mimetype == "application/json"
    body = resp.get_json()
    assert body["status"] == status and body["error"] and "\n" not in body["error"]
    for w in words:
        assert w in body["error"], body["error"]
    return body


class CountingRun:
    """``colour_run`` that counts the windows (batch rows) it is given; with ``block`` set,
    every call first waits until :attr:`go` is set and reports that it started."""

    def __init__(self, block=False):
        self.windows = 0
        self.calls = 0
        self.started = threading.Event()
        self.go = threading.Event()
        if not block:
            self.go.set()
        self._lock = threading.Lock()

    def __call__(self, batch):
        with self._lock:
            self.calls += 1
            self.windows += int(np.asarray(batch).shape[0])
        self.started.set()
        assert self.go.wait(JOIN), "the test never released the model"
        return colour_run(batch)


def blank_png(w, h):
    buf = io.BytesIO()
    Image.new("RGB", (w, h)).save(buf, "PNG")
    return buf.getvalue()


def fetch_mask(client, r):
    resp = client.get(r["mask_url"])
    assert resp.status_code == 200
    return np.asarray(Image.open(io.BytesIO(resp.data)))


# ------------------------------------------------------------------------------ the work budget
def test_a_big_blank_upload_is_predicted_within_the_window_budget():
    data = blank_png(4000, 4000)
    assert len(data) < 100_000  # a small file that used to hold the model for a minute
    run = CountingRun()
    app = fake_app(run)  # default limits: slide above 1024x1024, at most 64 windows of 32x32
    c = app.test_client()
    resp = post(c, data, "blank.png")
    assert resp.status_code == 200, resp.get_data(as_text=True)
    r = resp.get_json()
    assert r["image_size"] == {"width": 4000, "height": 4000}
    assert r["mode"] == "slide" and r["downscaled"] is True
    assert 0 < run.windows == r["windows"] <= 64  # the model saw no more than the budget
    ph, pw = r["prediction_size"]["height"], r["prediction_size"]["width"]
    assert ph == pw and 32 <= ph < 4000
    # the budget is used, not wasted: one pixel more per side would need more windows
    slide = app.extensions["kseg"].slide_predictor
    assert len(slide.windows(ph, pw)) <= 64 < len(slide.windows(ph + 1, pw + 1))
    # the mask is at the upload's size, and the statistics count original pixels
    mask = fetch_mask(c, r)
    assert mask.shape == (4000, 4000) and not mask.any()
    assert [x["area_px"] for x in r["classes"]] == [4000 * 4000, 0, 0]
    assert r["classes"][0]["area_ratio"] == 1.0 and r["classes"][0]["mean_confidence"] == 1.0


def test_images_within_the_budget_keep_full_resolution():
    run = CountingRun()
    c = fake_app(run, slide_above=0, max_tiles=6).test_client()
    r = post(c, png_bytes(split_image(32, 80, 30))).get_json()  # 1 x 4 windows of 32x32 (stride 21)
    assert r["downscaled"] is False and r["prediction_size"] == {"width": 80, "height": 32}
    assert r["windows"] == run.windows == 4
    assert [x["area_px"] for x in r["classes"]] == [0, 32 * 30, 32 * 50]


def test_a_downscaled_prediction_gives_a_full_size_mask_and_matching_statistics():
    run = CountingRun()
    c = fake_app(run, slide_above=0, max_tiles=4).test_client()
    h, w = 300, 451
    r = post(c, png_bytes(split_image(h, w, 150)), "split.png").get_json()
    assert r["downscaled"] is True and r["windows"] == run.windows <= 4
    assert r["prediction_size"]["width"] < w and r["prediction_size"]["height"] < h
    mask = fetch_mask(c, r)
    assert mask.shape == (h, w)
    counts = np.bincount(mask.ravel(), minlength=3)
    assert [x["area_px"] for x in r["classes"]] == counts.tolist()  # statistics of the mask served
    assert sum(x["area_ratio"] for x in r["classes"]) == pytest.approx(1.0, abs=1e-5)
    # the edge moves by up to about one predicted pixel (451 / 53 original columns)
    assert (mask[:, :138] == 1).all() and (mask[:, 162:] == 2).all()
    assert abs(int(counts[1]) - h * 150) <= 12 * h and counts[0] <= 12 * h
    assert r["classes"][1]["mean_confidence"] == pytest.approx(0.8, abs=1e-3)
    assert r["classes"][2]["mean_confidence"] == pytest.approx(0.9, abs=1e-3)
    overlay = Image.open(io.BytesIO(c.get(r["overlay_url"]).data))
    assert overlay.size == (w, h)


def test_resize_mode_keeps_the_score_map_bounded(monkeypatch):
    monkeypatch.setattr(app_module, "MAX_SCORE_PIXELS", 40 * 40)
    c = fake_app(slide_above=None).test_client()
    r = post(c, png_bytes(split_image(60, 90, 30))).get_json()
    assert r["mode"] == "resize" and r["windows"] == 1 and r["downscaled"] is True
    ps = r["prediction_size"]
    assert ps["width"] * ps["height"] <= 40 * 40 and ps["width"] / ps["height"] == pytest.approx(1.5, rel=0.05)
    mask = fetch_mask(c, r)
    assert mask.shape == (60, 90)
    assert [x["area_px"] for x in r["classes"]] == np.bincount(mask.ravel(), minlength=3).tolist()


# ------------------------------------------------------------------------------ the queue
def test_the_gate_serves_in_arrival_order_and_bounds_the_waiting():
    gate = ModelGate(max_waiting=2)
    assert gate.acquire(timeout=0)
    order = []

    def waiter(i):
        assert gate.acquire(timeout=JOIN)
        order.append(i)
        gate.release()

    threads = []
    for i in range(2):
        threads.append(threading.Thread(target=waiter, args=(i,)))
        threads[-1].start()
        for _ in range(JOIN * 100):  # wait until it is queued, so the arrival order is known
            if gate.waiting == i + 1:
                break
            threading.Event().wait(0.01)
    assert gate.waiting == 2
    with pytest.raises(QueueFull):
        gate.acquire(timeout=JOIN)  # refused at once: nobody more may wait
    gate.release()
    for t in threads:
        t.join(JOIN)
    assert order == [0, 1] and gate.waiting == 0 and not gate.busy
    # a waiter that times out leaves the queue
    assert gate.acquire(timeout=0)
    assert gate.acquire(timeout=0.01) is False and gate.waiting == 0
    gate.release()
    assert not gate.busy


def test_with_the_queue_full_an_upload_gets_503_at_once_and_waiting_ones_are_served():
    run = CountingRun(block=True)
    app = fake_app(run, max_queue=1, busy_timeout=JOIN)
    state = app.extensions["kseg"]
    results = {}

    def send(name, data):
        results[name] = post(app.test_client(), data, f"{name}.png")

    big = threading.Thread(target=send, args=("big", blank_png(2000, 1500)))
    big.start()
    assert run.started.wait(JOIN)  # the big upload holds the model, which is blocked
    small = threading.Thread(target=send, args=("small", png_bytes(split_image(8, 8, 3))))
    small.start()
    for _ in range(JOIN * 100):
        if state.gate.waiting == 1:
            break
        threading.Event().wait(0.01)
    assert state.gate.waiting == 1  # the small one waits behind it; the queue is full
    third = threading.Thread(target=send, args=("third", png_bytes(split_image(8, 8, 3))))
    third.start()
    third.join(JOIN)
    # answered while the model is still blocked: it did not wait for the model
    assert not third.is_alive() and not run.go.is_set()
    resp = results["third"]
    assert_json_error(resp, 503, "busy", "queue is full")
    assert int(resp.headers["Retry-After"]) >= 1
    run.go.set()
    big.join(JOIN)
    small.join(JOIN)
    assert results["big"].status_code == 200 and results["small"].status_code == 200
    assert results["big"].get_json()["windows"] <= 64
    assert state.gate.waiting == 0 and not state.gate.busy


def test_max_queue_zero_refuses_while_busy():
    app = fake_app(max_queue=0, busy_timeout=JOIN)
    state = app.extensions["kseg"]
    assert state.gate.acquire(timeout=0)
    try:
        assert_json_error(post(app.test_client(), png_bytes(split_image(8, 8, 3))), 503, "busy")
    finally:
        state.gate.release()
    assert post(app.test_client(), png_bytes(split_image(8, 8, 3))).status_code == 200


# ------------------------------------------------------------------------------ body size
LIMIT_MB = 0.01
LIMIT = int(LIMIT_MB * 1024 * 1024)  # 10485 bytes


class EndlessBody(io.RawIOBase):
    """A request body that never ends; counts the bytes read from it."""

    def __init__(self):
        self.read_bytes = 0

    def readable(self):
        return True

    def readinto(self, b):
        b[:] = b"\x89" * len(b)
        self.read_bytes += len(b)
        return len(b)


def test_an_endless_chunked_body_is_413_after_reading_only_the_limit():
    app = fake_app(max_upload_mb=LIMIT_MB)
    body = EndlessBody()
    resp = app.test_client().post(
        "/api/predict", content_type="image/png", headers={"Transfer-Encoding": "chunked"},
        environ_overrides={"wsgi.input": body, "wsgi.input_terminated": True})
    assert_json_error(resp, 413, "0.01 MB")
    assert body.read_bytes <= LIMIT + 1 + 64 * 1024  # what was asked for, never the whole stream


def test_the_size_limit_is_exact_with_content_length():
    c = fake_app(max_upload_mb=LIMIT_MB).test_client()
    # exactly the limit is read (and is not an image); one byte more is refused unread
    assert_json_error(c.post("/api/predict", data=b"x" * LIMIT, content_type="image/png"), 400, "not a supported")
    assert_json_error(c.post("/api/predict", data=b"x" * (LIMIT + 1), content_type="image/png"), 413, "limit")


@contextlib.contextmanager
def live_server(app):
    """The app on Werkzeug's threaded server on 127.0.0.1 (a free port), as ``kseg serve`` runs it."""
    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.port
    finally:
        server.shutdown()
        server.server_close()
        thread.join(JOIN)


def send(port, body, content_type, chunked=True, path="/api/predict"):
    """POST ``body`` (chunked: in 4 KB chunks, no Content-Length); returns ``(status, headers, json)``."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=JOIN)
    try:
        if chunked:
            pieces = (body[i : i + 4096] for i in range(0, len(body), 4096))
            conn.request("POST", path, body=pieces, headers={"Content-Type": content_type},
                         encode_chunked=True)
        else:
            conn.request("POST", path, body=body, headers={"Content-Type": content_type})
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, resp, json.loads(data)
    finally:
        conn.close()


def multipart(data, filename="x.png"):
    boundary = "kseg-test-boundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{filename}\"\r\n"
            "Content-Type: image/png\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def check_error(status, resp, body, expected, *words):
    assert status == expected, body
    assert resp.getheader("Content-Type", "").startswith("application/json")
    assert body["status"] == expected and "\n" not in body["error"]
    for w in words:
        assert w in body["error"], body["error"]


def test_chunked_uploads_on_the_real_server():
    app = fake_app(max_upload_mb=LIMIT_MB)
    noise = np.random.default_rng(0).integers(0, 255, (80, 80, 3), dtype=np.uint8)
    too_big = png_bytes(noise)  # about 19 KB of incompressible pixels
    assert len(too_big) > 1.5 * LIMIT
    small = png_bytes(split_image(20, 30, 10))
    with live_server(app) as port:
        # over the limit, raw and multipart: 413 (it used to be 400, the body cut at the limit)
        check_error(*send(port, too_big, "image/png"), 413, "0.01 MB")
        check_error(*send(port, *multipart(too_big)), 413, "0.01 MB")
        check_error(*send(port, too_big, "image/png", chunked=False), 413, "0.01 MB")
        # exactly the limit is accepted as a body (and then judged as an image)
        check_error(*send(port, b"x" * LIMIT, "image/png"), 400, "not a supported image")
        check_error(*send(port, b"x" * (LIMIT + 1), "image/png"), 413, "0.01 MB")
        # under the limit, raw and multipart: segmented
        for body, ctype in ((small, "image/png"), multipart(small, "small.png")):
            status, _, r = send(port, body, ctype)
            assert status == 200, r
            assert r["image_size"] == {"width": 30, "height": 20}
            assert [x["area_px"] for x in r["classes"]] == [0, 200, 400]
        check_error(*send(port, b"", "image/png"), 400, "empty")
        # a broken chunked encoding is the client's fault: 400, not 500
        with contextlib.closing(http.client.HTTPConnection("127.0.0.1", port, timeout=JOIN)) as conn:
            conn.putrequest("POST", "/api/predict")
            conn.putheader("Content-Type", "image/png")
            conn.putheader("Transfer-Encoding", "chunked")
            conn.endheaders()
            conn.send(b"zz\r\nhello\r\n0\r\n\r\n")
            resp = conn.getresponse()
            body = json.loads(resp.read())
        check_error(resp.status, resp, body, 400)
