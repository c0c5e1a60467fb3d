// The live console's page: reads the views pushed on /console/events (server-sent events) and
// draws them. Everything from the server is put in the page as text (textContent, attributes),
// never as markup. The shape of a view is `server::console::view::View`.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
let selected = new URLSearchParams(location.hash.slice(1)).get("group");
let lastView = null;

function el(tag, attributes, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes || {})) {
    node.setAttribute(name, String(value));
  }
  for (const child of children) {
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function rate(value) {
  if (value === null || value === undefined) return "–";
  if (value >= 1e6) return (value / 1e6).toFixed(2) + " M";
  if (value >= 1e3) return (value / 1e3).toFixed(1) + " k";
  return value.toFixed(value < 10 ? 1 : 0);
}

function ms(value) {
  if (value === null || value === undefined) return "–";
  return value < 1 ? value.toFixed(2) + " ms" : value.toFixed(1) + " ms";
}

function orDash(value) {
  return value === null || value === undefined ? "–" : String(value);
}

// Draws `points` (oldest first; nulls are gaps drawn as 0) as a polyline filling `svg`.
function spark(svg, points) {
  const [, , width, height] = svg.getAttribute("viewBox").split(" ").map(Number);
  const values = points.map((p) => (p === null ? 0 : p));
  const max = Math.max(1e-9, ...values);
  const step = values.length > 1 ? width / (values.length - 1) : width;
  const line = document.createElementNS(SVG, "polyline");
  line.setAttribute(
    "points",
    values.map((v, i) => `${(i * step).toFixed(1)},${(height - 2 - (v / max) * (height - 4)).toFixed(1)}`).join(" "),
  );
  svg.replaceChildren(line);
}

// Group ids are 128-bit: the first 8 hex digits tell them apart on a card (the title has all).
function shortId(id) {
  return id.length > 12 ? id.slice(0, 8) + "…" : id;
}

function groupCard(group) {
  const card = el("article", {
    class: "group" + (group.leader === null ? " leaderless" : "") + (group.id === selected ? " selected" : ""),
    "data-group": group.id,
    "data-leader": group.leader === null ? "" : group.leader,
    "data-term": orDash(group.term),
    "data-events-per-second": group.events_per_second,
  });
  const leader = group.leader === null ? "no leader" : `leader ${group.leader}`;
  card.append(
    el("div", { class: "group-head" },
      el("strong", { title: `group ${group.id}` }, `group ${shortId(group.id)}`),
      el("span", { class: "leader-label" }, `${leader} · term ${orDash(group.term)}`)),
    el("div", { class: "group-figures" },
      el("span", { title: "events committed per second" }, `${rate(group.events_per_second)} ev/s`),
      el("span", { title: "p99 of the requests its replicas answered" }, `p99 ${ms(group.p99_ms)}`),
      el("span", { title: "the farthest follower, in entries" }, `lag ${orDash(group.lag_entries_max)}`),
      el("span", { title: "saga copies open in the leader's state" }, `sagas ${orDash(group.open_saga_copies)}`)),
  );
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("class", "spark");
  svg.setAttribute("viewBox", "0 0 240 40");
  svg.setAttribute("preserveAspectRatio", "none");
  spark(svg, group.history.rate);
  card.append(svg);
  const replicas = el("ul", { class: "replicas" });
  for (const replica of group.replicas) {
    replicas.append(el("li", {
      class: "replica",
      "data-replica": replica.id,
      "data-role": replica.role || "unreachable",
      "data-reachable": replica.reachable,
      title: replica.reachable
        ? `${replica.address} · applied ${orDash(replica.applied_index)}`
        : `${replica.address} · ${replica.error || "unreachable"}`,
    }, `${replica.id} ${replica.role || "down"}`));
  }
  card.append(replicas);
  card.addEventListener("click", () => select(group.id));
  return card;
}

function select(id) {
  selected = id;
  history.replaceState(null, "", id === null ? location.pathname : `#group=${encodeURIComponent(id)}`);
  if (lastView) render(lastView);
}

function renderDetail(view) {
  const detail = document.getElementById("detail");
  const group = view.groups.find((g) => g.id === selected);
  detail.hidden = !group;
  if (!group) return;
  document.getElementById("detail-title").textContent =
    `group ${group.id}: ${group.leader === null ? "no leader" : "leader " + group.leader}, term ${orDash(group.term)}`;
  spark(document.getElementById("detail-rate-spark"), group.history.rate);
  spark(document.getElementById("detail-p99-spark"), group.history.p99_ms);
  const rows = group.replicas.map((r) => el("tr", { "data-replica": r.id },
    el("td", {}, r.id), el("td", {}, r.address), el("td", {}, r.reachable ? r.role : `down: ${r.error || ""}`),
    el("td", {}, orDash(r.term)), el("td", {}, orDash(r.leader)), el("td", {}, orDash(r.last_log_index)),
    el("td", {}, orDash(r.committed_index)), el("td", {}, orDash(r.applied_index)),
    el("td", {}, orDash(r.snapshot_index)), el("td", {}, `${orDash(r.snapshots_sent)} / ${orDash(r.snapshots_installed)}`)));
  document.getElementById("detail-replicas").replaceChildren(...rows);
  const leader = group.replicas.find((r) => r.id === group.leader);
  const followers = (leader ? leader.followers : []).map((f) => el("tr", {},
    el("td", {}, f.id), el("td", {}, f.lag_entries), el("td", {}, orDash(f.since_ack_ms))));
  document.getElementById("detail-followers").replaceChildren(...followers);
}

function render(view) {
  lastView = view;
  document.body.dataset.sampledAt = view.sampled_at_ms;
  document.getElementById("service").textContent = view.service;
  document.getElementById("sampled").textContent = `sampled ${new Date(view.sampled_at_ms).toLocaleTimeString()}`;
  document.getElementById("front-title").textContent =
    view.service === "gateway" ? "this gateway's requests" : "this node's requests";
  document.getElementById("front-rps").textContent = rate(view.front.requests_per_second);
  document.getElementById("front-p99").textContent = ms(view.front.p99_ms);
  document.getElementById("front-errors").textContent = (100 * view.front.error_ratio).toFixed(2) + " %";
  const sagas = view.front.sagas_in_flight;
  document.getElementById("front-sagas-figure").hidden = sagas === null;
  document.getElementById("front-sagas").textContent = orDash(sagas);
  spark(document.getElementById("front-rate-spark"), view.front.history.rate);
  spark(document.getElementById("front-p99-spark"), view.front.history.p99_ms);
  document.getElementById("group-count").textContent = `(${view.groups.length})`;
  document.getElementById("groups").replaceChildren(...view.groups.map(groupCard));
  renderDetail(view);
}

function connect() {
  const source = new EventSource("/console/events");
  const status = document.getElementById("connection");
  source.onopen = () => {
    document.body.dataset.connected = "true";
    status.textContent = "live";
  };
  source.onmessage = (message) => render(JSON.parse(message.data));
  source.onerror = () => {
    // EventSource reconnects by itself (the server may be restarting, or busy).
    document.body.dataset.connected = "false";
    status.textContent = "reconnecting…";
  };
}

document.getElementById("detail-close").addEventListener("click", () => select(null));
connect();
