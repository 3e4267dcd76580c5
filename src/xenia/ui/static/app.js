/* Xenia web UI: one script for every page (body[data-page] says which).
 *
 * Every call goes to the same /v1/... API as the CLI's, with the session cookie the
 * login set (HttpOnly: this script never sees it) and, for a change, the session's CSRF
 * token in X-CSRF-Token. The server checks the token's scopes; this script only hides
 * what cannot work and shows the server's refusal as it is. Same origin only (the
 * page's Content-Security-Policy forbids any other).
 */
"use strict";

const xenia = (() => {
  let session = null;

  function show(text, ok = false) {
    const box = document.getElementById("msg");
    if (!box) return;
    box.textContent = text;
    box.className = ok ? "ok" : "";
    box.hidden = !text;
  }

  async function api(method, path, body) {
    const headers = {};
    if (body !== undefined) headers["Content-Type"] = "application/json";
    if (method !== "GET" && session) headers["X-CSRF-Token"] = session.csrf;
    const r = await fetch(path, {
      method, headers, credentials: "same-origin",
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    if (r.status === 401 && document.body.dataset.page !== "login") {
      location.href = "/ui/login?next=" + encodeURIComponent(location.pathname + location.search);
      throw new Error("not logged in");
    }
    const type = r.headers.get("content-type") || "";
    const data = type.includes("json") ? await r.json() : await r.text();
    if (!r.ok) {
      const err = new Error((data && data.message) || `${method} ${path}: HTTP ${r.status}`);
      err.status = r.status;
      throw err;
    }
    return data;
  }

  // Run an action, show its refusal or failure message (the server's, verbatim).
  async function act(what, fn) {
    show("");
    try {
      const out = await fn();
      show(`${what}: done`, true);
      return out;
    } catch (e) {
      show(e.message);
      return undefined;
    }
  }

  function el(tag, attrs = {}, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (k === "text") e.textContent = v; else e.setAttribute(k, v);
    }
    for (const c of children) e.append(c);
    return e;
  }

  function uptime(s) {
    s = Math.floor(s || 0);
    if (!s) return "-";
    const d = Math.floor(s / 86400), h = Math.floor(s % 86400 / 3600), m = Math.floor(s % 3600 / 60);
    return (d ? d + "d " : "") + String(h).padStart(2, "0") + ":" + String(m).padStart(2, "0")
      + ":" + String(s % 60).padStart(2, "0");
  }

  async function loadSession() {
    session = await api("GET", "/ui/session");
    document.getElementById("who").textContent =
      `token ${session.token} (${session.scopes.join(", ")})`
      + (session.domains.length ? ` on ${session.domains.join(", ")}` : "");
    document.getElementById("logout").addEventListener("click", async () => {
      await api("POST", "/ui/logout").catch(() => {});
      location.href = "/ui/login";
    });
    return session;
  }

  // -- login ---------------------------------------------------------------------------
  function loginPage() {
    document.getElementById("bar").querySelector("nav").hidden = true;
    document.getElementById("logout").hidden = true;
    document.getElementById("login-form").addEventListener("submit", async (ev) => {
      ev.preventDefault();
      try {
        await api("POST", "/ui/login", { token: document.getElementById("token").value });
        const next = new URLSearchParams(location.search).get("next") || "/ui/";
        location.href = next.startsWith("/ui/") ? next : "/ui/";
      } catch (e) {
        show(e.message);
      }
    });
    document.getElementById("login-go").disabled = false;  // disabled until handled
  }

  // -- domain list ---------------------------------------------------------------------
  // Every domain with its host: the cluster-wide list on a member (as `xenia list`),
  // else this host's own. Rows of other members carry no config or uptime.
  async function domainRows() {
    const cl = await api("GET", "/v1/cluster/domains").catch(() => ({ member: false }));
    if (cl.member) {
      const local = await api("GET", "/v1/domains");
      const mine = new Map(local.map((d) => [d.name, d]));
      return cl.domains.map((d) => ({ ...(d.host === cl.host ? mine.get(d.name) : {}), ...d }));
    }
    const [doms, host] = await Promise.all([api("GET", "/v1/domains"), api("GET", "/v1/host")]);
    return doms.filter((d) => d.domid !== 0).map((d) => ({ ...d, host: host.host }));
  }

  async function listPage() {
    const rows = (await domainRows()).map((d) => ({
      name: d.name, host: d.host, type: d.type, state: d.state, memory: d.memory,
      vcpus: d.vcpus, ha: (d.config && d.config.ha) ? "yes" : "-", uptime: d.uptime || 0,
    }));
    const tbody = document.querySelector("#domains tbody");
    const filter = document.getElementById("filter");
    let key = "name", dir = 1;
    function draw() {
      const q = filter.value.trim().toLowerCase();
      const shown = rows.filter((r) => !q || [r.name, r.type, r.state, r.host]
        .some((v) => String(v).toLowerCase().includes(q)));
      shown.sort((a, b) => (a[key] > b[key] ? 1 : a[key] < b[key] ? -1 : 0) * dir);
      tbody.replaceChildren(...shown.map((r) => el("tr", { "data-name": r.name },
        el("td", {}, el("a", { href: "/ui/domain?name=" + encodeURIComponent(r.name), text: r.name })),
        el("td", { text: r.host, class: "host" }), el("td", { text: r.type }),
        el("td", { text: r.state, class: "state" }), el("td", { text: String(r.memory) }),
        el("td", { text: String(r.vcpus) }), el("td", { text: r.ha }),
        el("td", { text: uptime(r.uptime) }))));
      document.querySelectorAll("#domains th").forEach((th) => {
        th.className = th.dataset.key === key ? (dir > 0 ? "sorted-asc" : "sorted-desc") : "";
      });
    }
    document.querySelectorAll("#domains th[data-key]").forEach((th) => th.addEventListener("click", () => {
      dir = key === th.dataset.key ? -dir : 1;
      key = th.dataset.key;
      draw();
    }));
    filter.addEventListener("input", draw);
    filter.value = new URLSearchParams(location.search).get("q") || "";  // the host page's links
    draw();
  }

  // -- create --------------------------------------------------------------------------
  function createPage() {
    const text = document.getElementById("cfg-text");
    const create = document.getElementById("create");
    let parsed = null;
    text.addEventListener("input", () => { create.disabled = true; parsed = null; });
    document.getElementById("cfg-file").addEventListener("change", async (ev) => {
      const f = ev.target.files[0];
      if (f) { text.value = await f.text(); create.disabled = true; }
    });
    document.getElementById("check").addEventListener("click", async () => {
      const out = await act("Check", () => api("POST", "/v1/config/parse", { text: text.value }));
      const list = document.getElementById("warnings");
      list.replaceChildren();
      document.getElementById("parsed").textContent = out ? JSON.stringify(out.config, null, 2) : "";
      if (!out) return;
      parsed = out.config;
      for (const w of out.warnings) list.append(el("li", { class: "warn", text: w }));
      create.disabled = false;
    });
    create.addEventListener("click", async () => {
      if (!parsed) return;
      const dom = await act("Create", () => api("POST", "/v1/domains", { config: parsed }));
      if (dom) location.href = "/ui/domain?name=" + encodeURIComponent(dom.name);
    });
  }

  // -- graphs --------------------------------------------------------------------------
  const GRAPHS = [
    ["cpu", "CPU (% of one host CPU)"], ["memory", "Memory in use (MiB)"],
    ["net", "Network (KiB/s, rx and tx)"], ["disk", "Disk (KiB/s, read and write)"],
  ];

  function drawGraphs(box, hist) {
    box.replaceChildren();
    const t = hist.t;
    const series = {
      cpu: [hist.cpu], memory: [hist.memory_mib], net: [hist.net_rx_kibs, hist.net_tx_kibs],
      disk: [hist.disk_rd_kibs, hist.disk_wr_kibs],
    };
    const names = { cpu: ["CPU %"], memory: ["MiB"], net: ["rx", "tx"], disk: ["read", "write"] };
    for (const [id, title] of GRAPHS) {
      const div = el("div", { class: "graph", id: "graph-" + id, "data-points": String(t.length) });
      box.append(div);
      const opts = {
        title, width: 520, height: 180,
        series: [{}, ...names[id].map((label, i) => ({ label, stroke: i ? "#c0392b" : "#2f5f8f" }))],
      };
      // eslint-disable-next-line no-undef
      new uPlot(opts, [t, ...series[id]], div);
    }
  }

  function startGraphs(path) {
    const box = document.getElementById("graphs");
    async function tick() {
      try {
        drawGraphs(box, await api("GET", path));
      } catch (e) {
        box.textContent = e.message;
      }
    }
    tick();
    setInterval(tick, 5000);
  }

  // -- domain page ---------------------------------------------------------------------
  async function domainPage() {
    const name = new URLSearchParams(location.search).get("name");
    const ref = encodeURIComponent(name);
    let dom = await api("GET", `/v1/domains/${ref}`);
    function facts() {
      document.getElementById("dom-name").textContent = dom.name;
      const f = document.getElementById("facts");
      f.replaceChildren(el("p", { id: "dom-state", text:
        `${dom.type} · ${dom.state} · ${dom.memory} MiB · ${dom.vcpus} vCPUs · uptime ${uptime(dom.uptime)}` }));
      const cfg = dom.config || {};
      const devs = el("ul");
      for (const d of cfg.disks || []) devs.append(el("li", { text: `disk ${d.vdev}: ${d.target || "(empty)"}` }));
      for (const v of cfg.vifs || []) devs.append(el("li", { text: `nic ${v.devid ?? ""} ${v.mac || ""} ${v.bridge || ""}` }));
      f.append(devs);
      document.getElementById("config").textContent = JSON.stringify(cfg, null, 2);
      document.getElementById("mem").value = dom.memory;
      document.getElementById("vcpus").value = dom.vcpus;
      document.getElementById("vnc-section").hidden = dom.type !== "hvm";
      stateButtons();
    }
    // Only the actions the domain's state allows are shown (the server refuses the others
    // anyway). Start boots a preserved domain (xl's s and c states) again: shown only
    // then, and usable only with the scope the server asks for it (api/scopes.py: power).
    const LIVE_ONLY = ["shutdown", "reboot", "pause", "unpause", "save", "migrate"];
    function stateButtons() {
      const preserved = ["shutdown", "crashed"].includes(dom.state);
      for (const act of LIVE_ONLY) {
        const other = document.querySelector(`button[data-act=${act}]`);
        if (other) {
          other.hidden = preserved || (act === "pause" && dom.state === "paused")
            || (act === "unpause" && dom.state !== "paused");
        }
      }
      const power = session.scopes.includes("power");
      const b = document.querySelector("button[data-act=start]");
      b.hidden = !preserved;
      b.disabled = !power;
      const hint = document.getElementById("start-hint");
      hint.hidden = !preserved || power;
      hint.textContent = `Start: token '${session.token}' lacks the scope 'power'; `
        + "log in with a token that has it";
    }
    facts();
    const base = `/v1/domains/${ref}`;
    const val = (id) => document.getElementById(id).value;
    const actions = {
      start: () => api("POST", base + "/start"),
      shutdown: () => api("POST", base + "/shutdown", {}),
      reboot: () => api("POST", base + "/reboot", {}),
      pause: () => api("POST", base + "/pause"),
      unpause: () => api("POST", base + "/unpause"),
      destroy: () => api("DELETE", base),
      "mem-set": () => api("POST", base + "/memory", { mib: Number(val("mem")) }),
      "vcpu-set": () => api("POST", base + "/vcpus", { count: Number(val("vcpus")) }),
      save: () => save(base, val("save-file"), document.getElementById("save-keep").checked),
      migrate: () => migrate(base, val("migrate-host")),
      "disk-attach": () => api("POST", base + "/disks", { args: [val("disk-spec")] }),
      "nic-attach": () => api("POST", base + "/nics", { args: [val("nic-spec")] }),
    };
    document.querySelectorAll("#actions button[data-act]").forEach((b) => b.addEventListener("click", async () => {
      const what = b.dataset.act;
      if (what === "destroy" && !confirm(`Destroy ${dom.name}?`)) return;
      const ok = await act(b.textContent, actions[what]);
      if (ok === undefined) return;
      if (what === "destroy") { location.href = "/ui/"; return; }
      dom = await api("GET", `/v1/domains/${ref}`).catch(() => dom);
      facts();
    }));
    document.getElementById("console-open").addEventListener("click", () => openConsole(ref));
    document.getElementById("vnc-open").addEventListener("click", () => {
      window.dispatchEvent(new CustomEvent("xenia-vnc", { detail: { ref } }));
    });
    startGraphs(`/v1/domains/${ref}/history`);
    targets();
  }

  // The migrate picker: the other cluster members and the configured peers.
  async function targets() {
    const pick = document.getElementById("migrate-host");
    const t = await api("GET", "/v1/host/targets").catch(() => ({ members: [], peers: [] }));
    const opts = [...t.members.map((n) => el("option", { value: n, text: `${n} (cluster member)` })),
      ...t.peers.map((n) => el("option", { value: n, text: `${n} (peer)` }))];
    if (!opts.length) {
      opts.push(el("option", { value: "", text: "(no other host: join a cluster or `xenia host add`)" }));
    }
    pick.replaceChildren(...opts);
  }

  // -- progress of long operations ---------------------------------------------------------
  // One box a page (#progress): a <progress> bar (no value: not known yet) and a line of
  // text; data-status and data-pct say the same for scripts and tests.
  function progress() {
    const box = document.getElementById("progress");
    const bar = box.querySelector("progress");
    const line = box.querySelector(".text");
    function set(status, pct, text) {
      box.hidden = false;
      box.dataset.status = status;
      if (pct === null) { bar.removeAttribute("value"); delete box.dataset.pct; } else {
        bar.value = Math.max(0, Math.min(100, pct));
        box.dataset.pct = bar.value.toFixed(1);
      }
      line.textContent = text;
    }
    return { set };
  }

  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

  // The same line as `xenia migrate` prints (cli/migrate.py's _render), from the same job.
  function migrationLine(job) {
    const p = job.progress || {};
    if (["checking", "preparing"].includes(job.status)) return [null, `${job.status}...`];
    if (job.status === "mirroring") return [null, "copying disks (live mirror)..."];
    const mib = 1048576, total = Number(p.total || 0), left = Number(p.remaining || 0);
    const pct = total ? 100 * (total - left) / total : 0;
    const throttle = Number(p.throttle || 0);
    return [pct, `${job.status}: pass ${p.passes || 0}, ${pct.toFixed(1)}% of RAM, `
      + `${Math.round(Number(p.transferred || 0) / mib)} MiB sent, ${Math.round(left / mib)} MiB left, `
      + `dirtying ${(Number(p.dirty_rate || 0) * 4096 / mib).toFixed(1)} MiB/s`
      + (throttle ? `, throttle ${throttle}%` : "")];
  }

  // A live migration: start it, then follow its job as `xenia migrate` does.
  async function migrate(base, host) {
    if (!host) throw new Error("Failed to migrate: there is no host to migrate to; join a cluster or add a peer (`xenia host add`)");
    const bar = progress();
    bar.set("starting", null, `migrating to ${host}...`);
    let job = await api("POST", base + "/migrate", { host });
    while (job.finished === null || job.finished === undefined) {
      await sleep(300);
      job = await api("GET", `/v1/migrations/${job.id}`);
      const [pct, text] = migrationLine(job);
      bar.set(job.status, pct, text);
    }
    if (job.status !== "completed") {
      bar.set(job.status, null, `migration ${job.status}: ${job.message || ""}`);
      throw new Error(job.message || `migration ${job.status}`);
    }
    bar.set("completed", 100, job.message || `migrated to ${host}`);
    return job;
  }

  // A save: the API answers when the file is written (the CLI prints nothing before
  // either), so the bar shows the time spent until the answer, then the result.
  async function save(base, file, keep) {
    const bar = progress();
    const t0 = Date.now();
    const tick = () => bar.set("saving", null, `saving to ${file}... ${((Date.now() - t0) / 1000).toFixed(0)} s`);
    tick();
    const timer = setInterval(tick, 500);
    try {
      const res = await api("POST", base + "/save", { file, keep });
      bar.set("completed", 100, `Saved to ${res.file} (${(res.bytes / 1048576).toFixed(1)} MiB in ${res.seconds.toFixed(2)} s)`);
      return res;
    } catch (e) {
      bar.set("failed", null, e.message);
      throw e;
    } finally {
      clearInterval(timer);
    }
  }

  function openConsole(ref) {
    const box = document.getElementById("terminal");
    box.replaceChildren();
    // eslint-disable-next-line no-undef
    const term = new Terminal({ convertEol: false, cols: 100, rows: 28 });
    term.open(box);
    const ws = new WebSocket(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/v1/domains/${ref}/console`);
    ws.binaryType = "arraybuffer";
    const enc = new TextEncoder();
    ws.onopen = () => { box.dataset.state = "open"; term.focus(); ws.send(enc.encode("\r")); };
    ws.onmessage = (ev) => term.write(new Uint8Array(ev.data));
    ws.onclose = (ev) => {
      const opened = box.dataset.state === "open";
      box.dataset.state = "closed";
      term.write(`\r\n[console closed${ev.reason ? ": " + ev.reason : ""}]\r\n`);
      // A refused handshake reaches a page as code 1006 without the server's reason.
      if (!opened) {
        show("The console could not be opened: the token needs the scope 'console', and the "
          + "domain must be running (and no `xenia console` attached to it).");
      }
    };
    term.onData((d) => { if (ws.readyState === 1) ws.send(enc.encode(d)); });
    window.xeniaTerm = term;  // for the browser tests: what the terminal shows
  }

  // -- event log and tokens (admin) ------------------------------------------------------
  async function eventsPage() {
    const rows = await api("GET", "/v1/host/audit?limit=500");
    document.querySelector("#events tbody").replaceChildren(...rows.map((e) => el("tr", {},
      el("td", { text: e.time }), el("td", { text: e.token || "(none)" }),
      el("td", { text: e.client || "" }), el("td", { text: `${e.method} ${e.path}` }),
      el("td", { text: e.domain || "" }),
      el("td", { text: e.status < 400 ? `ok (${e.status})` : `refused or failed (${e.status})` }))));
  }

  async function tokensPage() {
    async function draw() {
      const rows = await api("GET", "/v1/host/tokens");
      document.querySelector("#tokens tbody").replaceChildren(...rows.map((t) => {
        const revoke = el("button", { class: "danger", text: "Revoke" });
        revoke.addEventListener("click", async () => {
          if (!confirm(`Revoke ${t.name} and the tokens made with it?`)) return;
          await act("Revoke", () => api("DELETE", `/v1/host/tokens/${encodeURIComponent(t.name)}`));
          draw();
        });
        return el("tr", {}, el("td", { text: t.name }), el("td", { text: t.scopes.join(", ") }),
          el("td", { text: t.domains.join(", ") || "all" }), el("td", { text: t.parent || "" }),
          el("td", {}, revoke));
      }));
    }
    const list = (id) => document.getElementById(id).value.split(",").map((x) => x.trim()).filter(Boolean);
    document.getElementById("tok-create").addEventListener("click", async () => {
      const out = await act("Create token", () => api("POST", "/v1/host/tokens", {
        name: document.getElementById("tok-name").value || null,
        scopes: list("tok-scopes"), domains: list("tok-domains"),
      }));
      if (!out) return;
      document.getElementById("tok-value").textContent = out.token;
      document.getElementById("tok-new").hidden = false;
      draw();
    });
    await draw();
  }

  async function main() {
    const page = document.body.dataset.page;
    if (page === "login") { loginPage(); return; }
    try {
      await loadSession();
      if (page === "index") await listPage();
      else if (page === "create") createPage();
      else if (page === "domain") await domainPage();
      else if (pages[page]) await pages[page](helpers);
      else if (page === "events") await eventsPage();
      else if (page === "tokens") await tokensPage();
    } catch (e) {
      show(e.message);
    }
  }

  // Pages in scripts of their own (cluster.js) register here; they load before this one.
  const pages = window.xeniaPages || {};
  const helpers = { api, act, show, el, progress, sleep, startGraphs, domainRows,
    session: () => session };
  return { main, api, show };
})();

window.xenia = xenia;
xenia.main();
