// tierflow AIPL dashboard: fetches the JSON endpoints beside the page and draws
// every chart as hand-written SVG (no libraries, no network beyond this server).
// Each chart also records the numbers it drew in data-rendered, and the body's
// data-state / data-errors say when rendering finished and whether anything failed,
// so headless checks can read the page without scraping pixels.
"use strict";

(function () {
  const SVGNS = "http://www.w3.org/2000/svg";
  const STAGES = [
    { key: "awareness", label: "Aware", color: "var(--a)" },
    { key: "interest", label: "Interested", color: "var(--i)" },
    { key: "purchase", label: "Purchased", color: "var(--p)" },
    { key: "loyalty", label: "Loyal", color: "var(--l)" },
  ];
  const RATES = [
    { key: "a_to_i", label: "A→I", color: "var(--i)" },
    { key: "i_to_p", label: "I→P", color: "var(--p)" },
    { key: "p_to_l", label: "P→L", color: "var(--l)" },
  ];
  const PALETTE = ["#5b7cfa", "#22b8cf", "#f59f00", "#e64980", "#7950f2", "#40c057",
    "#fd7e14", "#15aabf", "#be4bdb", "#82c91e"];
  const DIMENSIONS = ["segment", "lifecycle", "membership", "aipl"];

  const errors = [];
  function fail(message) {
    errors.push(String(message));
    document.body.dataset.errors = JSON.stringify(errors);
  }
  window.addEventListener("error", (e) => fail(e.message));
  window.addEventListener("unhandledrejection", (e) => fail(e.reason && e.reason.message || e.reason));

  const DOMAIN_NAMES = { public: "Public domain", private: "Private domain", both: "Both", none: "Not seen" };

  // --- helpers ---------------------------------------------------------------------------

  function svg(tag, attrs, ...children) {
    const node = document.createElementNS(SVGNS, tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    for (const c of children) node.append(c);
    return node;
  }
  function html(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    for (const c of children) node.append(c);
    return node;
  }
  function text(x, y, content, attrs) {
    return svg("text", Object.assign({ x, y }, attrs || {}), String(content));
  }
  const fmtInt = (n) => Number(n).toLocaleString("en-US");
  const fmtPct = (r) => (r === null || r === undefined ? "–" : (r * 100).toFixed(2) + "%");
  const fmtMoney = (cents) => (cents / 100).toLocaleString("en-US",
    { minimumFractionDigits: 2, maximumFractionDigits: 2 });
  const label = (s) => (s === null || s === undefined || s === "" ? "(none)" : String(s).replace(/_/g, " "));

  function frame(id, width, height) {
    const root = svg("svg", { viewBox: `0 0 ${width} ${height}`, role: "img" });
    const box = document.getElementById(id);
    box.replaceChildren(root);
    return root;
  }
  function empty(id, message) {
    document.getElementById(id).replaceChildren(html("div", { class: "empty" }, message));
    document.getElementById(id).dataset.rendered = JSON.stringify({ empty: true });
  }
  function rendered(id, doc) {
    document.getElementById(id).dataset.rendered = JSON.stringify(doc);
  }

  async function api(path, query) {
    const url = new URL("../api/" + path, location.href);
    for (const [k, v] of Object.entries(query || {})) if (v) url.searchParams.set(k, v);
    // The session cookie of the login form goes along (same origin); never a token in a URL.
    const resp = await fetch(url, { headers: { Accept: "application/json" } });
    const body = await resp.json();
    if (!resp.ok) throw new Error(`${path}: ${body.error || resp.status}`);
    return body;
  }

  // --- sales: revenue, orders, average order value against the previous period ----------

  function delta(change, before) {
    if (change === null || change === undefined) {
      return html("span", { class: "delta" }, before ? "no change" : "nothing before");
    }
    const pct = `${change >= 0 ? "▲ +" : "▼ "}${(change * 100).toFixed(1)}%`;
    return html("span", { class: `delta ${change > 0 ? "up" : change < 0 ? "down" : ""}` }, pct);
  }

  function drawSales(doc) {
    const prev = doc.previous;
    const partial = doc.partial ? html("span", { class: "badge", title: "the period includes today, which is not over" }, "partial") : "";
    const cards = [
      { key: "revenue_cents", label: "Revenue", value: fmtMoney(doc.revenue_cents), color: "var(--p)" },
      { key: "orders", label: "Orders", value: fmtInt(doc.orders), color: "var(--a)" },
      { key: "aov_cents", label: "Average order value",
        value: doc.aov_cents === null ? "–" : fmtMoney(doc.aov_cents), color: "var(--l)" },
    ];
    document.getElementById("sales").replaceChildren(...cards.map((c) => html("div",
      { class: "kpi", style: `--c:${c.color}`, "data-metric": c.key },
      html("div", { class: "label" }, c.label, partial ? partial.cloneNode(true) : ""),
      html("div", { class: "value" }, c.value),
      html("div", { class: "sub" }, delta(doc.change[c.key], prev && prev[c.key]),
        prev ? ` vs ${prev.from} to ${prev.to}` : ""))));
    document.getElementById("sales-note").textContent = doc.from
      ? `${doc.days} days; compared with the ${doc.days} days before.`
        + (doc.partial ? " Partial: the period includes today, which is not over." : "")
      : "No orders archived yet.";
    rendered("sales", { orders: doc.orders, revenue_cents: doc.revenue_cents, aov_cents: doc.aov_cents,
      change: doc.change, partial: doc.partial, previous: prev && { orders: prev.orders, revenue_cents: prev.revenue_cents } });
  }

  // --- KPI cards and funnel --------------------------------------------------------------

  function drawKpis(f) {
    const rates = [null, f.rates.a_to_i, f.rates.i_to_p, f.rates.p_to_l];
    const box = document.getElementById("kpis");
    box.replaceChildren(...STAGES.map((s, i) => {
      const sub = i === 0
        ? html("div", { class: "sub" }, "users reached in the period")
        : html("div", { class: "sub" }, `${RATES[i - 1].label} `, html("b", {}, fmtPct(rates[i])));
      const card = html("div", { class: "kpi", style: `--c:${s.color}`, "data-stage": s.key },
        html("div", { class: "label" }, s.label),
        html("div", { class: "value" }, fmtInt(f[s.key])), sub);
      return card;
    }));
  }

  function drawFunnel(f) {
    if (!f.awareness) {
      empty("funnel", "No events archived in this period yet.");
      return rendered("funnel", f);
    }
    const W = 600, rowH = 46, gap = 30, left = 104, barArea = W - left - 8;
    const H = STAGES.length * rowH + (STAGES.length - 1) * gap + 8;
    const root = frame("funnel", W, H);
    const top = Math.max(f.awareness, 1);
    STAGES.forEach((s, i) => {
      const y = i * (rowH + gap) + 4;
      const share = f[s.key] / top;
      const w = Math.max(barArea * share, 56);
      const x = left + (barArea - w) / 2;
      root.append(text(0, y + rowH / 2 + 5, s.label, { class: "big" }));
      root.append(svg("rect", { x, y, width: w, height: rowH, rx: 8, fill: s.color, class: "stage",
        "data-stage": s.key },
      svg("title", {}, `${s.label}: ${fmtInt(f[s.key])} users`)));
      const count = fmtInt(f[s.key]);
      const inside = w > count.length * 10 + 16;  // else the count goes beside the bar
      root.append(text(inside ? left + barArea / 2 : x + w + 8, y + rowH / 2 + 5, count,
        inside ? { "text-anchor": "middle", class: "big", style: "fill:#fff" } : { class: "big" }));
      if (i > 0) {
        const r = RATES[i - 1];
        const ry = y - gap / 2 + 5;
        root.append(text(left + barArea / 2, ry, `▼ ${r.label} ${fmtPct(f.rates[r.key])}`,
          { "text-anchor": "middle", class: "rate", "data-rate": r.key }));
        root.append(text(W - 8, ry, `${(share * 100).toFixed(1)}% of aware`,
          { "text-anchor": "end", class: "muted" }));
      }
    });
    rendered("funnel", f);
  }

  // --- weekly trend ----------------------------------------------------------------------

  function niceMax(v) {
    const steps = [0.05, 0.1, 0.2, 0.25, 0.4, 0.5, 0.6, 0.8, 1];
    return steps.find((s) => s >= v) || 1;
  }

  function drawTrend(doc) {
    const weeks = doc.weeks;
    if (!weeks.length) return empty("trend", "No events archived in this period yet.");
    const W = 600, H = 290, m = { l: 46, r: 14, t: 30, b: 40 };
    const pw = W - m.l - m.r, ph = H - m.t - m.b;
    const root = frame("trend", W, H);
    const all = weeks.flatMap((w) => RATES.map((r) => w.rates[r.key])).filter((v) => v !== null);
    const yMax = niceMax(Math.max(0.01, ...all));
    const maxAware = Math.max(1, ...weeks.map((w) => w.awareness));
    const x = (i) => m.l + (weeks.length === 1 ? pw / 2 : (i * pw) / (weeks.length - 1));
    const y = (v) => m.t + ph - (v / yMax) * ph;

    for (let k = 0; k <= 4; k++) {
      const v = (yMax * k) / 4, yy = y(v);
      root.append(svg("line", { x1: m.l, x2: W - m.r, y1: yy, y2: yy, class: "grid-line" }));
      root.append(text(m.l - 6, yy + 4, `${+(v * 100).toFixed(1)}%`, { "text-anchor": "end", class: "muted" }));
    }
    // Aware users per week, as faint bars along the bottom (volume context).
    const bw = Math.max(2, Math.min(18, pw / weeks.length - 2));
    weeks.forEach((w, i) => {
      const h = (w.awareness / maxAware) * ph * 0.3;
      root.append(svg("rect", { x: x(i) - bw / 2, y: m.t + ph - h, width: bw, height: h,
        fill: "#dfe5f3", rx: 2 }, svg("title", {}, `week of ${w.week}: ${fmtInt(w.awareness)} aware`)));
    });
    const step = Math.ceil(weeks.length / 8);
    weeks.forEach((w, i) => {
      if (i % step === 0 || i === weeks.length - 1) {
        root.append(text(x(i), H - m.b + 18, w.week.slice(5), { "text-anchor": "middle", class: "muted" }));
      }
    });
    let points = 0;
    RATES.forEach((r) => {
      let d = "", pen = false;
      weeks.forEach((w, i) => {
        const v = w.rates[r.key];
        if (v === null) { pen = false; return; }
        d += `${pen ? "L" : "M"}${x(i).toFixed(1)},${y(v).toFixed(1)}`;
        pen = true;
      });
      root.append(svg("path", { d, fill: "none", stroke: r.color, "stroke-width": 2.5,
        "stroke-linejoin": "round", "data-rate": r.key }));
      weeks.forEach((w, i) => {
        const v = w.rates[r.key];
        if (v === null) return;
        points += 1;
        root.append(svg("circle", { cx: x(i), cy: y(v), r: 3.2, fill: w.partial ? "#fff" : r.color,
          stroke: r.color, "stroke-width": 2, class: "pt", "data-rate": r.key, "data-week": w.week,
          "data-value": v },
        svg("title", {}, `${r.label} week of ${w.week}: ${fmtPct(v)}${w.partial ? " (partial week)" : ""}`)));
      });
    });
    let lx = m.l;
    RATES.forEach((r) => {
      root.append(svg("rect", { x: lx, y: 4, width: 12, height: 12, rx: 3, fill: r.color }));
      root.append(text(lx + 17, 14, r.label));
      lx += 70;
    });
    root.append(svg("rect", { x: lx, y: 4, width: 12, height: 12, rx: 3, fill: "#dfe5f3" }));
    root.append(text(lx + 17, 14, "aware users"));
    rendered("trend", { weeks: weeks.length, points, first: weeks[0].week,
      last: weeks[weeks.length - 1].week, rates: weeks.map((w) => w.rates),
      partial: weeks.filter((w) => w.partial).map((w) => w.week) });
  }

  // --- breakdowns ------------------------------------------------------------------------

  function drawBreakdown(id, groups, noun, nameOf = label) {
    const names = Object.keys(groups).slice(0, 8);
    if (!names.length) return empty(id, `No ${noun} data in this period yet.`);
    const W = 600, left = 150, right = 70, barH = 9, inner = 3, rowH = 3 * (barH + inner) + 16;
    const H = names.length * rowH + 24;
    const root = frame(id, W, H);
    const all = names.flatMap((n) => RATES.map((r) => groups[n].rates[r.key] || 0));
    const xMax = niceMax(Math.max(0.01, ...all));
    const pw = W - left - right;
    RATES.forEach((r, k) => {
      root.append(svg("rect", { x: left + k * 70, y: 2, width: 10, height: 10, rx: 3, fill: r.color }));
      root.append(text(left + k * 70 + 15, 11, r.label, { class: "muted" }));
    });
    names.forEach((n, i) => {
      const g = groups[n];
      const y0 = 24 + i * rowH;
      root.append(text(0, y0 + 14, nameOf(n), { class: "big" }));
      root.append(text(0, y0 + 30, `${fmtInt(g.awareness)} aware`, { class: "muted" }));
      RATES.forEach((r, k) => {
        const v = g.rates[r.key];
        const yy = y0 + k * (barH + inner);
        root.append(svg("rect", { x: left, y: yy, width: pw, height: barH, rx: 4, fill: "#f1f3f8" }));
        root.append(svg("rect", { x: left, y: yy, width: ((v || 0) / xMax) * pw, height: barH, rx: 4,
          fill: r.color, "data-group": n, "data-rate": r.key },
        svg("title", {}, `${label(n)} ${r.label}: ${fmtPct(v)}`)));
        root.append(text(W - right + 6, yy + barH - 1, fmtPct(v), { class: "muted" }));
      });
    });
    rendered(id, { groups: names.length, names });
  }

  // --- tiers and migration ---------------------------------------------------------------

  function tabs(navId, options, current, onPick) {
    const nav = document.getElementById(navId);
    nav.replaceChildren(...options.map((o) => {
      const b = html("button", { type: "button", "aria-pressed": String(o === current) }, label(o));
      b.addEventListener("click", () => onPick(o));
      return b;
    }));
  }

  function hbars(id, items, valueText, left) {
    const W = 600, right = 110, barH = 20, gap = 10;
    const H = items.length * (barH + gap) + 4;
    const root = frame(id, W, H);
    const max = Math.max(1, ...items.map((it) => it.value));
    items.forEach((it, i) => {
      const y = i * (barH + gap) + 2;
      root.append(text(left - 10, y + 15, it.name, { "text-anchor": "end" }));
      root.append(svg("rect", { x: left, y, width: W - left - right, height: barH, rx: 5, fill: "#f1f3f8" }));
      root.append(svg("rect", { x: left, y, width: Math.max(2, (it.value / max) * (W - left - right)),
        height: barH, rx: 5, fill: it.color || PALETTE[i % PALETTE.length] },
      svg("title", {}, `${it.name}: ${valueText(it)}`)));
      root.append(text(W - right + 8, y + 15, valueText(it), { class: "muted" }));
    });
  }

  let tierData = null, tierDim = null;
  function drawTiers() {
    const dims = tierData.dimensions;
    const names = Object.keys(dims);
    tierDim = tierDim || names.find((d) => Object.keys(dims[d]).length) || "segment";
    tabs("tier-tabs", names, tierDim, (d) => {
      tierDim = d;
      drawTiers();
      exportLinks();
      card("tier-domains", drawTierDomains).catch((e) => fail(e.message || e));
    });
    const values = dims[tierDim] || {};
    const total = Object.values(values).reduce((a, b) => a + b, 0);
    if (!total) return empty("tiers", `No ${label(tierDim)} changes archived yet.`);
    const items = Object.entries(values).map(([name, value]) => ({ name: label(name), value }));
    hbars("tiers", items, (it) => `${fmtInt(it.value)} · ${((it.value / total) * 100).toFixed(1)}%`, 170);
    rendered("tiers", { dimension: tierDim, total, values });
  }

  const domainName = (d) => DOMAIN_NAMES[d] || label(d);

  async function drawTierDomains() {
    const dimension = tierDim || "segment";
    document.getElementById("tier-domains-dim").textContent = label(dimension);
    const doc = await api("tiers/domains", { to: period.to, dimension });
    const values = Object.entries(doc.values);
    if (!values.length) return empty("tier-domains", `No ${label(dimension)} values archived yet.`);
    const parts = ["private", "both", "public", "none"];
    const colors = { private: "var(--l)", both: "var(--p)", public: "var(--a)", none: "#ced4da" };
    const W = 600, left = 150, right = 60, barH = 20, gap = 10;
    const H = values.length * (barH + gap) + 30;
    const root = frame("tier-domains", W, H);
    const max = Math.max(1, ...values.map(([, s]) => parts.reduce((a, k) => a + s[k], 0)));
    parts.forEach((k, i) => {
      root.append(svg("rect", { x: left + i * 110, y: 2, width: 10, height: 10, rx: 3, fill: colors[k] }));
      root.append(text(left + i * 110 + 15, 11, domainName(k), { class: "muted" }));
    });
    values.forEach(([value, split], i) => {
      const y = 24 + i * (barH + gap);
      const total = parts.reduce((a, k) => a + split[k], 0);
      root.append(text(left - 10, y + 15, label(value), { "text-anchor": "end" }));
      let x = left;
      parts.forEach((k) => {
        const w = (split[k] / max) * (W - left - right);
        if (w <= 0) return;
        root.append(svg("rect", { x, y, width: w, height: barH, fill: colors[k], "data-reach": k },
          svg("title", {}, `${label(value)} · ${domainName(k)}: ${fmtInt(split[k])} users`)));
        x += w;
      });
      root.append(text(x + 8, y + 15, fmtInt(total), { class: "muted" }));
    });
    rendered("tier-domains", { dimension, values: doc.values });
  }

  let migrationDim = "segment", period = {};
  async function drawMigration() {
    tabs("migration-tabs", DIMENSIONS, migrationDim, (d) => {
      migrationDim = d;
      exportLinks();
      card("migration", drawMigration).catch((e) => fail(e.message || e));
    });
    const doc = await api("segments/migration", { ...period, dimension: migrationDim });
    if (!doc.flows.length) return empty("migration", `No ${label(migrationDim)} moves in this period.`);
    const items = doc.flows.slice(0, 12).map((f, i) => ({ name: `${label(f.from)} → ${label(f.to)}`,
      value: f.users, color: PALETTE[(i + 4) % PALETTE.length] }));
    hbars("migration", items, (it) => `${fmtInt(it.value)} users`, 260);
    rendered("migration", { dimension: migrationDim, flows: doc.flows.length });
  }

  // --- rewards ---------------------------------------------------------------------------

  function drawRewards(doc) {
    const list = doc.campaigns;
    document.getElementById("rewards-note").textContent = doc.from
      ? `Budget charged by grants per campaign, ${doc.from} to ${doc.to}`
      : "Budget charged by grants per campaign, all time";
    if (!list.length) return empty("rewards", "No campaigns configured and no grants archived yet.");
    const W = 1240, left = 210, right = 480, barH = 22, gap = 16;
    const H = list.length * (barH + gap) + 30;
    const root = frame("rewards", W, H);
    const pw = W - left - right;
    const maxSpent = Math.max(1, ...list.map((c) => c.spent_cents));
    list.forEach((c, i) => {
      const y = i * (barH + gap) + 4;
      const capped = c.budget_cents !== null && c.budget_cents !== undefined;
      const ratio = capped ? (c.budget_cents ? c.spent_cents / c.budget_cents : 1) : c.spent_cents / maxSpent;
      const color = !capped ? "var(--a)" : ratio >= 1 ? "var(--bad)" : ratio >= 0.8 ? "var(--warn)" : "var(--good)";
      root.append(text(0, y + 16, label(c.campaign), { class: "big" }));
      root.append(svg("rect", { x: left, y, width: pw, height: barH, rx: 6, fill: "#f1f3f8" }));
      root.append(svg("rect", { x: left, y, width: Math.max(2, Math.min(ratio, 1) * pw), height: barH,
        rx: 6, fill: color, "data-campaign": c.campaign },
      svg("title", {}, `${c.campaign}: ${fmtMoney(c.spent_cents)} charged`)));
      const budget = capped
        ? `${fmtMoney(c.spent_cents)} of ${fmtMoney(c.budget_cents)} (${(ratio * 100).toFixed(1)}%)`
        : `${fmtMoney(c.spent_cents)} · no budget cap`;
      root.append(text(left + pw + 12, y + 16, budget));
      root.append(text(W, y + 16, `${fmtInt(c.grants)} grants · ${fmtInt(c.redemptions)} redeemed`,
        { "text-anchor": "end", class: "muted" }));
    });
    const prizes = Object.entries(doc.by_prize).map(([k, v]) => `${label(k)} ${fmtInt(v)}`).join("  ·  ");
    root.append(text(0, H - 6, prizes ? `Grants by prize type: ${prizes}` : "", { class: "muted" }));
    rendered("rewards", { campaigns: list.length, from: doc.from, to: doc.to,
      grants: list.reduce((a, c) => a + c.grants, 0) });
  }

  // --- uplift: treated against control, per campaign with a holdout ---------------------------

  function drawUplift(doc) {
    const list = doc.campaigns;
    if (!list.length) return empty("uplift", "No campaign keeps a control group (holdout_percent) yet.");
    const interval = (d, fmt) => (d === null ? "–" : d.low === null ? `${fmt(d.difference)} (too few customers)`
      : `${fmt(d.difference)} [${fmt(d.low)}, ${fmt(d.high)}]`);
    const money = (c) => (c === null ? "–" : fmtMoney(c));
    const head = html("tr", {}, ...["Campaign", "Arm", "Customers", "Purchase rate", "Revenue / customer",
      "Rate uplift [95%]", "Revenue uplift [95%]"].map((h) => html("th", {}, h)));
    const rows = list.flatMap((c) => ["treated", "control"].map((arm, i) => html("tr", {},
      html("td", {}, i ? "" : label(c.campaign) + (c.holdout_percent ? ` (${c.holdout_percent}% held out)` : "")),
      html("td", {}, arm), html("td", {}, fmtInt(c[arm].customers)), html("td", {}, fmtPct(c[arm].purchase_rate)),
      html("td", {}, money(c[arm].revenue_per_customer_cents)),
      html("td", {}, i ? "" : interval(c.purchase_rate_uplift, fmtPct)),
      html("td", {}, i ? "" : interval(c.revenue_per_customer_uplift_cents, money)))));
    document.getElementById("uplift").replaceChildren(html("table", { class: "uplift" }, head, ...rows));
    rendered("uplift", { campaigns: list.length });
  }

  // --- status, period, load ----------------------------------------------------------------

  async function drawStatus() {
    const box = document.getElementById("status");
    try {
      const s = await api("archive/status");
      const state = s.writer ? s.writer.state : "running";
      box.dataset.state = state === "holding" ? "holding" : "running";
      const where = s.backend === "chdb" ? "embedded chDB" : "ClickHouse server";
      const writer = s.writer ? ` · writer ${s.writer.state}` : "";
      box.querySelector(".text").textContent = `${fmtInt(s.events)} events · ${where}${writer}`;
      if (s.writer && s.writer.last_error) box.title = s.writer.last_error;
      return s;
    } catch (e) {
      box.dataset.state = "error";
      box.querySelector(".text").textContent = "archive unavailable";
      throw e;
    }
  }

  // The period lives in the URL (so a link shows the same view); changing it re-fetches
  // the panels without reloading the page.
  function setPeriod(from, to) {
    const q = new URLSearchParams(location.search);
    for (const [k, v] of [["from", from], ["to", to]]) { if (v) q.set(k, v); else q.delete(k); }
    const query = q.toString();
    history.replaceState(null, "", location.pathname + (query ? "?" + query : ""));
    refresh();
  }

  function shift(day, days) {
    const d = new Date(day + "T00:00:00Z");
    d.setUTCDate(d.getUTCDate() + days);
    return d.toISOString().slice(0, 10);
  }

  let lastStatus = null;
  function wirePeriod() {
    const form = document.getElementById("period");
    form.addEventListener("submit", (e) => {
      e.preventDefault();
      setPeriod(form.from.value, form.to.value);
    });
    form.querySelectorAll("button[data-range]").forEach((b) => b.addEventListener("click", () => {
      const last = lastStatus && lastStatus.last_day;
      if (b.dataset.range === "all" || !last) return setPeriod("", "");
      setPeriod(shift(last, 1 - Number(b.dataset.range)), last);
    }));
  }

  // Each card's CSV link: the same query as the card, from the server (behind the same login).
  function exportLinks() {
    const dims = { tiers: null, "tier-domains": tierDim || "segment", migration: migrationDim };
    document.querySelectorAll("a.csv").forEach((a) => {
      const url = new URL(`../api/export/${a.dataset.panel}.csv`, location.href);
      for (const [k, v] of Object.entries(period)) if (v) url.searchParams.set(k, v);
      if (dims[a.dataset.panel]) url.searchParams.set("dimension", dims[a.dataset.panel]);
      a.href = url.pathname + url.search;
    });
  }

  async function card(id, work) {
    try {
      await work();
    } catch (e) {
      document.getElementById(id).replaceChildren(html("div", { class: "empty" }, String(e.message || e)));
      throw e;
    }
  }

  // One pass over every panel; the page stays as it is until each answer arrives.
  async function drawAll() {
    const q = new URLSearchParams(location.search);
    period = { from: q.get("from"), to: q.get("to") };
    exportLinks();
    lastStatus = await drawStatus().catch(() => lastStatus);
    const sales = api("sales", period);  // the KPI cards and the domain card share it
    sales.catch(() => {});  // each card reports the failure it sees
    const jobs = [
      card("sales", async () => drawSales(await sales)),
      card("funnel", async () => {
        const f = await api("aipl", period);
        drawKpis(f);
        drawFunnel(f);
      }),
      card("trend", async () => {
        const t = await api("aipl/trend", period);
        const form = document.getElementById("period");
        if (!form.contains(document.activeElement)) {  // never under the user's typing
          form.from.value = t.from || "";
          form.to.value = t.to || "";
        }
        document.getElementById("range-note").textContent = t.from
          ? `Period ${t.from} to ${t.to} (UTC days, inclusive)${t.partial ? "; partial: it includes today" : ""}`
          : "No events archived yet";
        drawTrend(t);
      }),
      card("by-channel", async () => drawBreakdown("by-channel", await api("aipl", { ...period, by: "channel" }), "channel")),
      card("by-category", async () => drawBreakdown("by-category", await api("products", period), "product category")),
      card("domains", async () => {
        drawBreakdown("domains", await api("domains", period), "domain", domainName);
        const byRevenue = Object.entries((await sales).domains)
          .sort(([, x], [, y]) => y.revenue_cents - x.revenue_cents);
        document.getElementById("domain-sales").replaceChildren(...byRevenue.flatMap(([d, s], i) => [
          i ? "  ·  " : "Revenue: ", `${domainName(d)} `, html("b", {}, fmtMoney(s.revenue_cents)),
          ` (${fmtInt(s.orders)} ${s.orders === 1 ? "order" : "orders"})`]));
      }),
      // Tiers first: they choose the dimension the domain split shows.
      card("tiers", async () => { tierData = await api("tiers", { to: period.to }); drawTiers(); })
        .then(() => card("tier-domains", drawTierDomains)),
      card("migration", drawMigration),
      card("rewards", async () => drawRewards(await api("rewards", period))),
      card("uplift", async () => drawUplift(await api("uplift"))),
    ];
    const results = await Promise.allSettled(jobs);
    const failed = results.filter((r) => r.status === "rejected").map((r) => r.reason.message || r.reason);
    failed.forEach(fail);
    return failed.length === 0;
  }

  // --- live refresh: every refresh_s while the tab is shown; at once when it is shown again ---

  let refreshS = null, timer = null, running = null, again = false, refreshedAt = 0;
  const live = document.getElementById("live");

  function showLive(ok) {
    const paused = document.hidden;
    live.dataset.state = paused ? "paused" : ok ? "on" : "error";
    const at = new Date(refreshedAt).toISOString().slice(11, 19);
    live.querySelector(".text").textContent = paused ? "paused while hidden"
      : `live · ${at} UTC`;
  }

  function schedule() {
    clearTimeout(timer);
    if (refreshS && !document.hidden) timer = setTimeout(refresh, refreshS * 1000);
  }

  async function refresh() {
    if (running) { again = true; return running; }
    running = (async () => {
      let ok = true;
      do {
        again = false;
        ok = await drawAll();
      } while (again);
      refreshedAt = Date.now();
      document.body.dataset.refreshes = String(Number(document.body.dataset.refreshes || -1) + 1);
      document.body.dataset.state = errors.length ? "error" : "ready";
      showLive(ok);
    })();
    try { await running; } finally { running = null; schedule(); }
  }

  document.addEventListener("visibilitychange", () => {
    if (document.hidden) { clearTimeout(timer); showLive(true); return; }
    if (refreshS && Date.now() - refreshedAt >= refreshS * 1000) refresh(); else schedule();
    showLive(true);
  });

  async function load() {
    wirePeriod();
    try {
      refreshS = (await api("dashboard/config")).refresh_s;
    } catch (e) {
      fail(e.message || e);
    }
    await refresh();
  }

  load();
})();
