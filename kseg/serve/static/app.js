// kseg demo page: upload an image to /api/predict and show the returned images and statistics.
"use strict";
(function () {
  const form = document.getElementById("upload-form");
  const input = document.getElementById("file");
  const button = document.getElementById("submit");
  const status = document.getElementById("status");
  const errorBox = document.getElementById("error");
  const result = document.getElementById("result");
  const drop = document.getElementById("drop-zone");
  const maxBytes = Number(form.dataset.maxBytes);
  const maxMb = form.dataset.maxMb;

  function showError(message) {
    errorBox.textContent = message;
    errorBox.hidden = false;
  }

  function setBusy(busy, text) {
    button.disabled = busy;
    status.textContent = text || "";
  }

  function pct(x) {
    return (100 * x).toFixed(x > 0 && x < 0.001 ? 3 : 1) + " %";
  }

  function showResult(r) {
    const size = r.image_size.width + "\u00d7" + r.image_size.height;
    let how = r.mode + " mode";
    if (r.downscaled && r.prediction_size) {
      how += " at a reduced size of " + r.prediction_size.width + "\u00d7" + r.prediction_size.height +
        " (mask scaled back)";
    }
    document.getElementById("meta").textContent =
      (r.filename ? r.filename + ": " : "") + size + " pixels, " + how + ", inference " +
      r.inference_ms.toFixed(0) + " ms (model " + r.model + ")";
    for (const [id, url] of [["original", r.original_url], ["mask", r.mask_url], ["overlay", r.overlay_url]]) {
      const img = document.getElementById(id);
      img.classList.remove("upscaled");
      img.onload = function () {
        if (img.naturalWidth < img.clientWidth) img.classList.add("upscaled");
      };
      img.src = url;
    }
    document.getElementById("mask-link").href = r.mask_url;
    const body = document.querySelector("#legend tbody");
    body.replaceChildren();
    for (const c of r.classes) {
      const tr = document.createElement("tr");
      tr.dataset.classId = c.id;
      if (!c.area_px) tr.className = "absent";
      const name = document.createElement("td");
      const sw = document.createElement("span");
      sw.className = "swatch";
      sw.style.backgroundColor = c.color;
      name.append(sw, document.createTextNode(c.id + " \u00b7 " + c.name));
      const cells = [pct(c.area_ratio), c.area_px.toLocaleString("en-US"),
                     c.mean_confidence === null ? "\u2013" : c.mean_confidence.toFixed(3)];
      tr.append(name);
      for (const text of cells) {
        const td = document.createElement("td");
        td.className = "num";
        td.textContent = text;
        tr.append(td);
      }
      body.append(tr);
    }
    result.hidden = false;
  }

  async function upload() {
    errorBox.hidden = true;
    const file = input.files[0];
    if (!file) {
      showError("Choose an image first.");
      return;
    }
    if (maxBytes && file.size > maxBytes) {
      showError(file.name + " is larger than the " + maxMb + " MB limit; choose a smaller file.");
      return;
    }
    if (file.size === 0) {
      showError(file.name + " is empty (0 bytes); choose an image file.");
      return;
    }
    const data = new FormData();
    data.append("image", file);
    setBusy(true, "Segmenting " + file.name + " \u2026");
    try {
      const resp = await fetch(form.action, { method: "POST", body: data });
      let body;
      try {
        body = await resp.json();
      } catch (e) {
        body = { error: "the server answered " + resp.status + " " + resp.statusText };
      }
      if (!resp.ok) {
        let message = body.error || "the server answered " + resp.status;
        const retry = resp.headers.get("Retry-After");
        if (resp.status === 503 && retry) message += " (retry in about " + retry + " s)";
        showError(message);
      } else {
        showResult(body);
      }
    } catch (e) {
      showError("The request failed: " + e.message);
    } finally {
      setBusy(false);
    }
  }

  form.addEventListener("submit", function (ev) {
    ev.preventDefault();
    upload();
  });
  input.addEventListener("change", function () {
    document.getElementById("drop-text").textContent =
      input.files.length ? input.files[0].name : "Drop an image here or click to choose one";
  });
  drop.addEventListener("dragover", function (ev) {
    ev.preventDefault();
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", function () {
    drop.classList.remove("over");
  });
  drop.addEventListener("drop", function (ev) {
    ev.preventDefault();
    drop.classList.remove("over");
    if (ev.dataTransfer.files.length) {
      input.files = ev.dataTransfer.files;
      input.dispatchEvent(new Event("change"));
      upload();
    }
  });
})();
