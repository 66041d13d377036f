// The SpikeGPT playground: one page over the public API only (GET /v1/models, the streaming completions and
// chat endpoints with stream_options.include_spikes). No framework, no build step, nothing from another origin.
"use strict";

const $ = (id) => document.getElementById(id);

const state = {
  model: null, // GET /v1/models' card: id and spiking {placement, sites, site_width, n_layer}
  needsKey: false,
  controller: null, // AbortController of the request in flight
  rows: 0, // raster rows so far
  totals: null, // spikes per site over the request so far
  tokensRead: 0, // tokens the model read over the request so far
  pending: { text: "", rows: [] }, // what arrived since the page was last drawn
  frame: null, // the animation frame that will draw it
};

// the raster keeps its last rows only, so that a long generation cannot slow the page down
const RASTER_ROWS = 4096;

// ---- formatting, as spikegpt.energy.render formats the CLI's table ---------------------------------------------

const JOULE_UNITS = [[1, "J"], [1e-3, "mJ"], [1e-6, "µJ"], [1e-9, "nJ"], [1e-12, "pJ"]];

function threeFigures(x) {
  return String(Number(x.toPrecision(3)));
}

function formatJoules(j) {
  if (j === null || j === undefined) return "-";
  const rounded = Number(j.toPrecision(3)); // the unit of the rounded value: 999.7 nJ is 1 µJ
  for (const [scale, unit] of JOULE_UNITS) {
    if (Math.abs(rounded) >= scale) return `${threeFigures(j / scale)} ${unit}`;
  }
  return j ? `${threeFigures(j / 1e-12)} pJ` : "0 J";
}

const BYTE_PREFIXES = [[2 ** 40, "Ti"], [2 ** 30, "Gi"], [2 ** 20, "Mi"], [2 ** 10, "Ki"]];

function formatBytes(n) {
  for (const [scale, prefix] of BYTE_PREFIXES) {
    if (n >= scale) {
      const value = n / scale; // below 1024: 1000 MiB is written out, not as "1e+3 MiB"
      return `${value < 1000 ? threeFigures(value) : value.toFixed(0)} ${prefix}B`;
    }
  }
  return `${n} B`;
}

function formatRatio(r) {
  return r === null || r === undefined ? "-" : `${r.toPrecision(3)}×`;
}

// a short column label for a site: "embedding" → "emb", "blocks.3.ffn.lif" → "3 ffn"
function siteLabel(site) {
  const m = /^blocks\.(\d+)\.(\w+)\.lif$/.exec(site);
  return m ? `${m[1]} ${m[2]}` : site === "embedding" ? "emb" : site;
}

// a token as a row label, with its whitespace visible
function tokenLabel(text) {
  return text.replace(/ /g, "␣").replace(/\n/g, "↵").replace(/\t/g, "⇥") || "∅";
}

// firing rate → colour: a dark-to-bright ramp over the square root of the rate, so that rates of a few percent
// remain distinguishable from silence
const RAMP = [[13, 8, 135], [126, 3, 168], [204, 71, 120], [248, 149, 64], [240, 249, 33]];

function rateColour(rate) {
  const t = Math.sqrt(Math.min(Math.max(rate, 0), 1)) * (RAMP.length - 1);
  const i = Math.min(Math.floor(t), RAMP.length - 2);
  const f = t - i;
  const c = RAMP[i].map((a, k) => Math.round(a + f * (RAMP[i + 1][k] - a)));
  return `rgb(${c[0]}, ${c[1]}, ${c[2]})`;
}

function element(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "text") node.textContent = v;
    else if (k === "style") node.style.cssText = v;
    else node.setAttribute(k, v);
  }
  node.append(...children);
  return node;
}

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
  const card = (await response.json()).data[0];
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
  buildRasterHeader(card.spiking.sites);
  buildLegend();
}

// ---- errors --------------------------------------------------------------------------------------------------------

const HINTS = {
  400: "the request was refused",
  401: "the server needs an API key: enter it above",
  413: "the request is too large",
  429: "the server is busy",
  503: "the server is not ready",
};

async function errorMessage(response) {
  let message = response.statusText;
  try {
    message = (await response.json()).error.message;
  } catch (e) {
    // not an OpenAI error body: keep the status text
  }
  const retry = response.headers.get("Retry-After");
  const hint = HINTS[response.status] ? `${HINTS[response.status]}: ` : "";
  return `${response.status} — ${hint}${message}${retry ? ` (retry after ${retry} s)` : ""}`;
}

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
  state.tokensRead = 0;
  state.totals = state.model ? state.model.spiking.sites.map(() => 0) : null;
  renderRates();
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

// server-sent events over fetch (EventSource cannot POST): "data: <json>" blocks separated by blank lines
async function readStream(response, chat, started) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      for (const line of block.split("\n")) {
        if (!line.startsWith("data: ")) continue;
        const data = line.slice(6);
        if (data === "[DONE]") {
          draw();
          const seconds = (performance.now() - started) / 1000;
          if ($("error").hidden) setStatus(`Done: ${state.rows} tokens in ${seconds.toFixed(2)} s.`);
          return;
        }
        handleChunk(JSON.parse(data), chat);
      }
    }
  }
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
    if (chunk.usage) renderUsage(chunk.usage);
    if (chunk.energy) renderEnergy(chunk.energy);
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
  for (const [entry, token] of rows) fragment.append(rasterRow(entry, token));
  body.append(fragment);
  while (body.rows.length > RASTER_ROWS) body.deleteRow(0);
  const scroller = $("raster").parentElement;
  scroller.scrollTop = scroller.scrollHeight;
  setStatus(`Streaming… ${state.rows} tokens`);
  renderRates();
}

function tokenTexts(choice, chat) {
  if (!choice.logprobs) return [];
  return chat ? choice.logprobs.content.map((e) => e.token) : choice.logprobs.tokens;
}

// ---- the raster --------------------------------------------------------------------------------------------------

function buildRasterHeader(sites) {
  const row = $("raster").tHead.rows[0];
  row.replaceChildren(element("th", { scope: "col", text: "#" }), element("th", { scope: "col", text: "token" }));
  for (const site of sites) row.append(element("th", { scope: "col", title: site, text: siteLabel(site) }));
}

function buildLegend() {
  const stops = [0, 0.01, 0.05, 0.1, 0.25, 0.5, 1];
  const legend = $("legend");
  legend.replaceChildren(element("span", { text: "firing rate" }));
  for (const rate of stops) {
    legend.append(element("span", { class: "swatch", style: `background: ${rateColour(rate)}` }), ` ${rate} `);
  }
}

// one raster row (and the entry counted into the totals)
function rasterRow(entry, token) {
  const { sites, site_width: width } = state.model.spiking;
  const row = element("tr");
  const label = token === undefined ? "?" : tokenLabel(token);
  row.append(element("th", { scope: "row", text: String(state.rows + 1) }));
  const read = entry.tokens === 1 ? "" : ` (after reading ${entry.tokens} prompt tokens)`;
  row.append(element("th", { scope: "row", class: "token", title: `token ${JSON.stringify(token)}${read}`, text: label }));
  entry.counts.forEach((count, s) => {
    const rate = count / (entry.tokens * width);
    row.append(
      element("td", {
        style: `background: ${rateColour(rate)}`,
        title: `${sites[s]}: ${count} spikes of ${entry.tokens * width} values (rate ${rate.toFixed(3)})`,
        "data-count": String(count),
        "aria-label": `${sites[s]} ${count} spikes`,
      }),
    );
    state.totals[s] += count;
  });
  state.tokensRead += entry.tokens;
  state.rows += 1;
  return row;
}

// ---- firing rate per layer ---------------------------------------------------------------------------------------

function renderRates() {
  const box = $("rates");
  box.replaceChildren();
  if (!state.model) return;
  const { sites, site_width: width } = state.model.spiking;
  const elements = state.tokensRead * width;
  sites.forEach((site, s) => {
    const rate = elements ? state.totals[s] / elements : 0;
    const bar = element("div", { class: "bar" }, element("span", { style: `width: ${(rate * 100).toFixed(2)}%` }));
    box.append(
      element(
        "div",
        { class: "rate-row", "data-site": site, "data-rate": String(rate) },
        element("span", { class: "rate-name", text: site }),
        bar,
        element("span", { class: "rate-value", text: elements ? rate.toFixed(3) : "-" }),
      ),
    );
  });
}

// ---- usage and the energy meter ----------------------------------------------------------------------------------

function fact(list, name, value, attrs = {}) {
  list.append(element("div", attrs, element("dt", { text: name }), element("dd", { text: String(value) })));
}

function renderUsage(usage) {
  const list = $("usage");
  fact(list, "prompt tokens", usage.prompt_tokens, { "data-field": "prompt_tokens" });
  const details = usage.prompt_tokens_details;
  if (details && details.cached_tokens !== undefined && details.cached_tokens !== null) {
    fact(list, "from cache", details.cached_tokens, { "data-field": "cached_tokens" });
  }
  fact(list, "generated tokens", usage.completion_tokens, { "data-field": "completion_tokens" });
}

const BASELINE_NAMES = { spiking_off: "spiking off", vanilla_gpt: "vanilla GPT" };

// one row of a rule's meter: the operations' energy as a bar, with data movement stacked on when it is given
function meterBar(name, joules, moved, largest, cls) {
  const share = (j) => (largest ? (100 * j) / largest : 0).toFixed(2);
  const bar = element("div", { class: "bar" }, element("span", { style: `width: ${share(joules)}%` }));
  if (moved !== null) bar.append(element("span", { class: "moved", style: `width: ${share(moved)}%` }));
  return element(
    "div",
    { class: `meter-row ${cls}` },
    element("span", { class: "meter-name", text: name }),
    bar,
    element("span", {
      class: moved === null ? "meter-value" : "meter-total",
      text: formatJoules(moved === null ? joules : joules + moved),
    }),
  );
}

function ratioLine(name, baseline, ratio, attr, suffix) {
  return element("p", {
    class: "ratio",
    [attr]: name,
    "data-value": String(ratio),
    title: baseline.description,
    text: `${BASELINE_NAMES[name] || name} / this model${suffix}: ${formatRatio(ratio)}`,
  });
}

function renderEnergy(energy) {
  const box = $("energy");
  box.replaceChildren();
  const summary = element("dl", { class: "facts" });
  fact(summary, "mean firing rate", energy.firing_rate.toFixed(3), { "data-value": String(energy.firing_rate) });
  fact(summary, "tokens processed", energy.tokens);
  fact(summary, "profile", energy.profile);
  box.append(summary);
  const joules = (figures, name, report, field) =>
    fact(figures, name, formatJoules(report[field]), { "data-field": field, "data-value": String(report[field]) });
  for (const [rule, report] of Object.entries(energy.rules)) {
    const card = element("article", { class: "rule", "data-rule": rule, "aria-label": `rule ${rule}` });
    card.append(element("h3", { text: `rule ${rule}`, title: report.rule_description }));
    const figures = element("dl", { class: "facts" });
    joules(figures, "operations", report, "energy_j");
    joules(figures, "per generated token", report, "energy_j_per_generated_token");
    const memory = report.weight_memory ? ` from ${report.weight_memory.toUpperCase()}` : " (not priced)";
    fact(figures, "weights read", `${formatBytes(report.weight_bytes)}${memory}`, {
      "data-field": "weight_bytes",
      "data-value": String(report.weight_bytes),
      title: report.reads_rule_description,
    });
    joules(figures, "data movement", report, "data_movement_j");
    joules(figures, "total", report, "total_j");
    joules(figures, "total per generated token", report, "total_j_per_generated_token");
    card.append(figures);
    const baselines = Object.entries(report.baselines);
    card.append(element("h4", { text: "operations" }));
    const largest = Math.max(report.energy_j, ...baselines.map(([, b]) => b.energy_j));
    card.append(meterBar("this model", report.energy_j, null, largest, "self"));
    for (const [name, baseline] of baselines) {
      card.append(meterBar(BASELINE_NAMES[name] || name, baseline.energy_j, null, largest, "baseline"));
      card.append(ratioLine(name, baseline, baseline.ratio, "data-baseline", ""));
    }
    card.append(element("h4", { text: `with data movement (${report.reads_rule} reads)` }));
    const largestTotal = Math.max(report.total_j, ...baselines.map(([, b]) => b.total_j));
    card.append(meterBar("this model", report.energy_j, report.data_movement_j, largestTotal, "self"));
    for (const [name, baseline] of baselines) {
      const label = BASELINE_NAMES[name] || name;
      card.append(meterBar(label, baseline.energy_j, baseline.data_movement_j, largestTotal, "baseline"));
      card.append(ratioLine(name, baseline, baseline.total_ratio, "data-total-baseline", " with data movement"));
    }
    box.append(card);
  }
  box.append(element("p", { class: "hint", text: energy.note }));
}

// ---- page state ---------------------------------------------------------------------------------------------------

function setBusy(busy) {
  $("send").disabled = busy;
  $("stop-button").disabled = !busy;
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
  document.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) $("request-form").requestSubmit();
    if (e.key === "Escape" && state.controller) state.controller.abort();
  });
  setMode();
  loadModel();
});
