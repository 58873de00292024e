// The dashboard's page: polls /api/state and draws the service graph and
// the tables. Text from the mesh is set with textContent only (never as
// markup), and nothing is loaded from elsewhere.
"use strict";

const SVG = "http://www.w3.org/2000/svg";

window.addEventListener("error", (event) => {
  document.body.dataset.error = String(event.message);
});

function svg(name, attributes, parent) {
  const element = document.createElementNS(SVG, name);
  for (const [key, value] of Object.entries(attributes)) {
    element.setAttribute(key, String(value));
  }
  parent.appendChild(element);
  return element;
}

function rate(value) {
  return value === null || value === undefined ? "-" : (value * 100).toFixed(1) + " %";
}

function millis(value) {
  return value === null || value === undefined ? "-" : value.toFixed(1);
}

function perSecond(value) {
  return value.toFixed(1);
}

// Gateway on the left, services on a circle around the centre.
function layout(services) {
  const positions = new Map();
  const others = services.filter((s) => s.name !== "gateway");
  const cx = 500, cy = 230, r = Math.min(180, 60 + 25 * others.length);
  others.forEach((service, i) => {
    const angle = -Math.PI / 2 + (2 * Math.PI * i) / Math.max(others.length, 1);
    positions.set(service.name, { x: cx + r * Math.cos(angle), y: cy + r * Math.sin(angle) });
  });
  if (services.some((s) => s.name === "gateway")) {
    positions.set("gateway", { x: 90, y: cy });
  }
  return positions;
}

function drawGraph(state) {
  const graph = document.getElementById("graph");
  graph.replaceChildren();
  const defs = svg("defs", {}, graph);
  const marker = svg("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 10, refY: 5, markerWidth: 8, markerHeight: 8, orient: "auto-start-reverse" }, defs);
  svg("path", { d: "M 0 0 L 10 5 L 0 10 z", fill: "#58626c" }, marker);
  const positions = layout(state.services);
  const radius = 30;
  for (const edge of state.edges) {
    const from = positions.get(edge.from), to = positions.get(edge.to);
    if (!from || !to) continue;
    const dx = to.x - from.x, dy = to.y - from.y;
    const length = Math.hypot(dx, dy) || 1;
    const ux = dx / length, uy = dy / length;
    const group = svg("g", { class: "edge " + edge.health, "data-from": edge.from, "data-to": edge.to }, graph);
    svg("line", {
      x1: from.x + ux * radius, y1: from.y + uy * radius,
      x2: to.x - ux * (radius + 2), y2: to.y - uy * (radius + 2),
      "marker-end": "url(#arrow)",
    }, group);
    const label = svg("text", { x: (from.x + to.x) / 2, y: (from.y + to.y) / 2 - 6 }, group);
    label.textContent = perSecond(edge.calls_per_second) + "/s · " + rate(edge.success_rate);
  }
  for (const service of state.services) {
    const at = positions.get(service.name);
    if (!at) continue;
    const group = svg("g", {
      class: "node " + service.health + (service.ejected > 0 ? " has-ejected" : ""),
      "data-service": service.name,
      "data-health": service.health,
      "data-ejected": service.ejected,
    }, graph);
    svg("circle", { cx: at.x, cy: at.y, r: radius }, group);
    const name = svg("text", { class: "name", x: at.x, y: at.y + radius + 16 }, group);
    name.textContent = service.name;
    const detail = svg("text", { class: "detail", x: at.x, y: at.y + radius + 30 }, group);
    const parts = [];
    if (service.name !== "gateway") parts.push(service.instances + " inst");
    if (service.calls_per_second > 0) parts.push(perSecond(service.calls_per_second) + "/s " + rate(service.success_rate));
    if (service.ejected > 0) parts.push(service.ejected + " ejected");
    detail.textContent = parts.join(" · ");
  }
}

function fill(id, rows) {
  const body = document.querySelector("#" + id + " tbody");
  body.replaceChildren();
  for (const cells of rows) {
    const tr = document.createElement("tr");
    for (const cell of cells) {
      const td = document.createElement("td");
      const value = typeof cell === "object" && cell !== null ? cell : { text: cell };
      td.textContent = String(value.text);
      if (value.className) td.className = value.className;
      tr.appendChild(td);
    }
    body.appendChild(tr);
  }
}

function num(text) {
  return { text, className: "num" };
}

function draw(state) {
  const status = document.getElementById("status");
  if (state.problem) {
    status.textContent = "refresh failed: " + state.problem;
    status.className = "problem";
  } else {
    const at = state.updated_unix_ms ? new Date(state.updated_unix_ms).toLocaleTimeString() : "-";
    status.textContent = state.proxies.length + " proxies · figures over " + state.interval_seconds + " s · updated " + at;
    status.className = "";
  }
  drawGraph(state);
  fill("services", state.services.map((s) => [
    s.name, num(perSecond(s.calls_per_second)), num(rate(s.success_rate)),
    num(millis(s.p50_ms)), num(millis(s.p99_ms)), num(s.instances),
    s.ejected > 0 ? { text: s.ejected, className: "num ejected" } : num(0),
  ]));
  fill("routes", state.routes.map((r) => [
    r.name, r.matches, r.destination, r.exposure,
    r.split.length ? r.split.map(([subset, weight]) => subset + " " + weight).join(", ") : "every endpoint",
    num(r.rules),
  ]));
  fill("endpoints", state.endpoints.map((e) => [
    e.service, e.instance, e.address, e.version, num(e.weight),
    e.ejected ? { text: "ejected", className: "ejected" } : "healthy",
  ]));
  fill("proxies", state.proxies.map((p) => [
    p.service, p.instance, num(p.pushed_version), num(p.acked_version),
    { text: p.state, className: "state-" + p.state }, p.nack_reason,
  ]));
}

async function refresh() {
  try {
    const response = await fetch("/api/state", { cache: "no-store" });
    if (!response.ok) throw new Error("GET /api/state: " + response.status);
    draw(await response.json());
  } catch (error) {
    const status = document.getElementById("status");
    status.textContent = "cannot reach meshctl dashboard: " + error.message;
    status.className = "problem";
  }
}

refresh();
setInterval(refresh, 1000);
