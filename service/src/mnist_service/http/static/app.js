// Draw a digit: smooth strokes on a 280x280 canvas; on pointer-up the drawing goes to /v1/predict
// as a PNG, and the answer, the top three probabilities and the 28x28 the model saw are shown;
// "Why?" overlays the pixel attributions (integrated gradients) on that 28x28.

const LINE_WIDTH = 20; // canvas pixels: about 2 MNIST pixels once the digit is fitted to 20x20
const INK = "#000";
const PAPER = "#fff";

const canvas = document.getElementById("canvas");
const ctx = canvas.getContext("2d");
const clearButton = document.getElementById("clear");
const result = document.getElementById("result");
const prediction = document.getElementById("prediction");
const confidence = document.getElementById("confidence");
const bars = document.getElementById("bars");
const seen = document.getElementById("seen");
const seenImage = document.getElementById("seen-image");
const seenCaption = document.getElementById("seen-caption");
const whyButton = document.getElementById("why");
const whyImage = document.getElementById("why-image");
const status = document.getElementById("status");
const modelName = document.getElementById("model");
const keyForm = document.getElementById("key-form");
const keyInput = document.getElementById("api-key");
const KEY_STORE = "mnist-mlp-api-key"; // sessionStorage: the tab's session only, never sent elsewhere

let stroke = null; // {last, mid}: the last point and the midpoint the curve has reached
let hasInk = false;
let inFlight = null; // AbortController of the request whose answer the page is waiting for

// -- drawing ------------------------------------------------------------------------------------

function clearCanvas() {
  ctx.fillStyle = PAPER;
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  ctx.fillStyle = INK;
  ctx.strokeStyle = INK;
  ctx.lineWidth = LINE_WIDTH;
  ctx.lineCap = "round";
  ctx.lineJoin = "round";
  hasInk = false;
}

/** Where a pointer event falls in canvas pixels, whatever size the canvas is displayed at. */
function canvasPoint(event) {
  const box = canvas.getBoundingClientRect();
  // The box includes the CSS border; the bitmap fills only the client area inside it.
  return {
    x: (event.clientX - box.left - canvas.clientLeft) * (canvas.width / canvas.clientWidth),
    y: (event.clientY - box.top - canvas.clientTop) * (canvas.height / canvas.clientHeight),
  };
}

function segment(from, control, to) {
  ctx.beginPath();
  ctx.moveTo(from.x, from.y);
  ctx.quadraticCurveTo(control.x, control.y, to.x, to.y);
  ctx.stroke();
}

function dot(point) {
  ctx.beginPath();
  ctx.arc(point.x, point.y, LINE_WIDTH / 2, 0, 2 * Math.PI);
  ctx.fill();
}

function startStroke(event) {
  if (event.button !== 0) return;
  canvas.setPointerCapture(event.pointerId);
  const point = canvasPoint(event);
  dot(point); // a tap leaves a mark (a zero-length path would draw nothing)
  stroke = { last: point, mid: point };
  hasInk = true;
  event.preventDefault();
}

/** Quadratic curves from midpoint to midpoint, through each sampled point: no corners. */
function extendStroke(event) {
  if (!stroke) return;
  const events = event.getCoalescedEvents?.() ?? []; // every sample since the last frame
  for (const e of events.length ? events : [event]) {
    const point = canvasPoint(e);
    const mid = { x: (stroke.last.x + point.x) / 2, y: (stroke.last.y + point.y) / 2 };
    segment(stroke.mid, stroke.last, mid);
    stroke = { last: point, mid };
  }
}

function endStroke() {
  if (!stroke) return;
  segment(stroke.mid, stroke.last, stroke.last);
  stroke = null;
  predict();
}

// -- sending ------------------------------------------------------------------------------------

async function predict() {
  if (!hasInk) {
    showStatus("Draw a digit first.");
    return;
  }
  inFlight?.abort(); // only the latest drawing's answer matters
  const request = new AbortController();
  inFlight = request;
  result.setAttribute("aria-busy", "true");
  try {
    const headers = { "Content-Type": "application/json" };
    const key = sessionStorage.getItem(KEY_STORE);
    if (key) headers.Authorization = `Bearer ${key}`;
    const response = await fetch("/v1/predict", {
      method: "POST",
      headers,
      body: JSON.stringify({ instances: [{ b64: canvas.toDataURL("image/png") }], include_input: true,
                             explain: explaining() }),
      signal: request.signal,
    });
    const body = await response.json().catch(() => ({}));
    if (request.signal.aborted) return;
    if (response.status === 401) {
      askForKey(key ? "That key was refused: try another." : "");
      return;
    }
    if (!response.ok) throw new Error(body.error?.message ?? `the server answered ${response.status}`);
    showPrediction(body.model, body.predictions[0]);
  } catch (error) {
    if (error.name !== "AbortError") showStatus(`Could not predict: ${error.message}`);
  } finally {
    if (inFlight === request) {
      inFlight = null;
      result.removeAttribute("aria-busy");
    }
  }
}

// -- rendering ----------------------------------------------------------------------------------

const percent = (p) => `${(100 * p).toFixed(1)} %`;

function bar(digit, probability) {
  const item = document.createElement("li");
  const label = document.createElement("span");
  const track = document.createElement("span");
  const fill = document.createElement("span");
  const value = document.createElement("span");
  label.textContent = digit;
  track.className = "track";
  fill.className = "fill";
  fill.style.width = `${100 * probability}%`; // CSSOM, which the page's CSP allows
  track.append(fill);
  value.className = "value";
  value.textContent = percent(probability);
  item.setAttribute("aria-label", `${digit}: ${percent(probability)}`);
  item.append(label, track, value);
  return item;
}

function showPrediction(model, answer) {
  const top = answer.probabilities
    .map((probability, digit) => ({ digit, probability }))
    .sort((a, b) => b.probability - a.probability)
    .slice(0, 3);
  prediction.textContent = String(answer.label);
  confidence.textContent = `${percent(answer.confidence)} sure`;
  bars.replaceChildren(...top.map(({ digit, probability }) => bar(digit, probability)));
  seenImage.src = answer.input;
  seen.hidden = false;
  showWhy(answer.explanation);
  modelName.textContent = `model ${model.name} v${model.version}`;
  showStatus("");
}

function askForKey(message) {
  sessionStorage.removeItem(KEY_STORE);
  keyForm.hidden = false;
  showStatus(message);
  keyInput.focus();
}

function explaining() {
  return whyButton.getAttribute("aria-pressed") === "true";
}

function showWhy(explanation) {
  whyImage.hidden = !explanation;
  if (explanation) whyImage.src = explanation.heatmap;
  seenCaption.textContent = explanation
    ? `Why ${explanation.target}: red pixels pushed toward it, blue ones against`
    : "What the model saw: 28×28, centred like MNIST";
}

function showStatus(message) {
  status.textContent = message;
}

function reset() {
  inFlight?.abort();
  clearCanvas();
  prediction.textContent = "–";
  confidence.textContent = "Waiting for a drawing";
  bars.replaceChildren();
  seen.hidden = true;
  showStatus("");
}

// -- wiring -------------------------------------------------------------------------------------

canvas.addEventListener("pointerdown", startStroke);
canvas.addEventListener("pointermove", extendStroke);
canvas.addEventListener("pointerup", endStroke);
canvas.addEventListener("pointercancel", endStroke);
canvas.addEventListener("keydown", (event) => {
  if (event.key === "Enter" || event.key === " ") {
    event.preventDefault(); // Space would scroll the page
    predict();
  } else if (event.key === "Escape" || event.key === "Delete" || event.key === "Backspace") {
    event.preventDefault();
    reset();
  }
});
whyButton.addEventListener("click", () => {
  whyButton.setAttribute("aria-pressed", String(!explaining()));
  if (explaining() && hasInk) predict(); // ask again, with the explanation
  else showWhy(null);
});
keyForm.addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem(KEY_STORE, keyInput.value.trim());
  keyInput.value = "";
  keyForm.hidden = true;
  predict();
});
clearButton.addEventListener("click", () => {
  reset();
  canvas.focus();
});

reset();
