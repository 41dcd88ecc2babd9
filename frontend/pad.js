// The drawing pad: pointer events (mouse, touch and pen in one path) into strokes,
// rendered smooth and sharp at any size and pixel density.
//
// Strokes are kept in normalised coordinates (0..1 of the pad's side), so the pad can be
// resized or re-rendered at another resolution (the PNG sent to the server) without loss.

import { canEncodeGreyPNG, encodeGreyPNG, pngDataURL } from './png.js';

// Side of the PNG sent to the server: the drawing is re-rendered from the strokes at this
// size, so the request is small and the same whatever the screen's size or pixel density.
export const EXPORT_SIZE = 280;

// Points closer than this (in pad sides) to the previous one add nothing but work.
const MIN_STEP = 0.002;

/**
 * Render strokes onto a 2D context that is `size` device pixels square: white paper, black
 * ink, round caps and joins, each stroke smoothed by quadratic curves through the midpoints
 * of its samples. A stroke of one point (a tap) is a dot as wide as the pen.
 */
export function renderStrokes(ctx, size, strokes, widthFraction) {
  const width = widthFraction * size;
  ctx.save();
  ctx.setTransform(1, 0, 0, 1, 0, 0);
  ctx.fillStyle = '#fff';
  ctx.fillRect(0, 0, size, size);
  ctx.fillStyle = ctx.strokeStyle = '#000';
  ctx.lineWidth = width;
  ctx.lineCap = 'round';
  ctx.lineJoin = 'round';
  for (const stroke of strokes) {
    const pts = stroke.map(([x, y]) => [x * size, y * size]);
    ctx.beginPath();
    if (pts.length === 1) {
      ctx.arc(pts[0][0], pts[0][1], width / 2, 0, 2 * Math.PI);
      ctx.fill();
      continue;
    }
    ctx.moveTo(pts[0][0], pts[0][1]);
    for (let i = 1; i < pts.length - 1; i++) {
      const mx = (pts[i][0] + pts[i + 1][0]) / 2;
      const my = (pts[i][1] + pts[i + 1][1]) / 2;
      ctx.quadraticCurveTo(pts[i][0], pts[i][1], mx, my);
    }
    const last = pts[pts.length - 1];
    ctx.lineTo(last[0], last[1]);
    ctx.stroke();
  }
  ctx.restore();
}

export class Pad {
  /**
   * @param {HTMLCanvasElement} canvas the visible pad; CSS decides its (square) size.
   * @param {object} opts widthFraction: pen width as a fraction of the pad's side;
   *   onStroke(phase): called with 'start', 'move' and 'end' as a stroke is drawn.
   */
  constructor(canvas, { widthFraction = 0.09, onStroke = () => {} } = {}) {
    this.canvas = canvas;
    this.ctx = canvas.getContext('2d');
    this.widthFraction = widthFraction;
    this.onStroke = onStroke;
    this.strokes = [];
    this.activePointer = null;
    this.frame = 0;

    canvas.addEventListener('pointerdown', (e) => this.down(e));
    canvas.addEventListener('pointermove', (e) => this.move(e));
    canvas.addEventListener('pointerup', (e) => this.up(e));
    canvas.addEventListener('pointercancel', (e) => this.up(e));
    // A long press on a phone would open a menu over the pad.
    canvas.addEventListener('contextmenu', (e) => e.preventDefault());
    this.observeSize();
  }

  get isEmpty() {
    return this.strokes.length === 0;
  }

  clear() {
    this.strokes = [];
    this.activePointer = null;
    this.redraw();
  }

  /** Remove the last stroke; returns false when there was none. */
  undo() {
    if (this.strokes.length === 0) return false;
    this.strokes.pop();
    this.activePointer = null;
    this.redraw();
    return true;
  }

  /** The drawing rendered afresh on a new canvas, EXPORT_SIZE pixels square, black on white. */
  exportCanvas() {
    const out = document.createElement('canvas');
    out.width = out.height = EXPORT_SIZE;
    const ctx = out.getContext('2d', { willReadFrequently: true });
    renderStrokes(ctx, EXPORT_SIZE, this.strokes, this.widthFraction);
    return out;
  }

  /**
   * The drawing as a PNG data URL, EXPORT_SIZE pixels square, black on white: 8-bit grey
   * (png.js), or the canvas's own RGBA where the browser cannot deflate. Resolves to the URL.
   */
  async toDataURL() {
    const out = this.exportCanvas();
    if (!canEncodeGreyPNG) return out.toDataURL('image/png');
    // Black on white: red, green and blue are equal, so the red channel is the grey.
    const rgba = out.getContext('2d').getImageData(0, 0, EXPORT_SIZE, EXPORT_SIZE).data;
    const grey = new Uint8Array(EXPORT_SIZE * EXPORT_SIZE);
    for (let i = 0; i < grey.length; i++) grey[i] = rgba[4 * i];
    return pngDataURL(await encodeGreyPNG(grey, EXPORT_SIZE, EXPORT_SIZE));
  }

  // Keep the backing store at the pad's size in device pixels, so lines stay sharp on
  // high-DPI screens, and after the page is resized, zoomed or moved to another screen.
  observeSize() {
    const fit = () => {
      const side = Math.max(1, Math.round(this.canvas.clientWidth * (window.devicePixelRatio || 1)));
      if (this.canvas.width !== side || this.canvas.height !== side) {
        this.canvas.width = this.canvas.height = side;
        this.redraw();
      }
    };
    new ResizeObserver(fit).observe(this.canvas);
    const watchDensity = () => {
      matchMedia(`(resolution: ${window.devicePixelRatio}dppx)`)
        .addEventListener('change', () => { fit(); watchDensity(); }, { once: true });
    };
    watchDensity();
    fit();
  }

  redraw() {
    renderStrokes(this.ctx, this.canvas.width, this.strokes, this.widthFraction);
  }

  // Redraw at most once per display frame, however fast the pointer reports.
  scheduleRedraw() {
    if (this.frame) return;
    this.frame = requestAnimationFrame(() => {
      this.frame = 0;
      this.redraw();
    });
  }

  point(e) {
    const rect = this.canvas.getBoundingClientRect();
    const side = this.canvas.clientWidth || 1;
    const x = (e.clientX - rect.left - this.canvas.clientLeft) / side;
    const y = (e.clientY - rect.top - this.canvas.clientTop) / side;
    return [Math.min(1, Math.max(0, x)), Math.min(1, Math.max(0, y))];
  }

  down(e) {
    // One pen at a time: a second finger or a right click does not start a stroke.
    if (this.activePointer !== null || (e.pointerType === 'mouse' && e.button !== 0)) return;
    e.preventDefault();
    this.canvas.setPointerCapture?.(e.pointerId);
    this.activePointer = e.pointerId;
    this.strokes.push([this.point(e)]);
    this.scheduleRedraw();
    this.onStroke('start');
  }

  move(e) {
    if (e.pointerId !== this.activePointer) return;
    const stroke = this.strokes[this.strokes.length - 1];
    // Coalesced events carry every sample the pen made since the last frame.
    const events = e.getCoalescedEvents ? e.getCoalescedEvents() : [];
    let added = false;
    for (const ev of events.length ? events : [e]) {
      const p = this.point(ev);
      const last = stroke[stroke.length - 1];
      if (Math.hypot(p[0] - last[0], p[1] - last[1]) >= MIN_STEP) {
        stroke.push(p);
        added = true;
      }
    }
    if (added) {
      this.scheduleRedraw();
      this.onStroke('move');
    }
  }

  up(e) {
    if (e.pointerId !== this.activePointer) return;
    this.activePointer = null;
    if (e.type === 'pointerup') {
      const stroke = this.strokes[this.strokes.length - 1];
      const p = this.point(e);
      const last = stroke[stroke.length - 1];
      if (Math.hypot(p[0] - last[0], p[1] - last[1]) >= MIN_STEP) stroke.push(p);
    }
    this.scheduleRedraw();
    this.onStroke('end');
  }
}
