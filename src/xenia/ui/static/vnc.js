/* The HVM screen through noVNC (an ES module, loaded only on the domain page). The
 * WebSocket goes to xeniad, which relays it to the domain's QEMU VNC server: no separate
 * websockify, and the same session and scope (`console`) as the serial console. */
import RFB from "/ui/static/vendor/novnc/core/rfb.js";

window.addEventListener("xenia-vnc", (ev) => {
  const box = document.getElementById("vnc");
  box.replaceChildren();
  const proto = location.protocol === "https:" ? "wss" : "ws";
  const rfb = new RFB(box, `${proto}://${location.host}/v1/domains/${ev.detail.ref}/vnc`);
  rfb.scaleViewport = true;
  rfb.addEventListener("connect", () => { box.dataset.state = "connected"; });
  rfb.addEventListener("disconnect", (e) => {
    box.dataset.state = "closed";
    if (!e.detail.clean) window.xenia.show("The screen was refused or lost (a token needs the scope 'console').");
  });
  window.xeniaVnc = rfb;
});
