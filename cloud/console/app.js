// The operator console: sign-in, the live map, corridors (request, watch, cancel) and alarms
// (see, acknowledge). Everything it shows comes from the operators' API and its live stream;
// every act is checked again by the API (a viewer's buttons are hidden, not trusted).

import { ApiError, Unauthorized, call, saveToken, savedToken, stream } from "./api.js";
import { MapView } from "./map.js";

const TERMINAL = new Set(["rejected", "completed", "cancelled", "timed_out", "failed"]);
const $ = (selector) => document.querySelector(selector);

const view = {
  me: null,
  corridors: new Map(),
  archived: new Map(), // corridors met in history pages (perhaps from before a restart)
  alarms: new Map(),
  fleet: [], // GET /v1/vehicles' vehicles
  clock: null, // {now, wall (ms), rate, at (performance.now())}
  selected: null,
  pick: "origin",
  live: null,
  animating: false,
};
const stats = { events: 0, latencies: [], reconnects: 0, firstPaintMs: null };
let map = null;

function element(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes)) {
    if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  for (const child of children) {
    if (child !== null && child !== undefined) node.append(child);
  }
  return node;
}

// replaceChildren, leaving out what a condition made null
function fill(parent, ...children) {
  parent.replaceChildren(...children.filter((child) => child !== null && child !== undefined));
}

// ---- time ---------------------------------------------------------------------------------

function controllerNow() {
  const c = view.clock;
  return c ? c.now + ((performance.now() - c.at) / 1000) * c.rate : null;
}

function wallOf(controllerSeconds) {
  const c = view.clock;
  if (!c || controllerSeconds === null || controllerSeconds === undefined) return null;
  return new Date(c.wall + ((controllerSeconds - c.now) / c.rate) * 1000);
}

function hms(controllerSeconds) {
  const wall = wallOf(controllerSeconds);
  return wall ? wall.toLocaleTimeString([], { hour12: false }) : "–";
}

function setClock(states) {
  view.clock = { now: states.now, wall: Date.parse(states.time), rate: states.rate, at: performance.now() };
}

// ---- sign-in ------------------------------------------------------------------------------

function showLogin(reason) {
  view.live?.stop();
  view.live = null;
  saveToken(null);
  $("#app").hidden = true;
  $("#login").hidden = false;
  $("#login-reason").textContent = reason;
  $("#token").focus();
}

function guard(error) {
  if (error instanceof Unauthorized) {
    showLogin("Your token was refused (missing, expired or revoked): sign in again.");
    return true;
  }
  return false;
}

async function start() {
  if (!savedToken()) {
    showLogin("Sign in with your API token.");
    return;
  }
  try {
    view.me = await call("GET", "/v1/me");
  } catch (error) {
    if (!guard(error)) showLogin(`Cannot reach the service: ${error.message}`);
    return;
  }
  $("#login").hidden = true;
  $("#app").hidden = false;
  $("#who").textContent = `${view.me.name} (${view.me.role})`;
  const acts = view.me.role !== "viewer";
  $("#request-panel").hidden = !acts;
  const incidents = view.me.role === "operator" ? Object.keys(view.me.caps) : ["medical", "fire", "police"];
  $("#request-form [name=incident]").replaceChildren(
    ...incidents.map((name) => element("option", { value: name }, name)),
  );
  map ??= new MapView($("#map"));
  map.onPick = pick;
  map.onFrame = () => {
    if (stats.firstPaintMs === null && map.drawn > 0) stats.firstPaintMs = performance.now();
  };
  const [network, states, fleet] = await Promise.all([
    call("GET", "/v1/map"), call("GET", "/v1/intersections"), call("GET", "/v1/vehicles"),
  ]);  // prettier-ignore
  map.setNetwork(network);
  setClock(states);
  map.setStates(states);
  setFleet(fleet);
  await refresh();
  view.live = stream({
    onEvent,
    onOpen: refresh,
    onState: (state, seconds) => {
      const label = $("#stream");
      label.dataset.state = state;
      if (state === "reconnecting") stats.reconnects++;
      label.textContent =
        state === "live" ? "live" : state === "reconnecting" ? `stream lost: reconnecting in ${seconds} s` : "connecting…";
    },
    onUnauthorized: () => showLogin("Your token was refused (missing, expired or revoked): sign in again."),
  });
  route();
}

// What the stream may have missed while it was away.
async function refresh() {
  try {
    const [corridors, alarms] = await Promise.all([call("GET", "/v1/corridors"), call("GET", "/v1/alarms")]);
    view.corridors = new Map(corridors.corridors.map((c) => [c.corridor_id, c]));
    view.alarms = new Map(alarms.alarms.map((a) => [a.alarm_id, a]));
    renderCorridors();
    renderAlarms();
  } catch (error) {
    guard(error);
  }
}

function onEvent(kind, data) {
  stats.events++;
  if (kind === "intersections") {
    setClock(data);
    map.setStates(data);
    const sent = Date.parse(data.time);
    requestAnimationFrame(() => {
      stats.latencies.push(Date.now() - sent);
      if (stats.latencies.length > 500) stats.latencies.shift();
    });
    const online = data.states.filter((s) => s !== "offline" && s !== "unknown").length;
    $("#counts").textContent = `${online}/${data.ids.length} intersections online`;
  } else if (kind === "vehicles") {
    setFleet(data);
  } else if (kind === "corridor") {
    const known = view.corridors.get(data.corridor_id);
    if (!known || known.updated_at <= data.updated_at) view.corridors.set(data.corridor_id, data);
    renderCorridors();
  } else if (kind === "alarm") {
    view.alarms.set(data.alarm_id, data);
    renderAlarms();
    renderCorridors();
  }
}

// ---- vehicles -----------------------------------------------------------------------------

function setFleet(fleet) {
  view.fleet = fleet.vehicles;
  map.fleet = fleet.vehicles
    .map((spot) => {
      const from = map.placeOf(spot.from_node);
      const to = map.placeOf(spot.to_node);
      if (!from || !to) return null;
      return { x: from.x + (to.x - from.x) * spot.along, y: from.y + (to.y - from.y) * spot.along };
    })
    .filter((spot) => spot !== null);
  map.invalidate();
  renderFleet();
}

// A vehicle chosen here is requested from where it is: only the destination is left to pick.
function useVehicle(vehicle) {
  const form = $("#request-form");
  form.vehicle.value = vehicle;
  form.origin.value = "";
  view.pick = "destination";
  $("#pick").textContent = "Pick destination";
}

function renderFleet() {
  const acts = view.me?.role !== "viewer";
  fill($("#vehicles"),
    ...view.fleet.map((spot) =>
      element("li", { "data-vehicle": spot.vehicle },
        element("strong", {}, spot.vehicle),
        ` on ${spot.link} · ${spot.age_s.toFixed(0)} s ago`,
        spot.corridor_id ? element("span", { class: "meta" }, ` · ${spot.corridor_id}`) : null,
        acts && !spot.corridor_id
          ? element("button", { type: "button", class: "use", onclick: () => useVehicle(spot.vehicle) }, "Use")
          : null,
      ),
    ),
  );  // prettier-ignore
  if (!view.fleet.length) $("#vehicles").append(element("li", {}, "No vehicle has reported lately."));
}

// ---- corridors ----------------------------------------------------------------------------

function pick(id) {
  const form = $("#request-form");
  form[view.pick].value = id;
  view.pick = view.pick === "origin" ? "destination" : "origin";
  $("#pick").textContent = view.pick === "origin" ? "Pick origin" : "Pick destination";
}

async function requestCorridor(event) {
  event.preventDefault();
  const form = event.target;
  const body = {
    vehicle: form.vehicle.value.trim(),
    origin: form.origin.value.trim() || undefined, // none: where the vehicle last reported
    destination: form.destination.value.trim(),
    priority: Number(form.priority.value),
    incident: form.incident.value,
  };
  const result = $("#request-result");
  try {
    const status = await call("POST", "/v1/corridors", body);
    view.corridors.set(status.corridor_id, status);
    result.className = "ok";
    result.textContent = `${status.corridor_id}: ${status.state}`;
    location.hash = `#/corridor/${encodeURIComponent(status.corridor_id)}`;
    renderCorridors();
  } catch (error) {
    if (guard(error)) return;
    result.className = "error";
    result.textContent = error instanceof ApiError ? `${error.code}: ${error.message}` : String(error);
  }
}

async function cancelCorridor(id) {
  try {
    const status = await call("POST", `/v1/corridors/${encodeURIComponent(id)}/cancel`, {
      reason: "cancelled from the console",
    });
    view.corridors.set(id, status);
    renderCorridors();
  } catch (error) {
    if (!guard(error)) alert(`${error.code ?? "error"}: ${error.message}`);
  }
}

function refusedAt(intersection) {
  for (const alarm of view.alarms.values()) {
    if (alarm.subject === intersection && alarm.cleared_at === null && alarm.acked_at === null) {
      if (alarm.kind === "plan_refused") return { text: "refused", why: alarm.message, cls: "refused" };
      if (alarm.kind === "plan_unconfirmed") return { text: "no ack", why: alarm.message, cls: "refused" };
    }
  }
  return null;
}

function confirmation(row) {
  if (row.confirmed) return { text: "acked", why: "the controller acknowledged its plan", cls: "acked" };
  return refusedAt(row.intersection) ?? { text: "not confirmed", why: "no ack yet", cls: "pending" };
}

function renderCorridors() {
  const list = $("#corridors");
  const all = [...view.corridors.values()].sort((a, b) => b.updated_at - a.updated_at);
  const live = all.filter((c) => !TERMINAL.has(c.state));
  const ended = all.filter((c) => TERMINAL.has(c.state)).slice(0, 8);
  const acts = view.me?.role !== "viewer";
  fill(list,
    ...[...live, ...ended].map((c) => {
      const done = TERMINAL.has(c.state);
      const acked = c.intersections.filter((r) => r.confirmed).length;
      return element(
        "li",
        { class: done ? "ended" : "", "data-corridor": c.corridor_id },
        element("a", { href: `#/corridor/${encodeURIComponent(c.corridor_id)}` }, c.corridor_id),
        " ",
        element("span", { class: "state" }, c.state),
        ` ${c.vehicle} · ${acked}/${c.intersections.length} acked`,
        c.reason ? ` · ${c.reason}` : null,
        !done && acts ? element("button", { type: "button", class: "cancel", onclick: () => cancelCorridor(c.corridor_id) }, "Cancel") : null,
      );
    }),
  );
  if (!list.children.length) list.append(element("li", {}, "No corridors yet."));
  // placed at once: between this and the next animation step it read as no vehicle at all
  map.routes = live.map((c) => ({ ids: c.route, selected: c.corridor_id === view.selected, status: c, vehicle: vehicleOf(c) }));
  if (view.selected) renderDetail();
  map.invalidate();
  animate();
}

// The vehicle between the last stop line it passed and the next one, at the predicted pace.
function vehicleOf(status) {
  const rows = status.intersections;
  if (!rows.length) return null;
  const now = controllerNow();
  let last = -1;
  rows.forEach((row, i) => {
    if (row.actual_arrival !== null) last = i;
  });
  const place = (i) => map.placeOf(rows[i].intersection);
  if (last === rows.length - 1) return place(last);
  if (last < 0) return place(0);
  const next = place(last + 1);
  if (now === null) return next;
  const from = place(last);
  if (!from || !next) return next ?? from;
  const start = rows[last].actual_arrival;
  const end = Math.max(rows[last + 1].eta, start + 0.1);
  const f = Math.min(0.98, Math.max(0, (now - start) / (end - start)));
  return { x: from.x + (next.x - from.x) * f, y: from.y + (next.y - from.y) * f };
}

function animate() {
  if (view.animating) return;
  view.animating = true;
  const step = () => {
    const moving = map.routes.length > 0;
    for (const route of map.routes) route.vehicle = vehicleOf(route.status);
    if (moving) map.invalidate();
    if (moving) setTimeout(() => requestAnimationFrame(step), 100);
    else view.animating = false;
  };
  step();
}

function renderDetail() {
  const box = $("#detail");
  const id = view.selected;
  const status = view.corridors.get(id) ?? view.archived.get(id);
  box.hidden = false;
  if (!status) {
    fill(box,
      element("div", { class: "notice", "data-unknown": id },
        element("strong", {}, `No corridor “${id}”.`),
        " Neither the live service nor its database has a corridor with that id: check the link, or look it up in the history."),
    );  // prettier-ignore
    return;
  }
  const done = TERMINAL.has(status.state);
  const rows = status.intersections.map((row) => {
    const c = confirmation(row);
    return element("tr", { "data-intersection": row.intersection },
      element("td", {}, row.intersection),
      element("td", {}, hms(row.eta)),
      element("td", {}, row.window_open === null ? "–" : `${hms(row.window_open)}–${hms(row.window_close)}`),
      element("td", {}, row.actual_arrival === null ? "" : hms(row.actual_arrival)),
      element("td", { class: c.cls, title: c.why }, c.text),
    );  // prettier-ignore
  });
  fill(box,
    element("h2", {}, `Corridor ${status.corridor_id}`),
    element("p", {}, element("span", { class: "state", id: "detail-state" }, status.state),
      ` ${status.vehicle}, priority ${status.priority}`, status.reason ? ` — ${status.reason}` : null),
    done ? null : element("p", { id: "detail-advice" }, advice(status)),
    element("table", {},
      element("tr", {}, ...["stop line", "ETA", "window", "passed", "plan"].map((h) => element("th", {}, h))),
      ...rows),
    !done && view.me?.role !== "viewer"
      ? element("button", { type: "button", id: "detail-cancel", onclick: () => cancelCorridor(id) }, "Cancel corridor")
      : null,
    element("h2", {}, "Time-space"),
    timeSpace(status),
    summary(status),
    element("h2", {}, "Impact"),
    impact(status),
  );  // prettier-ignore
}

// The speed the crew is advised: slower than its own where the window ahead opens (or its
// queue flushes) after the vehicle would get there.
function advice(status) {
  const mps = status.advised_speed_mps;
  return mps === null || mps === undefined
    ? "Speed advised to the crew: its own"
    : `Speed advised to the crew: ${Math.round(mps * 3.6)} km/h, to reach the next window as its queue has gone`;
}

// Distance along the route (m, from the map's coordinates) against controller time: each stop
// line's green window as a bar, the predicted arrivals (hollow) and what happened (filled).
function timeSpace(status) {
  const canvas = element("canvas", { id: "time-space", width: 340, height: 200 });
  const rows = status.intersections.filter((row) => map.placeOf(row.intersection));
  if (!rows.length) return canvas;
  let distance = 0;
  let previous = null;
  const at = rows.map((row) => {
    const place = map.placeOf(row.intersection);
    if (previous) distance += Math.hypot(place.x - previous.x, place.y - previous.y);
    previous = place;
    return distance;
  });
  const times = rows.flatMap((r) => [r.eta, r.window_open, r.window_close, r.actual_arrival]).filter((t) => t !== null);
  const now = controllerNow();
  if (now !== null && !TERMINAL.has(status.state)) times.push(now);
  const [t0, t1] = [Math.min(...times) - 5, Math.max(...times) + 5];
  const span = Math.max(at[at.length - 1], 1);
  const g = canvas.getContext("2d");
  const x = (t) => 30 + ((t - t0) / (t1 - t0)) * 300;
  const y = (d) => 185 - (d / span) * 170;
  g.fillStyle = "#8a99aa";
  g.font = "10px system-ui";
  g.fillText("distance", 2, 10);
  g.fillText(`${Math.round(t1 - t0)} s`, 300, 198);
  rows.forEach((row, i) => {
    if (row.window_open !== null) {
      g.fillStyle = "#3fb950";
      g.fillRect(x(row.window_open), y(at[i]) - 3, Math.max(2, x(row.window_close) - x(row.window_open)), 6);
    }
    g.fillStyle = "#8a99aa";
    g.fillText(row.intersection, 0, y(at[i]) + 3);
  });
  const line = (key, filled) => {
    const points = rows.map((row, i) => [row[key], at[i]]).filter(([t]) => t !== null);
    g.strokeStyle = filled ? "#ffd33d" : "#58a6ff";
    g.fillStyle = g.strokeStyle;
    g.beginPath();
    points.forEach(([t, d], n) => (n ? g.lineTo(x(t), y(d)) : g.moveTo(x(t), y(d))));
    g.stroke();
    for (const [t, d] of points) {
      g.beginPath();
      g.arc(x(t), y(d), 3, 0, Math.PI * 2);
      if (filled) g.fill();
      else g.stroke();
    }
  };
  line("eta", false);
  line("actual_arrival", true);
  if (now !== null && !TERMINAL.has(status.state)) {
    g.strokeStyle = "#dbe4ee";
    g.beginPath();
    g.moveTo(x(now), 5);
    g.lineTo(x(now), 190);
    g.stroke();
  }
  return canvas;
}

// What the corridor did, from its own record: stop lines passed inside their window, and the
// arrivals against the prediction.
function summary(status) {
  const passed = status.intersections.filter((r) => r.actual_arrival !== null);
  if (!passed.length) return element("p", { class: "meta" }, "No stop line passed yet.");
  const inside = passed.filter((r) => r.window_open !== null && r.actual_arrival >= r.window_open && r.actual_arrival <= r.window_close);
  const late = passed.map((r) => r.actual_arrival - r.eta);
  const mean = late.reduce((a, b) => a + b, 0) / late.length;
  const first = passed[0].actual_arrival;
  const last = passed[passed.length - 1].actual_arrival;
  return element("p", { id: "record" },
    `${passed.length}/${status.intersections.length} stop lines passed, ${inside.length} inside their green window; `,
    `arrivals ${mean >= 0 ? "+" : ""}${mean.toFixed(1)} s against the prediction on average; `,
    `${(last - first).toFixed(0)} s from the first to the last passed.`);
}

// The cloud's estimate of what the corridor saved its vehicle and cost everyone else
// (``CorridorImpact``): the time saved once the vehicle is there, the cross streets' cost and
// recovery as they happen and after the corridor ended.
function impact(status) {
  const i = status.impact;
  if (!i) return element("p", { id: "impact", class: "meta" }, "Not measured by this service (it ran before the last start).");
  const rows = [];
  const row = (name, value, why) => rows.push(element("tr", { title: why }, element("th", {}, name), element("td", {}, value)));
  if (i.time_saved_s !== null) {
    row("time saved", `≈ ${i.time_saved_s.toFixed(0)} s`,
      `its trip took ${i.trip_s.toFixed(0)} s; through the normal plans, with the queues seen, about ${i.normal_trip_s.toFixed(0)} s`);
  } else {
    row("time saved", TERMINAL.has(status.state) ? "– (it did not complete)" : "once it arrives", "");
  }
  row("cost to cross traffic", `≈ ${Math.round(i.cross_delay_veh_s).toLocaleString()} veh-s at ${i.intersections} intersections`,
    "vehicle-seconds queued on their other approaches above the level before the corridor");
  let recovery;
  if (i.recovery_s !== null) recovery = `back to their level ${i.recovery_s.toFixed(0)} s after the vehicle passed`;
  else if (i.recovering > 0) recovery = `${i.recovering} intersection${i.recovering === 1 ? "" : "s"} recovering`;
  else recovery = TERMINAL.has(status.state) ? "–" : "after the vehicle passes";
  if (i.unrecovered > 0) recovery += `; ${i.unrecovered} not back within 15 min`;
  row("recovery", recovery, "the other approaches' queues averaged over a cycle, against their level before");
  return element("table", { id: "impact" }, ...rows);
}

function route() {
  const match = location.hash.match(/^#\/corridor\/(.+)$/);
  view.selected = match ? decodeURIComponent(match[1]) : null;
  if (!view.selected) {
    $("#detail").hidden = true;
    renderCorridors();
    return;
  }
  if (view.corridors.has(view.selected) || view.archived.has(view.selected)) {
    renderCorridors();
    return;
  }
  call("GET", `/v1/corridors/${encodeURIComponent(view.selected)}`)
    .then((status) => view.corridors.set(status.corridor_id, status))
    .catch((error) => guard(error))
    .finally(renderCorridors);
}

// ---- history (from the service's database) --------------------------------------------------

async function showHistory(after) {
  const form = $("#history-form");
  const query = new URLSearchParams({ limit: "20" });
  if (form.state.value) query.set("state", form.state.value);
  if (form.vehicle.value.trim()) query.set("vehicle", form.vehicle.value.trim());
  if (after) query.set("after", after);
  const list = $("#history");
  try {
    const page = await call("GET", `/v1/history/corridors?${query}`);
    for (const c of page.corridors) view.archived.set(c.corridor_id, c);
    const rows = page.corridors.map((c) =>
      element("li", { "data-history": c.corridor_id },
        element("a", { href: `#/corridor/${encodeURIComponent(c.corridor_id)}` }, c.corridor_id),
        " ", element("span", { class: "state" }, c.state),
        ` ${c.vehicle} · ${new Date(c.times.updated_at).toLocaleString([], { hour12: false })}`),
    );  // prettier-ignore
    if (after) list.append(...rows);
    else fill(list, ...rows);
    if (!list.children.length) list.append(element("li", {}, "Nothing stored matches."));
    const more = $("#history-more");
    more.hidden = page.next === null;
    more.onclick = () => showHistory(page.next);
  } catch (error) {
    if (!guard(error)) fill(list, element("li", { class: "error" }, `${error.code ?? "error"}: ${error.message}`));
  }
}

// ---- alarms -------------------------------------------------------------------------------

async function acknowledge(id) {
  try {
    const alarm = await call("POST", `/v1/alarms/${encodeURIComponent(id)}/ack`);
    view.alarms.set(alarm.alarm_id, alarm);
    renderAlarms();
  } catch (error) {
    if (!guard(error)) alert(`${error.code ?? "error"}: ${error.message}`);
  }
}

function renderAlarms() {
  const all = [...view.alarms.values()].sort((a, b) => b.raised_at - a.raised_at);
  const active = all.filter((a) => a.acked_at === null);
  const settled = all.filter((a) => a.acked_at !== null).slice(0, 5);
  const acts = view.me?.role !== "viewer";
  $("#alarm-count").textContent = active.length ? `(${active.length} to acknowledge)` : "";
  fill($("#alarms"),
    ...[...active, ...settled].map((a) =>
      element("li", { class: `alarm ${a.severity}`, "data-alarm": a.alarm_id },
        element("div", {}, a.message),
        element("div", { class: "meta" },
          `${a.kind} · ${new Date(a.raised_at * 1000).toLocaleTimeString([], { hour12: false })}`,
          a.cleared_at !== null ? " · cleared" : "",
          a.acked_at !== null ? ` · acknowledged by ${a.acked_by} at ${new Date(a.acked_at * 1000).toLocaleTimeString([], { hour12: false })}` : ""),
        a.acked_at === null && acts
          ? element("button", { type: "button", class: "ack", onclick: () => acknowledge(a.alarm_id) }, "Acknowledge")
          : null,
      ),
    ),
  );  // prettier-ignore
  if (!all.length) $("#alarms").append(element("li", {}, "No alarms."));
}

// ---- wiring -------------------------------------------------------------------------------

$("#login-form").addEventListener("submit", (event) => {
  event.preventDefault();
  saveToken($("#token").value.trim());
  $("#token").value = "";
  start();
});
$("#sign-out").addEventListener("click", () => showLogin("Signed out."));
$("#request-form").addEventListener("submit", requestCorridor);
$("#history-form").addEventListener("submit", (event) => {
  event.preventDefault();
  showHistory(null);
});
$("#pick").addEventListener("click", () => {
  view.pick = "origin";
  $("#pick").textContent = "Pick origin";
});
window.addEventListener("hashchange", route);
setInterval(() => {
  const now = controllerNow();
  if (now !== null) $("#clock").textContent = `${wallOf(now).toLocaleTimeString([], { hour12: false })} · controller ${now.toFixed(1)} s`;
}, 500);

// for tests and benchmarks: what was drawn, how fast, how late
window.citybrain = {
  stats,
  get map() {
    return map;
  },
  get stream() {
    return view.live;
  },
};
start();
