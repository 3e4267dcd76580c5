/* Xenia web UI: the cluster page (body[data-page=host]). Loaded before app.js, which
 * calls the page with its helpers once the session is read.
 *
 * On a cluster member the hosts come from GET /v1/cluster (what `xenia cluster status`
 * shows: liveness, lease, maintenance, fencing, memory, domains a host); on a host
 * outside any cluster, from GET /v1/host, and the page shows that one host. Maintenance
 * and evacuation are the CLI's routes (admin scope; the server refuses other tokens).
 */
"use strict";

window.xeniaPages = Object.assign(window.xeniaPages || {}, { host: async (x) => {
  const { api, act, el, progress } = x;
  const admin = x.session().scopes.includes("admin");
  let busy = false;  // an evacuation runs: its own poll redraws

  // This host's CPU in use: the last point of its sampled history (other members'
  // samples stay on those members).
  async function cpuHere() {
    const h = await api("GET", "/v1/host/history").catch(() => null);
    const cpu = h && h.cpu && h.cpu.length ? h.cpu[h.cpu.length - 1] : null;
    return cpu === null ? "-" : `${cpu.toFixed(0)}%`;
  }

  async function rows() {
    const st = await api("GET", "/v1/cluster").catch(() => ({ member: false }));
    const cpu = await cpuHere();
    if (!st.member) {
      const h = await api("GET", "/v1/host");
      return [{ cluster: false, note: "This host is not part of a cluster: it is shown alone." },
        [{ name: h.host, state: "up", lease: "-", maintenance: "-", cpu, domains: h.domains,
          memory: `${h.free_memory} / ${h.total_memory}`, accel: h.accel || "-", this: true }]];
    }
    const note = `Cluster '${st.cluster}': quorum ${st.quorum ? "ok" : "LOST"}, leader `
      + `${st.leader || "none"}, failover ${st.failover}.`;
    return [{ cluster: true, note }, st.hosts.map((h) => ({
      name: h.name, this: h.this,
      state: h.fenced ? `fenced${h.fenced_reason ? ": " + h.fenced_reason : ""}` : (h.alive ? "up" : "down"),
      lease: h.lease_ttl === null || h.lease_ttl === undefined ? "-" : String(h.lease_ttl),
      maintenance: h.maintenance ? "on" : "off", cpu: h.this ? cpu : "-", domains: h.domains,
      memory: `${h.free_mib ?? "?"} / ${h.total_mib ?? "?"}`, accel: h.accel || "-",
    }))];
  }

  function actions(info, r) {
    if (!info.cluster || !admin) return el("td", { text: "-" });
    const maint = el("button", { "data-act": "maintenance",
      text: r.maintenance === "on" ? "Maintenance off" : "Maintenance on" });
    maint.addEventListener("click", async () => {
      await act(`Maintenance of ${r.name}`, () => api("POST",
        `/v1/cluster/hosts/${encodeURIComponent(r.name)}/maintenance`, { on: r.maintenance !== "on" }));
      draw();
    });
    const evac = el("button", { "data-act": "evacuate", class: "danger", text: "Evacuate" });
    evac.addEventListener("click", () => evacuate(r.name));
    return el("td", {}, maint, " ", evac);
  }

  async function draw() {
    const [info, hosts] = await rows();
    document.getElementById("cluster-note").textContent = info.note;
    document.querySelector("#hosts tbody").replaceChildren(...hosts.map((r) => el("tr",
      { "data-host": r.name },
      el("td", { text: r.name + (r.this ? " (this host)" : "") }),
      el("td", { text: r.state, class: "state" }), el("td", { text: r.lease, class: "lease" }),
      el("td", { text: r.maintenance, class: "maintenance" }), el("td", { text: r.cpu }),
      el("td", { text: r.memory }),
      el("td", { class: "domains" }, el("a", { href: "/ui/?q=" + encodeURIComponent(r.name),
        text: String(r.domains) })),
      el("td", { text: r.accel }), actions(info, r))));
  }

  // Evacuation is one long request (as `xenia host evacuate`); meanwhile the bar counts
  // the host's domains that have left it, from the cluster-wide list.
  async function evacuate(host) {
    if (!confirm(`Live-migrate every domain off ${host} and keep it in maintenance?`)) return;
    const bar = progress();
    const left = async () => (await x.domainRows()).filter((d) => d.host === host).length;
    const start = await left();
    const line = (n) => `evacuating ${host}: ${start - n} of ${start} domain(s) moved`;
    bar.set("evacuating", start ? 0 : null, line(start));
    busy = true;
    let polling = true;
    const poll = (async () => {
      while (polling) {
        await x.sleep(1000);
        const n = await left().catch(() => null);
        if (polling && n !== null && start) bar.set("evacuating", 100 * (start - n) / start, line(n));
      }
    })();
    const ans = await act(`Evacuate ${host}`, async () => {
      const out = await api("POST", `/v1/cluster/hosts/${encodeURIComponent(host)}/evacuate`,
        { parallel: 2 });
      if (out.failed.length) {
        throw new Error(`Failed to evacuate ${host}: ` + out.failed.map((f) =>
          `${f.name}: ${f.reason}`).join("; "));
      }
      return out;
    });
    polling = false;
    await poll;
    busy = false;
    if (ans) {
      bar.set("completed", 100, `${host} is in maintenance; ` + (ans.migrated.map((m) =>
        `${m.name} to ${m.to} (${(m.seconds || 0).toFixed(1)} s)`).join(", ") || "no domains to move"));
    } else {
      bar.set("failed", null, document.getElementById("msg").textContent);
    }
    draw();
  }

  await draw();
  setInterval(() => { if (!busy) draw().catch((e) => x.show(e.message)); }, 5000);
  x.startGraphs("/v1/host/history");
} });
