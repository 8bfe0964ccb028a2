// worldsim play: keys held in the browser drive the world.
// Passed to Gradio as `launch(js=...)`: runs once when the page loads.
// The first key starts a stream (the hidden #ws-hold button): the server steps the world frame
// after frame, with one step in flight, while the keys it was last told of mean an action.
// Every change of the held keys is sent at once (#ws-keys, outside the queue); releasing them
// all ends the stream.
() => {
  const KEYS = {
    ArrowLeft: "left", KeyA: "left", ArrowRight: "right", KeyD: "right",
    ArrowUp: "up", KeyW: "up", Space: "up", ArrowDown: "down", KeyS: "down",
    Digit1: "1", Digit2: "2", Digit3: "3", Digit4: "4", Digit5: "5",
    Digit6: "6", Digit7: "7", Digit8: "8", Digit9: "9", Digit0: "0",
  };
  const BURST_GAP_MS = 500;  // a frame after a longer pause starts a new rate measurement
  const held = [];  // key tokens in the order pressed
  const shown = [];  // times (ms) the frames of the current burst were shown
  let streaming = false;
  let paused = false;
  let lastFrame = null;
  let changes = 0;  // numbers each change of the held keys: the server keeps the newest

  const typing = (e) => e.target.closest && e.target.closest("input, textarea, select");
  const button = (id) => document.querySelector(id);

  // What the server is told is held (nothing while paused), numbered: a stream's first keys go
  // through the queue and may arrive after a later change sent outside it.
  window.worldsimHeld = () => `${paused ? "" : held.join(",")}#${changes}`;

  function keysChanged() {
    changes += 1;
    if (streaming) {
      if (button("#ws-keys")) button("#ws-keys").click();
      return;
    }
    if (paused || held.length === 0 || !button("#ws-hold")) return;
    streaming = true;
    button("#ws-hold").click();
  }
  window.worldsimStreamDone = () => {
    streaming = false;
    if (held.length > 0 && !paused) setTimeout(keysChanged, 0);  // pressed as it ended
  };

  // The readout: frames shown per second in the current burst, and the engine's own time
  // per frame (the newest frame's data-ms), side by side.
  function frameShown() {
    const img = document.querySelector("#ws-frame-img");
    if (!img || img.dataset.frame === lastFrame) return;
    lastFrame = img.dataset.frame;
    const now = performance.now();
    if (shown.length > 0 && now - shown[shown.length - 1] > BURST_GAP_MS) shown.length = 0;
    shown.push(now);
    while (shown.length > 60) shown.shift();
    const readout = document.querySelector("#ws-fps");
    if (!readout || shown.length < 2) return;
    const fps = (shown.length - 1) / ((now - shown[0]) / 1000);
    const engine = img.dataset.ms ? ` · engine ${img.dataset.ms} ms/frame` : "";
    readout.textContent = `${fps.toFixed(1)} FPS${engine}`;
  }
  new MutationObserver(frameShown).observe(document.body, {
    childList: true, subtree: true, attributes: true, attributeFilter: ["data-frame"],
  });

  // Previews are of the frame they were made from: once the world moves on (keys, buttons,
  // undo, restart), say so.
  setInterval(() => {
    const legend = document.querySelector(".ws-legend[data-frame]");
    const frame = document.querySelector("#ws-frame-img");
    if (legend && frame) {
      legend.classList.toggle("ws-stale", legend.dataset.frame !== frame.dataset.frame);
    }
  }, 300);
  window.worldsimTogglePause = () => {
    paused = !paused;
    const label = document.querySelector("#ws-paused");
    if (label) label.textContent = paused ? "paused" : "";
    keysChanged();  // paused: the stream hears of no keys and ends; resumed: play on
  };

  document.addEventListener("keydown", (e) => {
    if (typing(e)) return;
    if (e.code === "KeyP") { window.worldsimTogglePause(); return; }
    const key = KEYS[e.code];
    if (!key) return;
    e.preventDefault();  // arrows and Space must not scroll the page
    if (held.includes(key)) return;  // the key repeating while held
    held.push(key);
    keysChanged();
  });
  document.addEventListener("keyup", (e) => {
    const key = KEYS[e.code];
    if (!key) return;
    const i = held.indexOf(key);
    if (i >= 0) held.splice(i, 1);
    keysChanged();
  });
  // A key released while the page had no focus never sends keyup: drop everything held.
  window.addEventListener("blur", () => { held.length = 0; keysChanged(); });
}
