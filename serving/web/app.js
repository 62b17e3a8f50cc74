// The page of `keras-fcn serve`: an image goes to the served model through TF Serving's REST API
// (`serve_png`, the image as {"b64": ...}); the class-map PNG that comes back is drawn over the image.
// Served models, class names and class colours come from the server's /v1/keras_fcn/ extension.
"use strict";

const API = "/v1";
const $ = (id) => document.getElementById(id);

const state = {
  models: [],     // [{name, versions: ["2", "1"]}], newest version first
  info: null,     // the answering version: {name, version, signatures, class_names, colors}
  bitmap: null,   // the image as shown
  b64: "",        // the image as sent
  classMap: null, // {width, height, ids: Int32Array}
  request: 0,     // number of the latest request: older answers are dropped
};

class PageError extends Error {}

function setState(name) {
  document.body.dataset.state = name;
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = false;
  setState("error");
}

function clearError() {
  $("error").hidden = true;
  $("error").textContent = "";
}

// --- talking to the server --------------------------------------------------------------------

async function call(path, options) {
  let response;
  try {
    response = await fetch(path, { cache: "no-store", ...options });
  } catch (error) {
    throw new PageError(`Cannot reach the server at ${location.origin} (${error.message}): is keras-fcn serve still running?`);
  }
  let body = null;
  try {
    body = await response.json();
  } catch (error) {
    body = null;
  }
  if (!response.ok) {
    let why = body && body.error ? body.error : `HTTP ${response.status} ${response.statusText}`;
    why = why.replace(/^assertion failed: \[([\s\S]*)\]$/, "$1"); // tf.debugging.Assert's wrapping
    throw new PageError(`The server refused the request: ${why}`);
  }
  return body;
}

async function loadModels() {
  const reply = await call(`${API}/keras_fcn/models`);
  state.models = reply.models.filter((m) => m.versions.length > 0);
  if (state.models.length === 0) {
    throw new PageError("The server has no model version loaded yet: export one into its base path and try again.");
  }
  const select = $("model");
  const chosen = select.value;
  select.replaceChildren(...state.models.map((m) => new Option(m.name, m.name)));
  if (state.models.some((m) => m.name === chosen)) select.value = chosen;
  $("model-picker").hidden = state.models.length < 2;
  fillVersions();
}

function fillVersions() {
  const model = currentModel();
  const select = $("version");
  const chosen = select.value;
  const options = [new Option(`latest (${model.versions[0]})`, "")];
  for (const version of model.versions) options.push(new Option(version, version));
  select.replaceChildren(...options);
  if (model.versions.includes(chosen)) select.value = chosen;
  $("version-picker").hidden = model.versions.length < 2;
}

function currentModel() {
  return state.models.find((m) => m.name === $("model").value) || state.models[0];
}

function modelPath(name, version) {
  return `/models/${encodeURIComponent(name)}/versions/${version}`;
}

// The legend of the chosen version before any image is sent.
async function showClasses() {
  const model = currentModel();
  const info = await call(`${API}/keras_fcn${modelPath(model.name, $("version").value || model.versions[0])}`);
  if (state.classMap) return; // an answer arrived meanwhile and drew its own legend
  state.info = info;
  fillLegend();
}

// Sends the image to the chosen model and version, then draws the answer.
async function segment() {
  if (!state.b64) return;
  const request = ++state.request;
  clearError();
  setState("busy");
  $("meta").textContent = "Segmenting…";
  try {
    await loadModels(); // "latest" is resolved now, so the version shown is the one that answered
    const model = currentModel();
    const version = $("version").value || model.versions[0];
    const info = await call(`${API}/keras_fcn${modelPath(model.name, version)}`);
    // Exports older than serve_png answer through serve_encoded (every output: megabytes of JSON).
    const signature = info.signatures.includes("serve_png") ? "serve_png" : "serve_encoded";
    const body = JSON.stringify({ signature_name: signature, instances: [{ b64: state.b64 }] });
    const started = performance.now();
    const reply = await call(`${API}${modelPath(model.name, version)}:predict`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body,
    });
    const milliseconds = performance.now() - started;
    if (request !== state.request) return;
    const row = reply.predictions[0];
    const png = base64Bytes((row.b64 !== undefined ? row : row.class_map_png_bytes).b64);
    const classMap = await decodeClassMap(png);
    if (classMap.width !== state.bitmap.width || classMap.height !== state.bitmap.height) {
      throw new PageError(
        `The class map is ${classMap.width}×${classMap.height} but the image is ${state.bitmap.width}×${state.bitmap.height}.`,
      );
    }
    if (request !== state.request) return;
    state.info = info;
    state.classMap = classMap;
    drawClassMap();
    drawView();
    fillLegend();
    $("meta").textContent =
      `${info.name}, version ${info.version} (${signature}) · ${classMap.width}×${classMap.height} px · ` +
      `round trip ${Math.round(milliseconds)} ms`;
    $("meta").dataset.version = info.version;
    setState("done");
  } catch (error) {
    if (request !== state.request) return;
    $("meta").textContent = "";
    showError(error instanceof PageError ? error.message : `Unexpected error: ${error.message}`);
  }
}

// --- the image ----------------------------------------------------------------------------------

async function openFile(file) {
  clearError();
  let bitmap;
  try {
    bitmap = await createImageBitmap(file);
  } catch (error) {
    showError(`${file.name} is not an image this browser can read; choose a JPEG or PNG file.`);
    return;
  }
  const bytes = new Uint8Array(await file.arrayBuffer());
  const kind = imageKind(bytes);
  let sent = bytes;
  // The model reads JPEG and PNG, and ignores EXIF rotation: anything else is sent as the pixels shown.
  if (kind === null || (kind === "jpeg" && jpegOrientation(bytes) > 1)) {
    sent = await pngOf(bitmap);
  }
  state.bitmap = bitmap;
  state.b64 = bytesBase64(sent);
  state.classMap = null;
  hidePointer();
  if (state.info) fillLegend(); // no shares until the new answer
  const view = $("view");
  view.width = bitmap.width;
  view.height = bitmap.height;
  view.hidden = false;
  $("drop-hint").hidden = true;
  fitView();
  drawView();
  await segment();
}

function imageKind(bytes) {
  const png = [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a];
  if (png.every((b, i) => bytes[i] === b)) return "png";
  if (bytes[0] === 0xff && bytes[1] === 0xd8 && bytes[2] === 0xff) return "jpeg";
  return null;
}

// The EXIF orientation of a JPEG (1 = as stored, also when unreadable), read from its APP1 segment.
function jpegOrientation(bytes) {
  try {
    return exifOrientation(bytes);
  } catch (error) {
    return 1; // a truncated or odd header: the bytes go as they are
  }
}

function exifOrientation(bytes) {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let offset = 2;
  while (offset + 4 <= bytes.length && bytes[offset] === 0xff) {
    const marker = bytes[offset + 1];
    const length = view.getUint16(offset + 2);
    if (marker === 0xda) break; // image data starts: no more metadata
    const exif = offset + 4;
    if (marker === 0xe1 && length >= 16 && view.getUint32(exif) === 0x45786966) {
      const tiff = exif + 6;
      const little = view.getUint16(tiff) === 0x4949;
      const ifd = tiff + view.getUint32(tiff + 4, little);
      const entries = view.getUint16(ifd, little);
      for (let i = 0; i < entries; i++) {
        const entry = ifd + 2 + 12 * i;
        if (entry + 12 > bytes.length) break;
        if (view.getUint16(entry, little) === 0x0112) return view.getUint16(entry + 8, little);
      }
    }
    offset += 2 + length;
  }
  return 1;
}

async function pngOf(bitmap) {
  const canvas = new OffscreenCanvas(bitmap.width, bitmap.height);
  canvas.getContext("2d").drawImage(bitmap, 0, 0);
  const blob = await canvas.convertToBlob({ type: "image/png" });
  return new Uint8Array(await blob.arrayBuffer());
}

function bytesBase64(bytes) {
  let text = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    text += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  }
  return btoa(text);
}

function base64Bytes(text) {
  const binary = atob(text);
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
  return bytes;
}

// The class-map PNG (greyscale, 8 bits a pixel, 16 beyond 256 classes) read here rather than by the
// browser's image decoder, which would squeeze 16-bit ids into 8 bits.
async function decodeClassMap(bytes) {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (imageKind(bytes) !== "png") throw new PageError("The server's class map is not a PNG.");
  let width = 0, height = 0, depth = 0, colour = -1, interlace = 0;
  const data = [];
  for (let offset = 8; offset + 8 <= bytes.length; ) {
    const length = view.getUint32(offset);
    const type = String.fromCharCode(...bytes.subarray(offset + 4, offset + 8));
    if (type === "IHDR") {
      width = view.getUint32(offset + 8);
      height = view.getUint32(offset + 12);
      depth = bytes[offset + 16];
      colour = bytes[offset + 17];
      interlace = bytes[offset + 20];
    } else if (type === "IDAT") {
      data.push(bytes.subarray(offset + 8, offset + 8 + length));
    } else if (type === "IEND") {
      break;
    }
    offset += 12 + length;
  }
  if (colour !== 0 || (depth !== 8 && depth !== 16) || interlace !== 0) {
    throw new PageError(`The server's class map is not an 8- or 16-bit greyscale PNG (depth ${depth}, colour type ${colour}).`);
  }
  const stream = new Blob(data).stream().pipeThrough(new DecompressionStream("deflate"));
  const raw = new Uint8Array(await new Response(stream).arrayBuffer());
  const step = depth / 8; // bytes a pixel
  const stride = width * step;
  const ids = new Int32Array(width * height);
  let previous = new Uint8Array(stride);
  let line = new Uint8Array(stride);
  for (let y = 0; y < height; y++) {
    const start = y * (stride + 1);
    const filter = raw[start];
    for (let i = 0; i < stride; i++) {
      const a = i >= step ? line[i - step] : 0;
      const b = previous[i];
      const c = i >= step ? previous[i - step] : 0;
      let predicted = 0;
      if (filter === 1) predicted = a;
      else if (filter === 2) predicted = b;
      else if (filter === 3) predicted = (a + b) >> 1;
      else if (filter === 4) {
        const p = a + b - c, pa = Math.abs(p - a), pb = Math.abs(p - b), pc = Math.abs(p - c);
        predicted = pa <= pb && pa <= pc ? a : pb <= pc ? b : c;
      }
      line[i] = (raw[start + 1 + i] + predicted) & 0xff;
    }
    for (let x = 0; x < width; x++) {
      ids[y * width + x] = step === 1 ? line[x] : (line[2 * x] << 8) | line[2 * x + 1];
    }
    [previous, line] = [line, previous];
  }
  return { width, height, ids };
}

// --- drawing ------------------------------------------------------------------------------------

function classColour(k) {
  return state.info.colors[k] || [128, 128, 128];
}

// The class colours, one opaque pixel per image pixel (class 0 left clear unless asked for, as
// keras-fcn predict's overlays do).
function drawClassMap() {
  const { width, height, ids } = state.classMap;
  const canvas = $("classmap");
  canvas.width = width;
  canvas.height = height;
  const context = canvas.getContext("2d");
  const pixels = context.createImageData(width, height);
  const paintZero = $("background").checked;
  for (let i = 0; i < ids.length; i++) {
    const [r, g, b] = classColour(ids[i]);
    pixels.data.set([r, g, b, ids[i] === 0 && !paintZero ? 0 : 255], 4 * i);
  }
  context.putImageData(pixels, 0, 0);
}

// The image as large as the stage allows (at most 8 times its size); enlarged pixels stay sharp.
function fitView() {
  if (!state.bitmap) return;
  const drop = $("drop");
  const style = getComputedStyle(drop);
  const room = drop.clientWidth - parseFloat(style.paddingLeft) - parseFloat(style.paddingRight);
  const scale = Math.min(room / state.bitmap.width, (0.6 * window.innerHeight) / state.bitmap.height, 8);
  $("view").style.width = `${Math.floor(state.bitmap.width * scale)}px`;
  $("view").classList.toggle("pixelated", scale >= 2);
}

function drawView() {
  if (!state.bitmap) return;
  const context = $("view").getContext("2d");
  context.globalAlpha = 1;
  context.drawImage(state.bitmap, 0, 0);
  if (state.classMap) {
    context.globalAlpha = Number($("opacity").value) / 100;
    context.drawImage($("classmap"), 0, 0);
    context.globalAlpha = 1;
  }
}

// The classes of `state.info`, those of the class map first with their share of its pixels.
function fillLegend() {
  const ids = state.classMap ? state.classMap.ids : [];
  const names = state.info.class_names;
  const counts = new Array(names.length).fill(0);
  for (const k of ids) if (k < counts.length) counts[k]++;
  const order = names.map((_, k) => k).sort((a, b) => counts[b] - counts[a] || a - b);
  const items = order.map((k) => {
    const item = document.createElement("li");
    item.dataset.class = String(k);
    item.classList.toggle("absent", ids.length > 0 && counts[k] === 0);
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.style.background = `rgb(${classColour(k).join(",")})`;
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = names[k];
    const id = document.createElement("span");
    id.className = "id";
    id.textContent = k;
    const share = document.createElement("span");
    share.className = "share";
    share.textContent = counts[k] ? `${((100 * counts[k]) / ids.length).toFixed(1)}%` : "";
    item.append(swatch, name, id, share);
    return item;
  });
  $("legend").replaceChildren(...items);
}

function showPointer(event) {
  if (!state.classMap) return;
  const view = $("view");
  const box = view.getBoundingClientRect();
  const x = Math.floor(((event.clientX - box.left) / box.width) * view.width);
  const y = Math.floor(((event.clientY - box.top) / box.height) * view.height);
  if (x < 0 || y < 0 || x >= view.width || y >= view.height) return;
  const k = state.classMap.ids[y * state.classMap.width + x];
  const name = state.info.class_names[k] ?? `class ${k}`;
  const pointer = $("pointer");
  pointer.textContent = `(${x}, ${y}): ${name}`;
  Object.assign(pointer.dataset, { x, y, classId: k });
  for (const item of $("legend").children) item.classList.toggle("hover", item.dataset.class === String(k));
}

function hidePointer() {
  $("pointer").textContent = "";
  for (const item of $("legend").children) item.classList.remove("hover");
}

// --- wiring -------------------------------------------------------------------------------------

function pickerChanged() {
  if (state.b64) segment();
  else showClasses().catch((error) => showError(error.message));
}

function start() {
  $("file").addEventListener("change", (event) => {
    if (event.target.files.length) openFile(event.target.files[0]);
    event.target.value = ""; // choosing the same file again reloads it
  });
  const drop = $("drop");
  drop.addEventListener("dragover", (event) => {
    event.preventDefault();
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    if (event.dataTransfer.files.length) openFile(event.dataTransfer.files[0]);
  });
  $("opacity").addEventListener("input", () => {
    $("opacity-value").textContent = `${$("opacity").value}%`;
    drawView();
  });
  $("background").addEventListener("change", () => {
    if (!state.classMap) return;
    drawClassMap();
    drawView();
  });
  $("model").addEventListener("change", () => {
    fillVersions();
    pickerChanged();
  });
  $("version").addEventListener("change", pickerChanged);
  window.addEventListener("resize", fitView);
  $("view").addEventListener("mousemove", showPointer);
  $("view").addEventListener("mouseleave", hidePointer);
  loadModels()
    .then(showClasses)
    .then(() => {
      const model = currentModel();
      $("meta").textContent = `Serving ${model.name} (version ${model.versions.join(", ")}). Choose an image.`;
      setState("ready");
    })
    .catch((error) => {
      $("meta").textContent = "";
      showError(error.message);
    });
}

start();
