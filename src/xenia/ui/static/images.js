/* Xenia web UI: the images page (body[data-page=images]). Loaded before app.js, which
 * calls the page with its helpers once the session is read.
 *
 * The built images come from GET /v1/images; a build is POST /v1/images/builds (admin
 * scope: the server refuses other tokens with a message), then its progress lines are
 * polled from GET /v1/images/builds/{id}: the lines `xenia image build` prints.
 */
"use strict";

window.xeniaPages = Object.assign(window.xeniaPages || {}, { images: async (x) => {
  const { api, act, el, progress } = x;

  async function draw() {
    const imgs = await api("GET", "/v1/images");
    document.querySelector("#images tbody").replaceChildren(...imgs.map((i) => el("tr",
      { "data-image": i.name },
      el("td", { text: i.name }), el("td", { text: i.kernel_version }),
      el("td", { text: `${Math.round(i.size / 1024)} KiB` }),
      el("td", { text: i.built.replace("T", " ").slice(0, 19) }),
      el("td", { text: i.path }))));
  }

  async function build(name, force) {
    const bar = progress();
    const log = document.getElementById("build-log");
    log.hidden = false;
    log.textContent = "";
    bar.set("starting", null, `building ${name}...`);
    let b = await api("POST", "/v1/images/builds", { name, force });
    while (b.finished === null || b.finished === undefined) {
      log.textContent = b.lines.join("\n");
      bar.set("building", null, b.lines.length ? b.lines[b.lines.length - 1] : `building ${name}...`);
      await x.sleep(300);
      b = await api("GET", `/v1/images/builds/${b.id}`);
    }
    log.textContent = b.lines.join("\n");
    if (b.status !== "completed") {
      bar.set(b.status, null, b.message);
      throw new Error(b.message);
    }
    bar.set("completed", 100, `${b.message}: ` + Object.entries(b.result).map(([k, v]) =>
      `${k} ${v}`).join(", "));
    return b;
  }

  document.getElementById("build-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const name = document.getElementById("build-name").value;
    const force = document.getElementById("build-force").checked;
    const go = document.getElementById("build-go");
    go.disabled = true;
    try {
      await act(`Build of ${name}`, () => build(name, force));
      await draw();
    } finally {
      go.disabled = false;
    }
  });
  // The button comes disabled: a click before the handler above existed would submit
  // the form natively, reloading the page with the build never asked for.
  document.getElementById("build-go").disabled = false;
  await draw();
} });
