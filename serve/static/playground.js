// The SpikeGPT playground: one page over the public API only (GET /v1/models, the streaming completions and
// chat endpoints with stream_options.include_spikes). No framework, no build step, nothing from another origin;
// what it draws is drawn by spikes.js, which the compare page shares.
"use strict";

const $ = (id) => document.getElementById(id);

const state = {
  model: null, // GET /v1/models' card: id and spiking {placement, sites, site_width, n_layer}
  needsKey: false,
  controller: null, // AbortController of the request in flight
  rows: 0, // raster rows so far
  totals: null, // spikes per site and tokens read over the request so far (a SpikeTotals)
  pending: { text: "", rows: [] }, // what arrived since the page was last drawn
  frame: null, // the animation frame that will draw it
};

// the raster keeps its last rows only, so that a long generation cannot slow the page down
const RASTER_ROWS = 4096;

// ---- the served model --------------------------------------------------------------------------------------------

function authHeaders() {
  const key = $("api-key").value.trim();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

async function loadModel() {
  let response;
  try {
    response = await fetch("/v1/models", { headers: authHeaders() });
  } catch (e) {
    showError(`cannot reach the server: ${e.message}`);
    return;
  }
  if (response.status === 401) {
    state.needsKey = true;
    $("key-row").hidden = false;
    $("model-name").textContent = "(enter the API key)";
    return;
  }
  if (!response.ok) {
    showError(await errorMessage(response));
    return;
  }
  const cards = (await response.json()).data;
  chooseModels(cards);
  const card = cards.find((c) => c.id === $("model-select").value) || cards[0];
  if (!card.spiking) {
    // the model is still loading: the card says how to read the spikes once it is there
    $("model-name").textContent = `${card.id} (loading)`;
    setTimeout(loadModel, 1000);
    return;
  }
  state.model = card;
  $("model-name").textContent = card.id;
  $("model-placement").textContent = card.spiking.placement || "residual";
  $("model-layers").textContent = card.spiking.n_layer;
  $("model-width").textContent = card.spiking.site_width;
  buildRasterHeader($("raster").tHead.rows[0], card.spiking.sites);
  buildLegend($("legend"));
}

// a server of several models: the one to use is chosen in the header
function chooseModels(cards) {
  const select = $("model-select");
  $("model-choice").hidden = cards.length < 2;
  if (select.options.length === cards.length) return;
  select.replaceChildren(...cards.map((c) => element("option", { value: c.id, text: c.id })));
}

function switchModel() {
  if (state.controller) return;
  state.model = null;
  resetOutput();
  loadModel();
}

// ---- errors --------------------------------------------------------------------------------------------------------

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = false;
}

function clearError() {
  $("error").hidden = true;
  $("error").textContent = "";
}

// ---- the request -------------------------------------------------------------------------------------------------

function numberField(id) {
  const raw = $(id).value.trim();
  return raw === "" ? undefined : Number(raw);
}

function requestBody() {
  const chat = document.querySelector('input[name="mode"]:checked').value === "chat";
  const body = {
    model: state.model.id,
    max_tokens: numberField("max_tokens"),
    temperature: numberField("temperature"),
    top_p: numberField("top_p"),
    top_k: numberField("top_k"),
    repetition_penalty: numberField("repetition_penalty"),
    seed: numberField("seed"),
    ignore_eos: $("ignore_eos").checked,
    stream: true,
    stream_options: { include_usage: true, include_spikes: true },
  };
  const stop = $("stop").value.split(",").map((s) => s.trim()).filter((s) => s);
  if (stop.length) body.stop = stop;
  const prompt = $("prompt").value;
  if (chat) {
    const system = $("system").value.trim();
    body.messages = [...(system ? [{ role: "system", content: system }] : []), { role: "user", content: prompt }];
    body.logprobs = true; // the text of every token, for the raster's rows
    body.top_logprobs = 0;
  } else {
    body.prompt = prompt;
    body.logprobs = 0;
  }
  return { path: chat ? "/v1/chat/completions" : "/v1/completions", body, chat };
}

function resetOutput() {
  $("output").textContent = "";
  $("output").append(document.createTextNode(""));
  $("raster").tBodies[0].replaceChildren();
  state.pending = { text: "", rows: [] };
  $("energy").replaceChildren();
  $("usage").replaceChildren();
  state.rows = 0;
  state.totals = state.model ? new SpikeTotals(state.model.spiking) : null;
  renderRates($("rates"), state.totals);
}

async function generate(event) {
  event.preventDefault();
  if (state.controller) return;
  clearError();
  if (!state.model) {
    await loadModel();
    if (!state.model) {
      if (state.needsKey && $("api-key").value.trim()) showError("401 — the API key was not accepted");
      return;
    }
  }
  resetOutput();
  const { path, body, chat } = requestBody();
  state.controller = new AbortController();
  setBusy(true);
  setStatus("Sending…");
  const started = performance.now();
  try {
    const response = await fetch(path, {
      method: "POST",
      headers: { "Content-Type": "application/json", ...authHeaders() },
      body: JSON.stringify(body),
      signal: state.controller.signal,
    });
    if (!response.ok) {
      showError(await errorMessage(response));
      setStatus("Refused.");
      return;
    }
    await readStream(response, chat, started);
  } catch (e) {
    draw();
    if (e.name === "AbortError") setStatus(`Stopped after ${state.rows} tokens.`);
    else showError(`the request failed: ${e.message}`);
  } finally {
    state.controller = null;
    setBusy(false);
  }
}

async function readStream(response, chat, started) {
  const done = await readEvents(response, (chunk) => handleChunk(chunk, chat));
  if (!done) return;
  draw();
  const seconds = (performance.now() - started) / 1000;
  if ($("error").hidden) setStatus(`Done: ${state.rows} tokens in ${seconds.toFixed(2)} s.`);
}

function handleChunk(chunk, chat) {
  if (chunk.error) {
    showError(`the generation failed: ${chunk.error.message}`);
    setStatus("Failed.");
    return;
  }
  for (const choice of chunk.choices) {
    state.pending.text += chat ? (choice.delta && choice.delta.content) || "" : choice.text;
    const tokens = tokenTexts(choice, chat);
    (choice.spikes || []).forEach((entry, i) => state.pending.rows.push([entry, tokens[i]]));
  }
  if (chunk.usage || chunk.energy) {
    draw();
    if (chunk.usage) renderUsage($("usage"), chunk.usage);
    if (chunk.energy) renderEnergy($("energy"), chunk.energy);
  } else if (state.frame === null) {
    state.frame = requestAnimationFrame(draw);
  }
}

// draw what arrived since the last frame at once: one text append, one batch of rows, one scroll
function draw() {
  if (state.frame !== null) cancelAnimationFrame(state.frame);
  state.frame = null;
  const { text, rows } = state.pending;
  state.pending = { text: "", rows: [] };
  if (text) {
    $("output").lastChild.appendData(text);
    $("output").scrollTop = $("output").scrollHeight;
  }
  if (!rows.length) return;
  const body = $("raster").tBodies[0];
  const fragment = document.createDocumentFragment();
  for (const [entry, token] of rows) {
    state.rows += 1;
    state.totals.add(entry);
    fragment.append(rasterRow(state.model.spiking, entry, token, state.rows));
  }
  body.append(fragment);
  while (body.rows.length > RASTER_ROWS) body.deleteRow(0);
  const scroller = $("raster").parentElement;
  scroller.scrollTop = scroller.scrollHeight;
  setStatus(`Streaming… ${state.rows} tokens`);
  renderRates($("rates"), state.totals);
}

function tokenTexts(choice, chat) {
  if (!choice.logprobs) return [];
  return chat ? choice.logprobs.content.map((e) => e.token) : choice.logprobs.tokens;
}

// ---- page state ---------------------------------------------------------------------------------------------------

function setBusy(busy) {
  $("send").disabled = busy;
  $("stop-button").disabled = !busy;
  $("model-select").disabled = busy;
}

function setStatus(text) {
  $("status").textContent = text;
}

function setMode() {
  const chat = document.querySelector('input[name="mode"]:checked').value === "chat";
  $("system-row").hidden = !chat;
  $("prompt-label").textContent = chat ? "Message" : "Prompt";
}

document.addEventListener("DOMContentLoaded", () => {
  $("request-form").addEventListener("submit", generate);
  $("stop-button").addEventListener("click", () => state.controller && state.controller.abort());
  for (const radio of document.querySelectorAll('input[name="mode"]')) radio.addEventListener("change", setMode);
  $("api-key").addEventListener("change", () => state.model || loadModel());
  $("model-select").addEventListener("change", switchModel);
  document.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) $("request-form").requestSubmit();
    if (e.key === "Escape" && state.controller) state.controller.abort();
  });
  setMode();
  loadModel();
});
