// worldsim play: keys held in the browser drive the world, one step in flight at a time.
// Passed to Gradio as `launch(js=...)`: runs once when the page loads.
() => {
  const KEYS = {
    ArrowLeft: "left", KeyA: "left", ArrowRight: "right", KeyD: "right",
    ArrowUp: "up", KeyW: "up", Space: "up", ArrowDown: "down", KeyS: "down",
    Digit1: "1", Digit2: "2", Digit3: "3", Digit4: "4", Digit5: "5",
    Digit6: "6", Digit7: "7", Digit8: "8", Digit9: "9", Digit0: "0",
  };
  const held = [];  // key tokens in the order pressed
  const done = [];  // times (ms) of the last finished steps, for the FPS readout
  let busy = false;
  let paused = false;

  const typing = (e) => e.target.closest && e.target.closest("input, textarea, select");
  const stepButton = () => document.querySelector("#ws-step");

  function pump() {
    if (busy || paused || held.length === 0 || !stepButton()) return;
    busy = true;
    stepButton().click();
  }

  window.worldsimHeld = () => held.join(",");
  window.worldsimStepDone = () => {
    busy = false;
    const now = performance.now();
    done.push(now);
    while (done.length > 1 && now - done[0] > 2000) done.shift();
    const fps = done.length > 1 ? (done.length - 1) / ((now - done[0]) / 1000) : 0;
    const readout = document.querySelector("#ws-fps");
    if (readout) readout.textContent = `${fps.toFixed(1)} FPS`;
    setTimeout(pump, 0);
  };
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
    if (!paused) pump();
  };

  document.addEventListener("keydown", (e) => {
    if (typing(e)) return;
    if (e.code === "KeyP") { window.worldsimTogglePause(); return; }
    const key = KEYS[e.code];
    if (!key) return;
    e.preventDefault();  // arrows and Space must not scroll the page
    if (!held.includes(key)) held.push(key);
    pump();
  });
  document.addEventListener("keyup", (e) => {
    const key = KEYS[e.code];
    if (!key) return;
    const i = held.indexOf(key);
    if (i >= 0) held.splice(i, 1);
  });
  // A key released while the page had no focus never sends keyup: drop everything held.
  window.addEventListener("blur", () => { held.length = 0; });
}
