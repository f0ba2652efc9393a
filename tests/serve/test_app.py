"""The web demo's API with Flask's test client: responses, statistics and every bad-input case.

Most tests use a Predictor around a hand-written "run" function (red pixels -> class 1 with
probability 0.8, blue pixels -> class 2 with probability 0.9, anything else -> class 0 with
probability 1), so the statistics are known by hand; a few use the tiny_experiment fixture to
check the real loading path.
"""

import io
import os
import socket
import struct
import threading
import time
import zlib

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("flask", reason="the web demo needs Flask (pip install 'kseg[serve]')")

from kseg.errors import KsegError  # noqa: E402
from kseg.predict import Predictor  # noqa: E402
from kseg.serve import create_app  # noqa: E402
from kseg.serve.app import UploadError, decode_image  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RED, BLUE, GREY = (255, 0, 0), (0, 0, 255), (128, 128, 128)
FAKE_CONFIG = {
    "model_name": "fake",
    "n_classes": 3,
    "input_height": 32,
    "input_width": 32,
    "image_init": "divide",
    "resize_op": 1,
    "class_names": ["background", "red thing", "blue thing"],
    "palette": [[0, 0, 0], [0, 255, 0], [255, 255, 0]],
}


def colour_run(batch):
    """Per-pixel probabilities from the (x/255) colour: red -> class 1, blue -> class 2."""
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


def png_bytes(arr, mode=None, fmt="PNG", **save):
    buf = io.BytesIO()
    (arr if isinstance(arr, Image.Image) else Image.fromarray(arr, mode) if mode else Image.fromarray(arr)).save(
        buf, fmt, **save)
    return buf.getvalue()


def split_image(h, w, left, colour_left=RED, colour_right=BLUE):
    img = np.zeros((h, w, 3), np.uint8)
    img[:, :left] = colour_left
    img[:, left:] = colour_right
    return img


def post(client, data, filename="x.png", field="image"):
    return client.post("/api/predict", data={field: (io.BytesIO(data), filename)},
                       content_type="multipart/form-data")


def assert_json_error(resp, status, *words):
    assert resp.status_code == status, resp.get_data(as_text=True)
    assert resp.mimetype == "application/json"
    body = resp.get_json()
    assert isinstance(body["error"], str) and body["error"]
    assert "Traceback" not in body["error"] and "\n" not in body["error"]  # one line
    assert body["status"] == status
    for w in words:
        assert w in body["error"], body["error"]
    return body


def png_header_only(width, height):
    """A PNG whose header claims ``width x height`` (8-bit RGB) with one tiny IDAT chunk."""
    def chunk(kind, payload):
        return (struct.pack(">I", len(payload)) + kind + payload
                + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16))
            + chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def client():
    return fake_app().test_client()


# ------------------------------------------------------------------------------ info and page
def test_info_lists_model_classes_and_input_size(client):
    info = client.get("/api/info").get_json()
    assert info["model"] == "fake"
    assert info["input_size"] == {"height": 32, "width": 32}
    assert info["classes"] == [
        {"id": 0, "name": "background", "color": "#000000"},
        {"id": 1, "name": "red thing", "color": "#00ff00"},
        {"id": 2, "name": "blue thing", "color": "#ffff00"},
    ]
    assert info["max_upload_mb"] == 20 and info["max_upload_bytes"] == 20 * 1024 * 1024
    assert info["max_pixels"] == 4096 * 4096
    assert info["max_tiles"] == 64 and info["max_queue"] == 4
    assert info["max_model_seconds_estimate"] is None  # no warm-up, nothing timed


def test_index_page_has_upload_form_and_assets(client):
    resp = client.get("/")
    assert resp.status_code == 200 and resp.mimetype == "text/html"
    html = resp.get_data(as_text=True)
    for needle in ('id="file"', 'type="file"', 'id="submit"', 'id="original"', 'id="mask"',
                   'id="overlay"', 'id="legend"', "fake", "4096\u00d74096 pixels"):
        assert needle in html
    assert "default-src 'self'" in resp.headers["Content-Security-Policy"]
    for asset in ("/static/app.js", "/static/style.css"):
        assert client.get(asset).status_code == 200


# ------------------------------------------------------------------------------ predictions
def test_predict_statistics_are_hand_computed(client):
    # 32x32 = the network size, so resizing is the identity: 20 red columns, 12 blue ones
    resp = post(client, png_bytes(split_image(32, 32, 20)), "split.png")
    assert resp.status_code == 200, resp.get_data(as_text=True)
    r = resp.get_json()
    assert r["image_size"] == {"width": 32, "height": 32}
    assert r["mode"] == "resize" and r["model"] == "fake" and r["filename"] == "split.png"
    assert r["prediction_size"] == {"width": 32, "height": 32} and r["downscaled"] is False
    assert r["windows"] == 1
    assert isinstance(r["inference_ms"], float) and r["inference_ms"] >= 0
    by_id = {c["id"]: c for c in r["classes"]}
    assert by_id[0] == {"id": 0, "name": "background", "color": "#000000", "area_px": 0,
                        "area_ratio": 0.0, "mean_confidence": None}
    assert by_id[1]["area_px"] == 32 * 20 and by_id[1]["area_ratio"] == 0.625
    assert by_id[1]["mean_confidence"] == pytest.approx(0.8, abs=1e-4)
    assert by_id[2]["area_px"] == 32 * 12 and by_id[2]["area_ratio"] == 0.375
    assert by_id[2]["mean_confidence"] == pytest.approx(0.9, abs=1e-4)

    mask_resp = client.get(r["mask_url"])
    assert mask_resp.status_code == 200 and mask_resp.mimetype == "image/png"
    mask_im = Image.open(io.BytesIO(mask_resp.data))
    assert mask_im.mode == "P"  # class indices, shown in the class colours
    mask = np.asarray(mask_im)
    expected = np.zeros((32, 32), np.uint8)
    expected[:, :20], expected[:, 20:] = 1, 2
    np.testing.assert_array_equal(mask, expected)
    assert mask_im.getpalette()[:9] == [0, 0, 0, 0, 255, 0, 255, 255, 0]

    ov = np.asarray(Image.open(io.BytesIO(client.get(r["overlay_url"]).data)).convert("RGB")).astype(int)
    assert ov.shape == (32, 32, 3)
    # half image, half class colour: red + green -> (127.5, 127.5, 0); blue + yellow -> (127.5, 127.5, 127.5)
    np.testing.assert_allclose(ov[:, :20], np.broadcast_to([127.5, 127.5, 0], (32, 20, 3)), atol=1)
    np.testing.assert_allclose(ov[:, 20:], np.broadcast_to([127.5, 127.5, 127.5], (32, 12, 3)), atol=1)

    orig_resp = client.get(r["original_url"])
    assert orig_resp.mimetype == "image/jpeg"
    orig = np.asarray(Image.open(io.BytesIO(orig_resp.data))).astype(int)
    assert orig.shape == (32, 32, 3)
    np.testing.assert_allclose(orig[:, 2:17].mean((0, 1)), RED, atol=8)


def test_predict_accepts_a_raw_image_body(client):
    resp = client.post("/api/predict", data=png_bytes(split_image(16, 24, 6)), content_type="image/png")
    assert resp.status_code == 200
    r = resp.get_json()
    assert r["image_size"] == {"width": 24, "height": 16} and r["filename"] is None
    assert sum(c["area_px"] for c in r["classes"]) == 16 * 24


def test_mask_is_at_original_size_for_other_sizes(client):
    # a uniform image resized to 32x32 and back stays uniform: every pixel blue
    img = np.zeros((50, 70, 3), np.uint8)
    img[:] = BLUE
    r = post(client, png_bytes(img)).get_json()
    assert r["image_size"] == {"width": 70, "height": 50}
    areas = [c["area_px"] for c in r["classes"]]
    assert areas == [0, 0, 3500]
    assert r["classes"][2]["area_ratio"] == 1.0
    mask = np.asarray(Image.open(io.BytesIO(client.get(r["mask_url"]).data)))
    assert mask.shape == (50, 70) and (mask == 2).all()


def test_big_images_use_the_sliding_window():
    app = fake_app(slide_above=32 * 32)
    c = app.test_client()
    small = post(c, png_bytes(split_image(30, 30, 10))).get_json()  # 900 pixels <= 1024
    assert small["mode"] == "resize"
    big = post(c, png_bytes(split_image(40, 48, 17))).get_json()  # 1920 pixels > 1024
    assert big["mode"] == "slide"
    assert big["image_size"] == {"width": 48, "height": 40}
    # the run function is per pixel, so averaging overlapping windows changes nothing
    areas = {x["id"]: x["area_px"] for x in big["classes"]}
    assert areas == {0: 0, 1: 40 * 17, 2: 40 * 31}
    assert big["classes"][1]["mean_confidence"] == pytest.approx(0.8, abs=1e-4)
    mask = np.asarray(Image.open(io.BytesIO(c.get(big["mask_url"]).data)))
    assert mask.shape == (40, 48) and (mask[:, :17] == 1).all() and (mask[:, 17:] == 2).all()
    never = fake_app(slide_above=None).test_client()
    assert post(never, png_bytes(split_image(40, 48, 17))).get_json()["mode"] == "resize"


@pytest.mark.parametrize("kind", ["grey", "grey16", "rgba", "la", "palette", "jpeg", "bmp", "webp", "tiff", "gif"])
def test_other_image_kinds_are_converted_to_rgb(client, kind):
    rgb = split_image(32, 32, 8)  # 8 red columns, 24 blue
    if kind == "grey":
        data, expect = png_bytes(np.full((32, 32), 200, np.uint8), "L"), (1024, 0, 0)  # grey -> background
    elif kind == "grey16":
        data, expect = png_bytes(Image.fromarray(np.full((32, 32), 60000, np.uint16))), (1024, 0, 0)
    elif kind == "rgba":  # fully transparent: the colour is still used (alpha dropped)
        data, expect = png_bytes(np.dstack([rgb, np.zeros((32, 32), np.uint8)]), "RGBA"), (0, 256, 768)
    elif kind == "la":
        data, expect = png_bytes(Image.fromarray(np.full((32, 32), 50, np.uint8)).convert("LA")), (1024, 0, 0)
    elif kind == "palette":
        data, expect = png_bytes(Image.fromarray(rgb).quantize(colors=2)), (0, 256, 768)
    else:
        fmt = {"jpeg": "JPEG", "bmp": "BMP", "webp": "WEBP", "tiff": "TIFF", "gif": "GIF"}[kind]
        save = {"quality": 95} if kind == "jpeg" else {"lossless": True} if kind == "webp" else {}
        data, expect = png_bytes(rgb, fmt=fmt, **save), (0, 256, 768)
    resp = post(client, data, f"img.{kind}")
    assert resp.status_code == 200, resp.get_data(as_text=True)
    r = resp.get_json()
    assert r["image_size"] == {"width": 32, "height": 32}
    areas = tuple(c["area_px"] for c in r["classes"])
    if kind == "jpeg":  # lossy edges may move a column
        assert abs(areas[1] - 256) <= 32 and sum(areas) == 1024
    else:
        assert areas == expect


def test_decode_image_conversions():
    grey = decode_image(png_bytes(np.full((3, 4), 77, np.uint8), "L"))
    assert grey.shape == (3, 4, 3) and grey.dtype == np.uint8 and (grey == 77).all()
    g16 = np.array([[0, 257 * 100, 65535]], np.uint16)
    assert decode_image(png_bytes(Image.fromarray(g16)))[0, :, 0].tolist() == [0, 100, 255]
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[..., :3], rgba[..., 3] = (10, 20, 30), 0
    out = decode_image(png_bytes(rgba, "RGBA"))
    assert out.shape == (2, 2, 3) and out[0, 0].tolist() == [10, 20, 30]
    # a camera JPEG stored 30 wide x 10 high with EXIF orientation 6 (rotate 90 degrees) shows 10x30
    im = Image.fromarray(np.zeros((10, 30, 3), np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6
    assert decode_image(png_bytes(im, fmt="JPEG", exif=exif.tobytes())).shape == (30, 10, 3)


# ------------------------------------------------------------------------------ bad input
def test_no_file_empty_and_non_image_uploads_are_400(client):
    assert_json_error(client.post("/api/predict", data={}), 400, "image")
    assert_json_error(client.post("/api/predict", data={"other": "text"}), 400, "'image'")
    assert_json_error(post(client, b"", ""), 400, "no file")  # an empty <input type=file>
    assert_json_error(post(client, b"", "empty.png"), 400, "empty.png", "empty")
    assert_json_error(client.post("/api/predict", data=b"", content_type="image/png"), 400, "empty")
    assert_json_error(post(client, b"hello, world\n" * 10, "notes.txt"), 400, "notes.txt", "not a supported image")
    assert_json_error(post(client, os.urandom(4096), "random.png"), 400, "not a supported image")
    assert_json_error(client.post("/api/predict", data=b"<svg/>", content_type="image/svg+xml"), 400)
    # a PDF, a pickle and an SVG are not decoded by anything
    assert_json_error(post(client, b"%PDF-1.4\n%%EOF\n", "doc.pdf"), 400)
    assert_json_error(post(client, b"<svg xmlns='http://www.w3.org/2000/svg'/>", "a.svg"), 400)


def test_corrupt_images_are_400(client):
    good_png = png_bytes(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    assert_json_error(post(client, good_png[:300], "cut.png"), 400, "cut.png", "corrupt")
    broken = bytearray(good_png)
    broken[100:400] = b"\x00" * 300  # damaged IDAT data (CRC mismatch)
    assert_json_error(post(client, bytes(broken), "broken.png"), 400, "broken.png")
    good_jpeg = png_bytes(np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8), fmt="JPEG")
    assert_json_error(post(client, good_jpeg[: len(good_jpeg) // 3], "cut.jpg"), 400, "cut.jpg")
    assert_json_error(post(client, png_header_only(0, 10), "zero.png"), 400)


def test_uploads_over_the_size_limit_are_413():
    c = fake_app(max_upload_mb=0.01).test_client()  # 10485 bytes
    big = os.urandom(20_000)
    body = assert_json_error(post(c, big, "big.png"), 413, "0.01 MB")
    assert body["status"] == 413
    assert_json_error(c.post("/api/predict", data=big, content_type="image/png"), 413, "limit")
    # under the limit still works
    assert post(c, png_bytes(split_image(8, 8, 4))).status_code == 200


def test_images_over_the_pixel_limit_are_413_without_decoding(client):
    # default limits (4096x4096 pixels, 16384 per side): only the header is read, so a
    # 50000x50000 "bomb" (7.5 GB of pixels) is refused at once
    assert_json_error(post(client, png_header_only(50_000, 50_000), "bomb.png"), 413, "bomb.png",
                      "4096x4096 pixels")
    assert_json_error(post(client, png_header_only(5000, 4000), "big.png"), 413, "5000x4000", "4096x4096")
    assert_json_error(post(client, png_header_only(4097, 4096), "big.png"), 413, "4097x4096")
    assert_json_error(post(client, png_header_only(20_000, 1), "long.png"), 413, "20000x1", "16384 pixels per side")
    small_limit = fake_app(max_pixels=30 * 30).test_client()
    assert_json_error(post(small_limit, png_bytes(split_image(31, 30, 4))), 413, "30x31", "30x30 pixels")
    assert post(small_limit, png_bytes(split_image(30, 30, 4))).status_code == 200


def test_unknown_routes_and_methods_are_json(client):
    assert_json_error(client.get("/nope"), 404)
    assert_json_error(client.get("/api/predict"), 405)
    assert_json_error(client.post("/api/info"), 405)


# ------------------------------------------------------------------------------ result files
def test_results_are_capped_and_the_oldest_deleted(tmp_path):
    app = fake_app(max_results=2, results_dir=str(tmp_path))
    c = app.test_client()
    results = [post(c, png_bytes(split_image(8, 8, i + 1))).get_json() for i in range(3)]
    assert c.get(results[0]["mask_url"]).status_code == 404
    assert not (tmp_path / results[0]["id"]).exists()
    for r in results[1:]:
        for key in ("original_url", "mask_url", "overlay_url"):
            assert c.get(r[key]).status_code == 200
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(r["id"] for r in results[1:])
    assert sorted(os.listdir(tmp_path / results[2]["id"])) == ["mask.png", "original.jpg", "overlay.png"]


def test_results_are_capped_in_disk_space(tmp_path):
    probe = fake_app(results_dir=str(tmp_path / "probe")).test_client()
    r = post(probe, png_bytes(split_image(16, 16, 5))).get_json()
    one = sum(f.stat().st_size for f in (tmp_path / "probe" / r["id"]).iterdir())
    # room for one result and a half: each new result pushes the previous one out
    app = fake_app(results_dir=str(tmp_path / "r"), max_results_mb=1.5 * one / 2**20)
    c = app.test_client()
    ids = [post(c, png_bytes(split_image(16, 16, 5))).get_json()["id"] for _ in range(3)]
    assert [p.name for p in (tmp_path / "r").iterdir()] == [ids[-1]]
    # a limit smaller than one result still keeps the newest, so its page can show it
    tiny = fake_app(results_dir=str(tmp_path / "t"), max_results_mb=1e-6).test_client()
    last = [post(tiny, png_bytes(split_image(16, 16, 5))).get_json() for _ in range(2)][-1]
    assert tiny.get(last["mask_url"]).status_code == 200
    assert [p.name for p in (tmp_path / "t").iterdir()] == [last["id"]]


def test_results_expire(tmp_path):
    app = fake_app(result_ttl_minutes=5, results_dir=str(tmp_path))
    store = app.extensions["kseg"].store
    now = [1000.0]
    store.clock = lambda: now[0]
    c = app.test_client()
    r = post(c, png_bytes(split_image(8, 8, 3))).get_json()
    now[0] += 4 * 60
    assert c.get(r["overlay_url"]).status_code == 200
    now[0] += 2 * 60  # 6 minutes old
    assert_json_error(c.get(r["overlay_url"]), 404, "expire")
    assert not (tmp_path / r["id"]).exists()


def test_result_urls_cannot_reach_other_files(tmp_path):
    (tmp_path / "secret.txt").write_text("secret")
    app = fake_app(results_dir=str(tmp_path))
    c = app.test_client()
    r = post(c, png_bytes(split_image(8, 8, 3))).get_json()
    token = r["id"]
    assert len(token) >= 22
    for url in (f"/results/{token}/..%2Fsecret.txt", f"/results/{token}/../secret.txt",
                "/results/..%2F/secret.txt", f"/results/{token}/config.json", "/results/secret.txt/x",
                f"/results/{token[:-1]}A/mask.png" if token[-1] != "A" else f"/results/{token[:-1]}B/mask.png",
                "/results/..%2F..%2F..%2Fetc/passwd", f"/results/{token}%2F..%2F/secret.txt"):
        resp = c.get(url, follow_redirects=True)
        assert resp.status_code == 404, url
        assert b"secret" not in resp.data


# ------------------------------------------------------------------------------ failures and locking
def test_internal_errors_are_json_500_and_the_app_keeps_serving(caplog):
    calls = {"n": 0}

    def flaky(batch):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("boom in the model")
        return colour_run(batch)

    c = fake_app(flaky).test_client()
    with caplog.at_level("ERROR", logger="kseg.serve"):
        body = assert_json_error(post(c, png_bytes(split_image(8, 8, 3))), 500, "internal error")
    assert "boom" not in str(body) and "detail" not in body
    assert "boom in the model" in caplog.text  # logged server-side with the traceback
    assert post(c, png_bytes(split_image(8, 8, 3))).status_code == 200

    def broken(batch):
        raise RuntimeError("always broken")

    debug = fake_app(broken, debug=True).test_client()
    assert "always broken" in assert_json_error(post(debug, png_bytes(split_image(8, 8, 3))), 500)["detail"]


def test_inference_is_serialised_by_a_lock():
    active, peak = [0], [0]
    guard = threading.Lock()

    def slow(batch):
        with guard:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        time.sleep(0.05)
        with guard:
            active[0] -= 1
        return colour_run(batch)

    app = fake_app(slow)
    codes = []

    def worker():
        codes.append(post(app.test_client(), png_bytes(split_image(8, 8, 3))).status_code)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert codes == [200] * 4 and peak[0] == 1


def test_busy_server_answers_503():
    app = fake_app(busy_timeout=0.05)
    state = app.extensions["kseg"]
    assert state.gate.acquire()  # someone else is using the model
    try:
        resp = post(app.test_client(), png_bytes(split_image(8, 8, 3)))
        assert_json_error(resp, 503, "busy", "0.05 s")
        assert int(resp.headers["Retry-After"]) >= 1
        # bad files are still answered at once, without waiting for the model
        assert_json_error(post(app.test_client(), b"not an image", "a.png"), 400, "not a supported image")
        assert_json_error(post(app.test_client(), png_header_only(5000, 5000), "big.png"), 413, "5000x5000")
    finally:
        state.gate.release()
    assert post(app.test_client(), png_bytes(split_image(8, 8, 3))).status_code == 200


def test_create_app_argument_errors(tmp_path):
    with pytest.raises(KsegError, match="max_upload_mb"):
        fake_app(max_upload_mb=0)
    with pytest.raises(KsegError, match="slide_above"):
        fake_app(slide_above=-5)
    with pytest.raises(KsegError, match="max_tiles"):
        fake_app(max_tiles=0)
    with pytest.raises(KsegError, match="max_queue"):
        fake_app(max_queue=-1)
    with pytest.raises(KsegError, match="weights_path"):
        create_app()
    with pytest.raises(KsegError, match="does not exist"):
        create_app(str(tmp_path / "missing"))
    with pytest.raises(UploadError):
        decode_image(b"")


# ------------------------------------------------------------------------------ the real model
def test_real_experiment_end_to_end(tiny_experiment, tiny_dataset):
    from kseg.data.io import read_image

    app = create_app(tiny_experiment)
    c = app.test_client()
    info = c.get("/api/info").get_json()
    assert info["model"] == "unet" and info["experiment"] == "tiny_unet"
    assert info["input_size"] == {"height": 32, "width": 32}
    assert [x["name"] for x in info["classes"]] == ["c0", "c1", "c2", "c3"]
    # VOC colours of classes 0-3
    assert [x["color"] for x in info["classes"]] == ["#000000", "#800000", "#008000", "#808000"]

    test_dir = os.path.join(tiny_dataset, "test_image")
    path = os.path.join(test_dir, sorted(os.listdir(test_dir))[0])
    image = read_image(path)
    h, w = image.shape[:2]
    with open(path, "rb") as f:
        r = post(c, f.read(), os.path.basename(path)).get_json()
    assert r["image_size"] == {"width": w, "height": h}
    mask = np.asarray(Image.open(io.BytesIO(c.get(r["mask_url"]).data)))
    assert mask.shape == (h, w)
    counts = np.bincount(mask.ravel(), minlength=4)
    assert [x["area_px"] for x in r["classes"]] == counts.tolist()
    for x in r["classes"]:
        assert x["area_ratio"] == pytest.approx(counts[x["id"]] / (h * w), abs=1e-6)
        if counts[x["id"]]:
            assert 0.25 <= x["mean_confidence"] <= 1.0  # the max of 4 softmax probabilities
        else:
            assert x["mean_confidence"] is None
    # the same mask as the predictor gives on the file read from disk
    expected = Predictor.from_experiment(tiny_experiment).predict(image)
    np.testing.assert_array_equal(mask, expected)
    ov = Image.open(io.BytesIO(c.get(r["overlay_url"]).data))
    assert ov.size == (w, h)


# ------------------------------------------------------------------------------ the script
def _load_script():
    from kseg.cli import serve

    return serve


def test_script_defaults_and_errors(tiny_experiment, tmp_path, monkeypatch):
    script = _load_script()
    monkeypatch.setattr(script.logging, "basicConfig", lambda **kw: None)  # leave pytest's logging alone
    args = script.build_parser().parse_args(["--weights_path", "w"])
    assert args.host == "127.0.0.1" and args.port == 8000 and args.debug is False
    assert args.max_upload_mb == 20 and args.max_results == 100 and args.max_results_mb == 500
    assert args.max_tiles == 64 and args.max_queue == 4 and args.busy_timeout == 120
    args = script.build_parser().parse_args(["--max_tiles", "8", "--max_queue", "0", "--busy_timeout", "5"])
    assert (args.max_tiles, args.max_queue, args.busy_timeout) == (8, 0, 5)
    for bad in (["--max_tiles", "0"], ["--max_queue", "-1"], ["--busy_timeout", "0"]):
        with pytest.raises(SystemExit):
            script.build_parser().parse_args(bad)
    with pytest.raises(KsegError, match="does not exist"):
        script.main(["--weights_path", str(tmp_path / "missing")])
    with pytest.raises(KsegError, match="port"):
        script.main(["--weights_path", tiny_experiment, "--port", "70000"])
    with socket.socket() as s:  # a port that is already taken
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        with pytest.raises(KsegError, match=f"cannot listen on 127.0.0.1:{port}"):
            script.main(["--weights_path", tiny_experiment, "--port", str(port)])
