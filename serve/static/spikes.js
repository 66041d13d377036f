// What the playground (/) and the compare page (/compare) draw alike: numbers formatted as the CLI's tables format
// them, firing-rate colours, spike rasters, firing-rate bars and energy cards, error messages and the server-sent
// events of a streamed answer. Plain functions on the elements they are given; no framework, no build step.
"use strict";

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

// ---- errors --------------------------------------------------------------------------------------------------------

const HINTS = {
  400: "the request was refused",
  401: "the server needs an API key: enter it above",
  404: "no such model",
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

// ---- server-sent events over fetch (EventSource cannot POST): "data: <json>" blocks separated by blank lines --------

// calls onEvent with each event's payload; returns true at "[DONE]", false if the stream ended without it
async function readEvents(response, onEvent) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return false;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      for (const line of block.split("\n")) {
        if (!line.startsWith("data: ")) continue;
        const data = line.slice(6);
        if (data === "[DONE]") return true;
        onEvent(JSON.parse(data));
      }
    }
  }
}

// ---- the raster ----------------------------------------------------------------------------------------------------

function buildRasterHeader(row, sites) {
  row.replaceChildren(element("th", { scope: "col", text: "#" }), element("th", { scope: "col", text: "token" }));
  for (const site of sites) row.append(element("th", { scope: "col", title: site, text: siteLabel(site) }));
}

function buildLegend(legend) {
  const stops = [0, 0.01, 0.05, 0.1, 0.25, 0.5, 1];
  legend.replaceChildren(element("span", { text: "firing rate" }));
  for (const rate of stops) {
    legend.append(element("span", { class: "swatch", style: `background: ${rateColour(rate)}` }), ` ${rate} `);
  }
}

// one raster row: the spikes of the pass that produced token number `index` (`spiking`: the model card's)
function rasterRow(spiking, entry, token, index) {
  const { sites, site_width: width } = spiking;
  const row = element("tr");
  const label = token === undefined ? "?" : tokenLabel(token);
  row.append(element("th", { scope: "row", text: String(index) }));
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
  });
  return row;
}

// ---- firing rate per layer ---------------------------------------------------------------------------------------

// spike counts per site over the tokens read so far
class SpikeTotals {
  constructor(spiking) {
    this.spiking = spiking;
    this.counts = spiking.sites.map(() => 0);
    this.tokensRead = 0;
  }

  add(entry) {
    entry.counts.forEach((count, s) => (this.counts[s] += count));
    this.tokensRead += entry.tokens;
  }
}

function renderRates(box, totals) {
  box.replaceChildren();
  if (!totals) return;
  const { sites, site_width: width } = totals.spiking;
  const elements = totals.tokensRead * width;
  sites.forEach((site, s) => {
    const rate = elements ? totals.counts[s] / elements : 0;
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

function renderUsage(list, usage) {
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

function joulesFact(figures, name, report, field) {
  fact(figures, name, formatJoules(report[field]), { "data-field": field, "data-value": String(report[field]) });
}

function ruleCard(rule, report) {
  const card = element("article", { class: "rule", "data-rule": rule, "aria-label": `rule ${rule}` });
  card.append(element("h3", { text: `rule ${rule}`, title: report.rule_description }));
  const figures = element("dl", { class: "facts" });
  joulesFact(figures, "operations", report, "energy_j");
  joulesFact(figures, "per generated token", report, "energy_j_per_generated_token");
  const memory = report.weight_memory ? ` from ${report.weight_memory.toUpperCase()}` : " (not priced)";
  fact(figures, "weights read", `${formatBytes(report.weight_bytes)}${memory}`, {
    "data-field": "weight_bytes",
    "data-value": String(report.weight_bytes),
    title: report.reads_rule_description,
  });
  joulesFact(figures, "data movement", report, "data_movement_j");
  joulesFact(figures, "total", report, "total_j");
  joulesFact(figures, "total per generated token", report, "total_j_per_generated_token");
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
  return card;
}

function renderEnergy(box, energy) {
  box.replaceChildren();
  const summary = element("dl", { class: "facts" });
  fact(summary, "mean firing rate", energy.firing_rate.toFixed(3), { "data-value": String(energy.firing_rate) });
  fact(summary, "tokens processed", energy.tokens);
  fact(summary, "profile", energy.profile);
  box.append(summary);
  for (const [rule, report] of Object.entries(energy.rules)) box.append(ruleCard(rule, report));
  box.append(element("p", { class: "hint", text: energy.note }));
}
