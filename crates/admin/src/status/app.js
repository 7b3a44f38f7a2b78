// The live status page: polls /status.json (the session cookie authenticates it) every two
// seconds and redraws every table. No framework, no external resource.
"use strict";

const POLL_MS = 2000;

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined) e.textContent = text;
  if (cls) e.className = cls;
  return e;
}

function fill(tableId, rows) {
  const body = document.querySelector("#" + tableId + " tbody");
  body.replaceChildren(...rows.map((cells) => {
    const tr = el("tr");
    for (const c of cells) {
      if (c instanceof HTMLTableCellElement) tr.append(c);
      else tr.append(c instanceof Node ? wrap(c) : el("td", c));
    }
    return tr;
  }));
}

function wrap(node) {
  const td = el("td");
  td.append(node);
  return td;
}

function num(value, cls) {
  const td = el("td", value, "num");
  if (cls) td.classList.add(cls);
  return td;
}

function bytes(n) {
  if (n === null || n === undefined) return "—";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i === 0 ? n.toFixed(0) : n.toFixed(1)) + " " + units[i];
}

function percent(ratio) {
  return ratio === null || ratio === undefined ? "—" : (ratio * 100).toFixed(1) + " %";
}

function seconds(s) {
  if (s === null || s === undefined) return "—";
  if (s < 1) return (s * 1000).toFixed(s < 0.01 ? 2 : 1) + " ms";
  return s.toFixed(2) + " s";
}

function render(d) {
  document.getElementById("node").textContent = d.node + " · " + d.region;
  const readiness = document.getElementById("readiness");
  readiness.textContent = d.ready ? "ready" : "not ready";
  readiness.className = "pill " + (d.ready ? "ok" : "bad");
  document.getElementById("updated").textContent = "updated " + new Date(d.generated_ms).toLocaleTimeString();
  document.getElementById("updated").dataset.generated = String(d.generated_ms);

  fill("regions", d.regions.map((r) => [r.region, num(r.healthy + " / " + r.nodes, r.healthy === r.nodes ? "good" : "bad"), num(percent(r.cache_hit_ratio))]));
  fill("nodes", d.nodes.map((n) => [
    n.id + (n.this ? " (this node)" : ""),
    n.region,
    el("span", n.healthy ? "up" : "DOWN", n.healthy ? "good" : "bad"),
    num(seconds(n.replication_lag_seconds)),
    num((n.heartbeat_age_ms / 1000).toFixed(1) + " s ago"),
    num(bytes(n.cache_bytes) + " / " + bytes(n.cache_max_bytes)),
  ]));
  document.getElementById("cluster-error").textContent = d.cluster_error || "";

  document.getElementById("window").textContent = d.window_seconds ? "(over the last " + d.window_seconds.toFixed(0) + " s)" : "(rates appear after the next update)";
  fill("operations", d.operations.map((o) => [
    o.listener,
    o.operation,
    num(o.rate_per_second === null ? "—" : o.rate_per_second.toFixed(2)),
    num(seconds(o.p99_seconds)),
    num(String(o.requests_total)),
  ]));
  fill("cache-reads", d.cache_reads.map((c) => [c.region, num(String(c.hits)), num(String(c.misses)), num(percent(c.hit_ratio))]));
  fill("errors", d.errors.map((e) => [
    new Date(e.at_ms).toLocaleTimeString(),
    num(String(e.status), e.status >= 500 ? "bad" : undefined),
    e.method + " " + e.path,
    e.operation || "—",
    e.request_id,
  ]));

  document.getElementById("checks").replaceChildren(...d.checks.map((c) => el("div", c.name + ": " + (c.ok ? "ok" : c.reason), c.ok ? "good" : "bad")));
  document.getElementById("lag").textContent = seconds(d.replication_lag_seconds);
  document.getElementById("push-queue").textContent = d.push_queue === null ? "—" : String(d.push_queue);
  document.getElementById("cache-use").textContent = bytes(d.cache.bytes) + " of " + bytes(d.cache.capacity_bytes);
  document.getElementById("disk").textContent = d.disk ? bytes(d.disk.free_bytes) + " free of " + bytes(d.disk.total_bytes) : "—";
}

async function poll() {
  try {
    const resp = await fetch("/status.json", { credentials: "same-origin", cache: "no-store" });
    if (resp.status === 401) { location.reload(); return; }
    render(await resp.json());
  } catch (err) {
    document.getElementById("updated").textContent = "cannot reach the node: " + err;
  }
  setTimeout(poll, POLL_MS);
}

poll();
