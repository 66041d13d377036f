// The compare page: one prompt, one seed, two or three served models at once (POST /v1/compare, streamed). Each
// model's column draws its text, firing-rate bars, spike raster and energy as the playground draws them (spikes.js);
// the table of differences beneath is the server's (spikegpt.energy.compare), written here as the CLI writes it.
"use strict";

const $ = (id) => document.getElementById(id);

const MAX_MODELS = 3; // as POST /v1/compare
const RASTER_ROWS = 4096; // each column keeps its last rows only

const page = {
  cards: [], // GET /v1/models' cards
  columns: new Map(), // model name → Column of the comparison in flight or last shown
  controller: null, // AbortController of the request in flight
  needsKey: false,
};

// ---- a table figure as spikegpt.energy.compare.format_value writes it ---------------------------------------------

function formatValue(value, kind) {
  if (value === null || value === undefined) return "-";
  if (kind === "count") return String(value);
  if (kind === "joules") return formatJoules(value);
  return value.toFixed(kind === "fraction" ? 3 : 4);
}

function formatRelative(ratio) {
  return ratio === null || ratio === undefined ? "-" : `${ratio.toFixed(2)}×`;
}

// ---- one model's column --------------------------------------------------------------------------------------------

class Column {
  constructor(card) {
    this.card = card;
    this.root = $("column-template").content.firstElementChild.cloneNode(true);
    this.root.dataset.model = card.id;
    this.root.setAttribute("aria-label", `model ${card.id}`);
    this.part(".column-name").textContent = card.id;
    const info = this.part(".column-info");
    fact(info, "placement", card.spiking.placement || "residual");
    fact(info, "layers", card.spiking.n_layer);
    fact(info, "width", card.spiking.site_width);
    this.output = this.part(".output");
    this.output.append(document.createTextNode(""));
    buildRasterHeader(this.part(".raster").tHead.rows[0], card.spiking.sites);
    this.totals = new SpikeTotals(card.spiking);
    this.rows = 0;
    this.pending = { text: "", rows: [] };
    this.frame = null;
    this.finished = false;
    renderRates(this.part(".rates"), this.totals);
  }

  part(selector) {
    return this.root.querySelector(selector);
  }

  setStatus(text) {
    this.part(".column-status").textContent = text;
  }

  fail(message) {
    const box = this.part(".column-error");
    box.textContent = message;
    box.hidden = false;
    this.finished = true;
    this.setStatus("Failed.");
  }

  take(chunk) {
    for (const choice of chunk.choices) {
      this.pending.text += choice.text;
      const tokens = choice.logprobs ? choice.logprobs.tokens : [];
      (choice.spikes || []).forEach((entry, i) => this.pending.rows.push([entry, tokens[i]]));
    }
    if (chunk.energy) {
      this.draw();
      this.finished = true;
      this.setStatus(`Done: ${this.rows} tokens.`);
      energyCard(this.part(".energy-card"), chunk.energy);
    } else if (this.frame === null) {
      this.frame = requestAnimationFrame(() => this.draw());
    }
  }

  // what arrived since the last frame at once: one text append, one batch of rows, one scroll
  draw() {
    if (this.frame !== null) cancelAnimationFrame(this.frame);
    this.frame = null;
    const { text, rows } = this.pending;
    this.pending = { text: "", rows: [] };
    if (text) {
      this.output.lastChild.appendData(text);
      this.output.scrollTop = this.output.scrollHeight;
    }
    if (!rows.length) return;
    const body = this.part(".raster").tBodies[0];
    const fragment = document.createDocumentFragment();
    for (const [entry, token] of rows) {
      this.rows += 1;
      this.totals.add(entry);
      fragment.append(rasterRow(this.card.spiking, entry, token, this.rows));
    }
    body.append(fragment);
    while (body.rows.length > RASTER_ROWS) body.deleteRow(0);
    const scroller = this.part(".raster-scroll");
    scroller.scrollTop = scroller.scrollHeight;
    this.setStatus(`Streaming… ${this.rows} tokens`);
    renderRates(this.part(".rates"), this.totals);
  }
}

// per rule: the energy per generated token with data movement, and of the operations alone
function energyCard(list, energy) {
  list.replaceChildren();
  for (const [rule, report] of Object.entries(energy.rules)) {
    const value = report.total_j_per_generated_token;
    fact(list, rule, formatJoules(value), {
      "data-rule": rule,
      "data-value": String(value),
      title: `${formatJoules(report.energy_j_per_generated_token)} of operations per generated token; the rest is data movement (${report.reads_rule} reads). ${report.rule_description}`,
    });
  }
  fact(list, "profile", energy.profile);
}

// ---- the table of differences --------------------------------------------------------------------------------------

function renderTable(table) {
  const out = $("compare-table");
  out.replaceChildren();
  const head = element("tr", {}, element("th", { scope: "col", text: "model" }));
  for (const figure of table.figures) {
    head.append(element("th", { scope: "col", title: figure.description, text: figure.label }));
  }
  out.append(element("thead", {}, head));
  const body = element("tbody");
  for (const row of table.rows) {
    const tr = element("tr", { "data-model": row.model }, element("th", { scope: "row", text: row.model }));
    for (const figure of table.figures) {
      const value = row.values[figure.key];
      const cell = element("td", {
        "data-key": figure.key,
        "data-value": value === null ? "" : String(value),
      }, element("span", { class: "value", text: formatValue(value, figure.kind) }));
      if (row.model !== table.reference) {
        const ratio = row.relative[figure.key];
        cell.append(element("small", {
          class: "relative",
          "data-value": ratio === null ? "" : String(ratio),
          title: `relative to ${table.reference}`,
          text: formatRelative(ratio),
        }));
      }
      tr.append(cell);
    }
    body.append(tr);
  }
  out.append(body);
}

// ---- the served models ---------------------------------------------------------------------------------------------

function authHeaders() {
  const key = $("api-key").value.trim();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

async function loadModels() {
  let response;
  try {
    response = await fetch("/v1/models", { headers: authHeaders() });
  } catch (e) {
    showError(`cannot reach the server: ${e.message}`);
    return;
  }
  if (response.status === 401) {
    page.needsKey = true;
    $("key-row").hidden = false;
    $("models-loading").textContent = "(enter the API key)";
    return;
  }
  if (!response.ok) {
    showError(await errorMessage(response));
    return;
  }
  const cards = (await response.json()).data;
  if (cards.some((card) => !card.spiking)) {
    $("models-loading").textContent = "The models are still loading…";
    setTimeout(loadModels, 1000);
    return;
  }
  page.cards = cards;
  const box = $("models");
  box.querySelectorAll("label").forEach((label) => label.remove());
  $("models-loading").hidden = true;
  cards.forEach((card, i) => {
    const input = element("input", { type: "checkbox", name: "model", value: card.id, id: `model-${i}` });
    input.checked = i < MAX_MODELS;
    input.addEventListener("change", limitChoice);
    const placement = card.spiking.placement || "residual";
    box.append(element("label", { for: input.id }, input, ` ${card.id} `, element("small", { text: placement })));
  });
  limitChoice();
  if (cards.length < 2) showError("this server serves one model: start it with --model given two or three times");
}

function chosenModels() {
  return [...document.querySelectorAll('input[name="model"]:checked')].map((input) => input.value);
}

// two or three models: past three the other boxes wait; under two the button does
function limitChoice() {
  const chosen = chosenModels().length;
  for (const input of document.querySelectorAll('input[name="model"]')) {
    input.disabled = !input.checked && chosen >= MAX_MODELS;
  }
  $("send").disabled = page.controller !== null || chosen < 2;
}

// ---- the comparison ------------------------------------------------------------------------------------------------

function numberField(id) {
  const raw = $(id).value.trim();
  return raw === "" ? undefined : Number(raw);
}

function requestBody(models) {
  const body = {
    models,
    prompt: $("prompt").value,
    max_tokens: numberField("max_tokens"),
    temperature: numberField("temperature"),
    seed: numberField("seed"),
    ignore_eos: $("ignore_eos").checked,
    stream: true,
  };
  const continuation = $("continuation").value;
  if (continuation) body.continuation = continuation;
  return body;
}

function resetColumns(models) {
  page.columns = new Map(models.map((id) => [id, new Column(page.cards.find((card) => card.id === id))]));
  $("columns").replaceChildren(...[...page.columns.values()].map((column) => column.root));
  $("columns").style.setProperty("--columns", String(models.length));
  $("compare-table").replaceChildren();
}

function handleEvent(event) {
  if (event.object === "compare.table") {
    renderTable(event);
    return;
  }
  const column = page.columns.get(event.model);
  if (!column) return;
  if (event.error) column.fail(`${event.error.message}`);
  else column.take(event);
}

async function compare(event) {
  event.preventDefault();
  if (page.controller) return;
  clearError();
  if (!page.cards.length) {
    await loadModels();
    if (!page.cards.length) return;
  }
  const models = chosenModels();
  if (models.length < 2) {
    showError("choose two or three models");
    return;
  }
  resetColumns(models);
  page.controller = new AbortController();
  setBusy(true);
  setStatus("Sending…");
  const started = performance.now();
  try {
    const response = await fetch("/v1/compare", {
      method: "POST",
      headers: { "Content-Type": "application/json", ...authHeaders() },
      body: JSON.stringify(requestBody(models)),
      signal: page.controller.signal,
    });
    if (!response.ok) {
      showError(await errorMessage(response));
      setStatus("Refused.");
      return;
    }
    for (const column of page.columns.values()) column.setStatus("Streaming…");
    if (await readEvents(response, handleEvent)) {
      for (const column of page.columns.values()) column.draw();
      setStatus(`Done in ${((performance.now() - started) / 1000).toFixed(2)} s.`);
    }
  } catch (e) {
    for (const column of page.columns.values()) {
      column.draw();
      if (!column.finished) column.setStatus(`Stopped after ${column.rows} tokens.`);
    }
    if (e.name === "AbortError") setStatus("Stopped.");
    else showError(`the request failed: ${e.message}`);
  } finally {
    page.controller = null;
    setBusy(false);
  }
}

// ---- page state ---------------------------------------------------------------------------------------------------

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = false;
}

function clearError() {
  $("error").hidden = true;
  $("error").textContent = "";
}

function setBusy(busy) {
  $("stop-button").disabled = !busy;
  limitChoice();
}

function setStatus(text) {
  $("status").textContent = text;
}

document.addEventListener("DOMContentLoaded", () => {
  $("compare-form").addEventListener("submit", compare);
  $("stop-button").addEventListener("click", () => page.controller && page.controller.abort());
  $("api-key").addEventListener("change", () => page.cards.length || loadModels());
  document.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) $("compare-form").requestSubmit();
    if (e.key === "Escape" && page.controller) page.controller.abort();
  });
  buildLegend($("legend"));
  loadModels();
});
