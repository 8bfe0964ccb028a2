// worldsim play: keys held in the browser drive the world.
// Passed to Gradio as `launch(js=...)`: runs once when the page loads.
// The first key starts a stream (the hidden #ws-hold button): the server steps the world frame
// after frame, with one step in flight, while the keys it was last told of mean an action.
// Every change of the held keys is sent at once (#ws-keys, outside the queue); releasing them
// all ends the stream. The stream's frames come down the page's frame channel (a websocket,
// demo/frames.py) and are drawn on the canvas #ws-screen.
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

  // The screen (#ws-screen): every frame is drawn on one canvas, whether it came down the frame
  // channel as raw pixels (demo/frames.py: a fraction of the browser's work per frame) or in
  // the hidden <img> of a Gradio update (starts, undo, a stream's last frame, or every frame
  // of a stream while the channel is closed).
  const screen = () => document.querySelector("#ws-screen");
  function show(pixels, width, height, frame, ms, status) {
    const canvas = screen();
    if (!canvas) return;
    if (canvas.width !== width || canvas.height !== height) {
      canvas.width = width;
      canvas.height = height;
    }
    const ctx = canvas.getContext("2d");
    if (pixels instanceof ImageData) ctx.putImageData(pixels, 0, 0);
    else ctx.drawImage(pixels, 0, 0);
    canvas.dataset.frame = frame;
    canvas.dataset.ms = ms ?? "";
    const line = document.querySelector("#ws-status");
    if (line) line.textContent = status;
    frameShown(String(frame), ms);
  }

  // The frame channel: opened once per page under a random id, which the stream's event sends
  // (window.worldsimChannel); reopened if it drops. While it is closed, frames come by Gradio.
  const channelId = Array.from(crypto.getRandomValues(new Uint8Array(16)),
    (b) => b.toString(16).padStart(2, "0")).join("");
  let channel = null;
  window.worldsimChannel = () => (channel && channel.readyState === WebSocket.OPEN ? channelId : "");
  function openChannel() {
    const url = new URL(`worldsim/frames?channel=${channelId}`, document.baseURI);
    url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    channel = new WebSocket(url);
    channel.binaryType = "arraybuffer";
    channel.onmessage = (e) => {
      const length = new DataView(e.data).getUint32(0, true);
      const meta = JSON.parse(new TextDecoder().decode(new Uint8Array(e.data, 4, length)));
      const rgba = new Uint8ClampedArray(e.data, 4 + length);
      show(new ImageData(rgba, meta.width, meta.height), meta.width, meta.height, meta.frame,
        meta.ms === null ? null : Math.round(meta.ms), meta.status);
      const canvas = screen();  // counted for the browser test: frames did come this way
      if (canvas) canvas.dataset.channelFrames = Number(canvas.dataset.channelFrames || 0) + 1;
      if (meta.controls) showControls(meta.controls);
    };
    channel.onclose = () => setTimeout(openChannel, 2000);
  }
  openChannel();

  // A driven world's sliders follow its controls while a stream runs. Only what they display:
  // the stream's last frame comes through Gradio, which sets the sliders' values.
  function showControls(values) {
    const sliders = document.querySelectorAll("[id^='ws-control-']");
    sliders.forEach((slider, i) => {
      if (i >= values.length) return;
      slider.querySelectorAll("input").forEach((input) => {
        input.value = values[i];
        if (input.type !== "range") return;  // Gradio fills the track by this variable
        const [lo, hi] = [Number(input.min), Number(input.max)];
        input.style.setProperty("--range_progress", `${(100 * (values[i] - lo)) / (hi - lo)}%`);
      });
    });
  }

  // A frame in a Gradio update: drawn on the screen once its image has decoded.
  let drawnSrc = null;
  function gradioFrame() {
    const img = document.querySelector("#ws-frame-img");
    if (!img || img.src === drawnSrc) return;
    drawnSrc = img.src;
    const { frame, ms, status } = img.dataset;
    img.decode().then(() => {
      if (img.src !== drawnSrc) return;  // a newer update came meanwhile
      show(img, img.naturalWidth, img.naturalHeight, frame, ms || null, status);
    }, () => {});
  }
  new MutationObserver(gradioFrame).observe(document.body, {
    childList: true, subtree: true, attributes: true, attributeFilter: ["src"],
  });

  // The readout: frames shown per second in the current burst, and the engine's own time
  // per frame, side by side.
  function frameShown(frame, ms) {
    if (frame === lastFrame) return;  // the stream's last frame, shown again by Gradio
    lastFrame = frame;
    const now = performance.now();
    if (shown.length > 0 && now - shown[shown.length - 1] > BURST_GAP_MS) shown.length = 0;
    shown.push(now);
    while (shown.length > 60) shown.shift();
    const readout = document.querySelector("#ws-fps");
    if (!readout || shown.length < 2) return;
    const fps = (shown.length - 1) / ((now - shown[0]) / 1000);
    const engine = ms ? ` · engine ${ms} ms/frame` : "";
    readout.textContent = `${fps.toFixed(1)} FPS${engine}`;
  }

  // Previews are of the frame they were made from: once the world moves on (keys, buttons,
  // undo, restart), say so.
  setInterval(() => {
    const legend = document.querySelector(".ws-legend[data-frame]");
    const frame = screen();
    if (legend && frame && frame.dataset.frame !== undefined) {
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
