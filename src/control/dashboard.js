"use strict";
const $ = (id) => document.getElementById(id);
let key = sessionStorage.getItem("queue-server-key") || "";
let keyWaiters = [];
let last = null;

function headers(extra) {
  const h = Object.assign({}, extra || {});
  if (key) h["Authorization"] = "Bearer " + key;
  return h;
}

function askKey(message) {
  $("keybox").style.display = "block";
  $("key-msg").textContent = message || "";
  $("key-input").focus();
  return new Promise((resolve) => keyWaiters.push(resolve));
}

$("key-form").addEventListener("submit", (e) => {
  e.preventDefault();
  key = $("key-input").value.trim();
  sessionStorage.setItem("queue-server-key", key);
  $("keybox").style.display = "none";
  const w = keyWaiters; keyWaiters = [];
  w.forEach((r) => r());
});

function setStatus(text, cls) {
  const s = $("status");
  s.textContent = text;
  s.className = "badge " + (cls || "");
}

function fmtNum(n, digits) {
  if (n === null || n === undefined) return "-";
  if (digits !== undefined) return Number(n).toFixed(digits);
  return String(n);
}

function fmtDuration(secs) {
  if (secs === null || secs === undefined) return "-";
  secs = Math.round(secs);
  const d = Math.floor(secs / 86400), h = Math.floor(secs % 86400 / 3600),
        m = Math.floor(secs % 3600 / 60), s = secs % 60;
  if (d) return d + "d " + h + "h";
  if (h) return h + "h " + m + "m";
  if (m) return m + "m " + s + "s";
  return s + "s";
}

function text(id, value) {
  const el = $(id);
  if (el && el.textContent !== value) el.textContent = value;
}

// One table row per queue, built once (inputs keep their values), then updated.
function queueRow(name) {
  const id = "queue-" + name;
  let row = $(id);
  if (row) return row;
  row = document.createElement("tr");
  row.id = id;
  const cell = (suffix, cls) => {
    const td = document.createElement("td");
    if (suffix) td.id = "q-" + name + "-" + suffix;
    if (cls) td.className = cls;
    row.appendChild(td);
    return td;
  };
  cell("name", "name").textContent = name;
  cell("waiting"); cell("waiting-normal"); cell("waiting-priority"); cell("admitted");
  const rate = cell("");
  rate.innerHTML = '<span></span> <span class="sub"></span>';
  rate.children[0].id = "q-" + name + "-rate";
  rate.children[1].id = "q-" + name + "-target";
  cell("eta");
  cell("capacity");
  cell("paused");
  const act = cell("", "");
  const box = document.createElement("div");
  box.className = "actions";
  const button = (suffix, label, fn, primary) => {
    const b = document.createElement("button");
    b.id = "q-" + name + "-" + suffix; b.textContent = label; b.type = "button";
    if (primary) b.className = "primary";
    b.addEventListener("click", fn);
    box.appendChild(b);
    return b;
  };
  const input = (suffix, placeholder) => {
    const i = document.createElement("input");
    i.id = "q-" + name + "-" + suffix; i.placeholder = placeholder; i.type = "number"; i.min = "0";
    box.appendChild(i);
    return i;
  };
  const path = "/v1/queues/" + encodeURIComponent(name);
  button("pause", "Pause", () => act_(name, "POST", path + "/pause", null));
  button("resume", "Resume", () => act_(name, "POST", path + "/resume", null));
  const rateIn = input("rate-input", "per s");
  button("rate-set", "Set rate", () =>
    act_(name, "PUT", path + "/rate", { per_second: Number(rateIn.value) }));
  const admitIn = input("admit-input", "count");
  button("admit-go", "Admit", () =>
    act_(name, "POST", path + "/admit", { count: Number(admitIn.value) }), true);
  act.appendChild(box);
  $("queues").appendChild(row);
  return row;
}

async function act_(queue, method, path, body) {
  const msg = $("action-msg");
  try {
    const init = { method, headers: headers(body ? { "Content-Type": "application/json" } : {}) };
    if (body) init.body = JSON.stringify(body);
    let r = await fetch(path, init);
    if (r.status === 401) {
      await askKey("The key was refused.");
      init.headers = headers(body ? { "Content-Type": "application/json" } : {});
      r = await fetch(path, init);
    }
    const answer = await r.json().catch(() => ({}));
    if (!r.ok) throw new Error(answer.error || ("HTTP " + r.status));
    let what = method + " " + path + ": ok";
    if (answer.admitted) what = "admitted " + answer.admitted.length + " from " + queue;
    msg.textContent = what; msg.className = "";
  } catch (e) {
    msg.textContent = method + " " + path + ": " + e.message; msg.className = "error";
  }
}

function render(s) {
  last = s;
  text("version", s.version);
  text("uptime", fmtDuration(s.uptime_secs));
  const dur = $("durability");
  dur.textContent = s.durability;
  dur.className = "badge " + (s.durability === "degraded" ? "bad" : s.durability === "ok" ? "ok" : "");
  const dr = $("draining");
  dr.textContent = s.draining ? "draining" : "serving";
  dr.className = "badge " + (s.draining ? "warn" : "ok");
  text("updated", new Date(s.at_unix_ms).toLocaleTimeString());
  text("connections", String(s.connections));
  text("inbox", String(s.core_inbox_depth));

  let waiting = 0, rate = 0, admitted = 0;
  const names = Object.keys(s.queues);
  const placeholder = $("queues").querySelector("td[colspan]");
  if (placeholder && names.length) placeholder.parentNode.remove();
  for (const name of names) {
    const q = s.queues[name];
    queueRow(name);
    waiting += q.waiting; rate += q.admit_rate_per_s; admitted += q.admitted_total;
    const p = "q-" + name + "-";
    text(p + "waiting", String(q.waiting));
    text(p + "waiting-normal", String(q.waiting_normal));
    text(p + "waiting-priority", String(q.waiting_priority));
    text(p + "admitted", String(q.admitted_total));
    text(p + "rate", fmtNum(q.admit_rate_per_s, 2));
    text(p + "target", "/ " + fmtNum(q.target_rate_per_s, 2));
    text(p + "eta", q.eta_last_secs === null ? "-" : fmtDuration(q.eta_last_secs));
    text(p + "capacity", q.capacity === null ? "not reported" : q.online + " / " + q.capacity);
    const paused = $(p + "paused");
    const st = q.paused ? "paused" : "running";
    if (paused.textContent !== st) { paused.textContent = st; paused.className = "state-" + st; }
  }
  for (const row of Array.from($("queues").children)) {
    if (row.id && !(row.id.slice(6) in s.queues)) row.remove();
  }
  text("total-waiting", String(waiting));
  text("total-rate", fmtNum(rate, 2));
  text("total-admitted", String(admitted));

  const loops = $("loops");
  s.loops.forEach((l, i) => {
    let row = $("loop-" + i);
    if (!row) {
      row = document.createElement("tr"); row.id = "loop-" + i;
      row.innerHTML = "<td>io-" + i + "</td>" +
        ["connections", "logins-per-s", "frames-in-per-s", "frames-out-per-s", "logins", "errors"]
          .map((c) => '<td id="loop-' + i + "-" + c + '"></td>').join("");
      loops.appendChild(row);
    }
    text("loop-" + i + "-connections", String(l.connections));
    text("loop-" + i + "-logins-per-s", fmtNum(l.logins_per_s, 1));
    text("loop-" + i + "-frames-in-per-s", fmtNum(l.frames_in_per_s, 1));
    text("loop-" + i + "-frames-out-per-s", fmtNum(l.frames_out_per_s, 1));
    text("loop-" + i + "-logins", String(l.logins));
    text("loop-" + i + "-errors", String(l.errors));
  });
  const qps = s.loops.reduce((a, l) => a + (l.frames_in_per_s || 0), 0);
  text("total-qps", fmtNum(qps, 1));
  if (s.cluster) renderCluster(s.cluster, s.at_unix_ms);
  $("cluster").style.display = s.cluster ? "block" : "none";
  charts(s);
}

function fmtBytes(n) {
  if (n >= 1 << 30) return (n / (1 << 30)).toFixed(1) + " GiB";
  if (n >= 1 << 20) return (n / (1 << 20)).toFixed(1) + " MiB";
  if (n >= 1 << 10) return (n / (1 << 10)).toFixed(1) + " KiB";
  return n + " B";
}

// The rows of one cluster table, one per key, in the order of `items` ([key, cells]
// with cells {column: text or [text, class]}). A cell's id is
// "cluster-<t>-<column>-<key>": the key last, so no two keys share an id. Text goes
// in through textContent only; a row whose key is gone is removed; an empty table
// shows `none`.
function syncRows(tbodyId, t, columns, items, none) {
  const body = $(tbodyId);
  const keep = new Set(items.map((it) => it[0]));
  for (const row of Array.from(body.children)) {
    // The `none` row has no key: it stays while the table stays empty.
    if (!keep.has(row.dataset.key) && (items.length || row.dataset.key !== undefined)) row.remove();
  }
  if (!items.length) {
    if (body.children.length) return;
    const td = document.createElement("td");
    td.colSpan = columns.length; td.className = "sub"; td.textContent = none;
    const row = document.createElement("tr"); row.appendChild(td);
    body.appendChild(row);
    return;
  }
  items.forEach(([key, cells], i) => {
    let row = Array.from(body.children).find((r) => r.dataset.key === key);
    if (!row) {
      row = document.createElement("tr");
      row.dataset.key = key;
      for (const c of columns) {
        const td = document.createElement("td");
        td.id = "cluster-" + t + "-" + c + "-" + key;
        row.appendChild(td);
      }
    }
    if (body.children[i] !== row) body.insertBefore(row, body.children[i] || null);
    columns.forEach((c, j) => {
      const v = cells[c], td = row.children[j];
      const [value, cls] = Array.isArray(v) ? v : [v, ""];
      if (td.textContent !== value) td.textContent = value;
      const className = ((j === 0 ? "name " : "") + cls).trim();
      if (td.className !== className) td.className = className;
    });
  });
}

const yesNo = (b, yes) => b ? ["yes", yes || "yes"] : ["no", "no"];

function renderCluster(c, now) {
  text("cluster-node", c.node_id);
  const title = "queue-server: " + c.node_id;
  if (document.title !== title) document.title = title;
  const fenced = $("cluster-fenced");
  fenced.textContent = c.fenced ? "fenced" : "live";
  fenced.className = "badge " + (c.fenced ? "bad" : "ok");
  $("cluster-in-use").style.display = c.node_id_in_use ? "inline-block" : "none";
  $("cluster-mismatch").style.display = c.config_mismatch ? "block" : "none";
  text("cluster-mismatch-text", c.config_mismatch || "");
  text("cluster-etcd-errors", String(c.etcd_errors_total));
  text("cluster-forwarded", String(c.forwarded_total));

  syncRows("cluster-members", "m", ["node_id", "advertise_player", "advertise_control", "since"],
    c.members.map((m) => [m.node_id, {
      node_id: [m.node_id, m.node_id === c.node_id ? "yes" : ""],
      advertise_player: m.advertise_player,
      advertise_control: m.advertise_control,
      since: new Date(m.started_at_unix_ms).toLocaleString() + " (" +
        fmtDuration(Math.max(0, now - m.started_at_unix_ms) / 1000) + " ago)",
    }]), "no live member listed (etcd not reached yet?)");

  syncRows("cluster-queues", "q", ["name", "owner", "epoch", "owned_here", "may_admit", "hold"],
    Object.keys(c.queues).map((name) => {
      const q = c.queues[name];
      return [name, {
        name: name,
        owner: q.owner === null ? ["-", "bad"] : q.owner,
        epoch: q.epoch === null ? "-" : String(q.epoch),
        owned_here: yesNo(q.owned_here),
        may_admit: yesNo(q.may_admit),
        hold: q.recovery_left_ms === null ? "-"
          : [(q.recovery_left_ms / 1000).toFixed(1) + " s left", "hold"],
      }];
    }), "no queue");

  syncRows("cluster-links", "l",
    ["peer", "side", "connected", "frames", "bytes", "relayed", "reconnects", "resubmitted"],
    c.links.map((l) => [l.peer + ":" + l.side, {
      peer: l.peer,
      side: l.side,
      connected: l.connected ? [String(l.connected), "yes"] : ["0", "bad"],
      frames: l.frames_sent_total + " / " + l.frames_received_total,
      bytes: fmtBytes(l.bytes_sent_total) + " / " + fmtBytes(l.bytes_received_total),
      relayed: String(l.messages_relayed_total),
      reconnects: String(l.reconnects_total),
      resubmitted: String(l.resubmitted_total),
    }]), "no node link has connected yet");
}

// Series for a chart: per-minute samples (plotted at the minute's end) then the
// per-second points of the last two minutes.
function series(s, fromMinute, fromPoint) {
  const pts = [];
  const firstRecent = s.recent.length ? s.recent[0].t : Infinity;
  for (const m of s.history) {
    const t = (m.start_unix_secs + 60) * 1000;
    if (t < firstRecent) pts.push([t, fromMinute(m)]);
  }
  for (const p of s.recent) pts.push([p.t, fromPoint(p)]);
  return pts;
}

function niceMax(v) {
  if (v <= 0) return 1;
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const k of [1, 2, 2.5, 5, 10]) if (k * p >= v) return k * p;
  return 10 * p;
}

function fmtAxis(v) {
  if (v >= 1e6) return (v / 1e6).toFixed(v % 1e6 ? 1 : 0) + "M";
  if (v >= 1e3) return (v / 1e3).toFixed(v % 1e3 ? 1 : 0) + "k";
  return String(Math.round(v * 100) / 100);
}

function drawChart(id, pts, color, now) {
  const svg = $(id);
  const W = 420, H = 150, L = 40, R = 8, T = 8, B = 22;
  const t1 = now, t0 = Math.max(now - 3600 * 1000, pts.length ? Math.min(pts[0][0], now - 60 * 1000) : now - 60 * 1000);
  const max = niceMax(Math.max(0, ...pts.map((p) => p[1])));
  const x = (t) => L + (W - L - R) * (t - t0) / Math.max(1, t1 - t0);
  const y = (v) => T + (H - T - B) * (1 - v / max);
  let out = "";
  for (let i = 0; i <= 4; i++) {
    const v = max * i / 4, yy = y(v).toFixed(1);
    out += '<line x1="' + L + '" x2="' + (W - R) + '" y1="' + yy + '" y2="' + yy + '" stroke="#e9edf3" stroke-width="1"/>';
    out += '<text x="' + (L - 5) + '" y="' + (Number(yy) + 3.5) + '" font-size="10" text-anchor="end" fill="#8a93a6">' + fmtAxis(v) + "</text>";
  }
  const span = (t1 - t0) / 60000;
  const label = span >= 2 ? "-" + Math.round(span) + " min" : "-" + Math.round(span * 60) + " s";
  out += '<text x="' + L + '" y="' + (H - 6) + '" font-size="10" fill="#8a93a6">' + label + "</text>";
  out += '<text x="' + (W - R) + '" y="' + (H - 6) + '" font-size="10" text-anchor="end" fill="#8a93a6">now</text>';
  if (pts.length) {
    const line = pts.map((p) => x(p[0]).toFixed(1) + "," + y(p[1]).toFixed(1)).join(" ");
    const area = x(pts[0][0]).toFixed(1) + "," + y(0) + " " + line + " " + x(pts[pts.length - 1][0]).toFixed(1) + "," + y(0);
    out += '<polygon points="' + area + '" fill="' + color + '" fill-opacity="0.12"/>';
    out += '<polyline points="' + line + '" fill="none" stroke="' + color + '" stroke-width="2" stroke-linejoin="round"/>';
    const lastP = pts[pts.length - 1];
    out += '<circle cx="' + x(lastP[0]).toFixed(1) + '" cy="' + y(lastP[1]).toFixed(1) + '" r="3" fill="' + color + '"/>';
  }
  svg.innerHTML = out;
}

function charts(s) {
  const now = s.at_unix_ms;
  const w = series(s, (m) => m.waiting, (p) => p.waiting);
  const r = series(s, (m) => m.admissions / 60, (p) => p.admitted_per_s);
  const q = series(s, (m) => m.requests_in / 60, (p) => p.requests_per_s);
  drawChart("chart-waiting", w, "#2f6fed", now);
  drawChart("chart-rate", r, "#1f9d55", now);
  drawChart("chart-qps", q, "#8b5cf6", now);
  const lastOf = (a, d) => a.length ? fmtNum(a[a.length - 1][1], d) : "-";
  text("chart-waiting-now", lastOf(w));
  text("chart-rate-now", lastOf(r, 1));
  text("chart-qps-now", lastOf(q, 1));
}

function handleEvent(block) {
  let event = "message", data = "";
  for (const line of block.split("\n")) {
    if (line.startsWith("event:")) event = line.slice(6).trim();
    else if (line.startsWith("data:")) data += line.slice(5).trim();
  }
  if (event === "snapshot" && data) {
    render(JSON.parse(data));
    setStatus("live", "ok");
  } else if (event === "failure") {
    setStatus("core not answering", "bad");
  }
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// EventSource cannot send an Authorization header: read the stream with fetch().
// The server ends each stream after a bounded time; this loop reconnects.
async function stream() {
  for (;;) {
    try {
      const r = await fetch("/v1/events", { headers: headers(), cache: "no-store" });
      if (r.status === 401) {
        setStatus("key needed", "warn");
        await askKey(key ? "The key was refused." : "");
        continue;
      }
      if (!r.ok) throw new Error("HTTP " + r.status);
      const reader = r.body.getReader();
      const dec = new TextDecoder();
      let buf = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += dec.decode(value, { stream: true });
        let i;
        while ((i = buf.indexOf("\n\n")) >= 0) {
          handleEvent(buf.slice(0, i));
          buf = buf.slice(i + 2);
        }
      }
    } catch (e) {
      setStatus("reconnecting", "warn");
      await sleep(1000);
    }
  }
}

stream();
