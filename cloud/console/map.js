// The network on a canvas, from its own coordinates (no tiles): roads drawn once into an
// offscreen layer, intersections as squares coloured by state and sized by queue, batched
// by colour (a fill per colour, not per intersection: 10,000 stay cheap), corridors' routes
// and vehicles on top. Wheel zooms, drag pans.

const COLOURS = {};
for (const state of ["normal", "priority", "fail-safe", "offline", "stale", "unknown"]) {
  COLOURS[state] = getComputedStyle(document.documentElement).getPropertyValue(`--${state}`).trim();
}
const ROUTE = getComputedStyle(document.documentElement).getPropertyValue("--route").trim();

export class MapView {
  constructor(canvas) {
    this.canvas = canvas;
    this.places = [];
    this.roads = [];
    this.index = new Map(); // id -> place index
    this.state = []; // per place: state name
    this.queue = []; // per place: vehicles
    this.routes = []; // [{ids: [...], vehicle: {x, y} | null, selected}]
    this.fleet = []; // [{x, y}]: vehicles heard from, where their last position puts them
    this.scale = 1;
    this.panX = 0;
    this.panY = 0;
    this.roadLayer = null;
    this.dirty = true;
    this.lastFrameMs = 0;
    this.frames = 0;
    this.onFrame = null;
    new ResizeObserver(() => this.resize()).observe(canvas);
    canvas.addEventListener("wheel", (e) => this.zoom(e), { passive: false });
    let drag = null;
    canvas.addEventListener("pointerdown", (e) => {
      drag = { x: e.clientX, y: e.clientY, moved: false };
    });
    canvas.addEventListener("pointermove", (e) => {
      if (!drag) return;
      const dx = e.clientX - drag.x;
      const dy = e.clientY - drag.y;
      if (Math.abs(dx) + Math.abs(dy) > 3) drag.moved = true;
      if (drag.moved) {
        this.panX += dx;
        this.panY += dy;
        drag.x = e.clientX;
        drag.y = e.clientY;
        this.roadLayer = null;
        this.invalidate();
      }
    });
    canvas.addEventListener("pointerup", (e) => {
      const clicked = drag && !drag.moved;
      drag = null;
      if (clicked && this.onPick) {
        const hit = this.nearest(e.offsetX, e.offsetY);
        if (hit !== null) this.onPick(this.places[hit].id);
      }
    });
  }

  setNetwork(map) {
    // places are [id, x_m, y_m, controlled]
    this.places = map.places.map(([id, x, y, controlled]) => ({ id, x, y, controlled }));
    this.roads = map.roads;
    this.index = new Map(this.places.map((p, i) => [p.id, i]));
    this.state = this.places.map(() => "unknown");
    this.queue = this.places.map(() => 0);
    let [minX, minY, maxX, maxY] = [Infinity, Infinity, -Infinity, -Infinity];
    for (const p of this.places) {
      minX = Math.min(minX, p.x);
      maxX = Math.max(maxX, p.x);
      minY = Math.min(minY, p.y);
      maxY = Math.max(maxY, p.y);
    }
    this.bounds = { minX, minY, maxX, maxY };
    this.scale = 1;
    this.panX = 0;
    this.panY = 0;
    this.resize();
  }

  setStates(states) {
    for (let i = 0; i < states.ids.length; i++) {
      const at = this.index.get(states.ids[i]);
      if (at === undefined) continue;
      this.state[at] = states.states[i];
      this.queue[at] = states.queue_veh[i];
    }
    this.invalidate();
  }

  resize() {
    const ratio = window.devicePixelRatio || 1;
    const { clientWidth: w, clientHeight: h } = this.canvas;
    if (!w || !h) return;
    this.canvas.width = Math.round(w * ratio);
    this.canvas.height = Math.round(h * ratio);
    this.ratio = ratio;
    this.roadLayer = null;
    this.invalidate();
  }

  // metres -> CSS pixels: fit the network with a margin, north up
  fit() {
    const { minX, minY, maxX, maxY } = this.bounds ?? { minX: 0, minY: 0, maxX: 1, maxY: 1 };
    const w = this.canvas.clientWidth;
    const h = this.canvas.clientHeight;
    const span = Math.max(maxX - minX, maxY - minY, 1);
    const base = (Math.min(w, h) - 40) / span;
    const k = base * this.scale;
    const ox = w / 2 - ((minX + maxX) / 2) * k + this.panX;
    const oy = h / 2 + ((minY + maxY) / 2) * k + this.panY;
    return { k, ox, oy };
  }

  project(p, t) {
    return [t.ox + p.x * t.k, t.oy - p.y * t.k];
  }

  zoom(event) {
    event.preventDefault();
    const factor = event.deltaY < 0 ? 1.25 : 0.8;
    const before = this.fit();
    const mx = event.offsetX;
    const my = event.offsetY;
    this.scale = Math.min(200, Math.max(0.5, this.scale * factor));
    const after = this.fit();
    // keep the point under the cursor where it is
    const wx = (mx - before.ox) / before.k;
    const wy = (before.oy - my) / before.k;
    this.panX += mx - (after.ox + wx * after.k);
    this.panY += my - (after.oy - wy * after.k);
    this.roadLayer = null;
    this.invalidate();
  }

  nearest(x, y) {
    const t = this.fit();
    let best = null;
    let bestD = 14 * 14;
    for (let i = 0; i < this.places.length; i++) {
      const p = this.places[i];
      if (!p.controlled) continue;
      const [px, py] = this.project(p, t);
      const d = (px - x) ** 2 + (py - y) ** 2;
      if (d < bestD) {
        bestD = d;
        best = i;
      }
    }
    return best;
  }

  invalidate() {
    if (this.dirty && this.pending) return;
    this.dirty = true;
    this.pending = requestAnimationFrame(() => {
      this.pending = 0;
      this.draw();
    });
  }

  drawRoads(t) {
    const layer = new OffscreenCanvas(this.canvas.width, this.canvas.height);
    const g = layer.getContext("2d");
    g.scale(this.ratio, this.ratio);
    g.strokeStyle = "#2c3846";
    g.lineWidth = 1;
    g.beginPath();
    for (const [a, b] of this.roads) {
      const [ax, ay] = this.project(this.places[a], t);
      const [bx, by] = this.project(this.places[b], t);
      g.moveTo(ax, ay);
      g.lineTo(bx, by);
    }
    g.stroke();
    this.roadLayer = layer;
  }

  draw() {
    const started = performance.now();
    this.dirty = false;
    const g = this.canvas.getContext("2d");
    const t = this.fit();
    if (!this.roadLayer) this.drawRoads(t);
    g.setTransform(1, 0, 0, 1, 0, 0);
    g.clearRect(0, 0, this.canvas.width, this.canvas.height);
    g.drawImage(this.roadLayer, 0, 0);
    g.setTransform(this.ratio, 0, 0, this.ratio, 0, 0);
    // a corridor's route under the intersections
    for (const route of this.routes) {
      g.strokeStyle = ROUTE;
      g.globalAlpha = route.selected ? 1 : 0.6;
      g.lineWidth = route.selected ? 4 : 3;
      g.beginPath();
      route.ids.forEach((id, n) => {
        const at = this.index.get(id);
        if (at === undefined) return;
        const [x, y] = this.project(this.places[at], t);
        if (n === 0) g.moveTo(x, y);
        else g.lineTo(x, y);
      });
      g.stroke();
    }
    g.globalAlpha = 1;
    // intersections, one path per colour
    const base = Math.max(2, Math.min(10, t.k * 25));
    const paths = {};
    for (const state of Object.keys(COLOURS)) paths[state] = new Path2D();
    let drawn = 0;
    for (let i = 0; i < this.places.length; i++) {
      const p = this.places[i];
      if (!p.controlled) continue;
      const [x, y] = this.project(p, t);
      const size = base + Math.min(this.queue[i], 40) * 0.25 * Math.min(1, base / 3);
      (paths[this.state[i]] ?? paths.unknown).rect(x - size / 2, y - size / 2, size, size);
      drawn++;
    }
    for (const [state, path] of Object.entries(paths)) {
      g.fillStyle = COLOURS[state];
      g.fill(path);
    }
    // vehicles: the fleet where it last reported, then those with a corridor on their way
    g.fillStyle = "#dbe4ee";
    for (const spot of this.fleet) {
      const [x, y] = this.project(spot, t);
      g.beginPath();
      g.arc(x, y, 4, 0, Math.PI * 2);
      g.fill();
    }
    for (const route of this.routes) {
      if (!route.vehicle) continue;
      const [x, y] = this.project(route.vehicle, t);
      g.fillStyle = "#ffffff";
      g.strokeStyle = ROUTE;
      g.lineWidth = 2;
      g.beginPath();
      g.arc(x, y, 6, 0, Math.PI * 2);
      g.fill();
      g.stroke();
    }
    this.drawn = drawn;
    this.frames++;
    this.lastFrameMs = performance.now() - started;
    this.onFrame?.(this.lastFrameMs);
  }

  placeOf(id) {
    const at = this.index.get(id);
    return at === undefined ? null : this.places[at];
  }

  screenOf(id) {
    const place = this.placeOf(id);
    if (!place) return null;
    const rect = this.canvas.getBoundingClientRect();
    const [x, y] = this.project(place, this.fit());
    return { x: rect.left + x, y: rect.top + y };
  }
}
