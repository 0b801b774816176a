// chart.js — charts drawn as SVG elements (no library): horizontal bars of
// counts per state, and a stacked progress bar.
const NS = 'http://www.w3.org/2000/svg';

function el(name, attrs, text) {
  const e = document.createElementNS(NS, name);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
  if (text !== undefined) e.textContent = text;
  return e;
}

// rows: [{key, label, value}]; one bar per row, coloured by the class s-<key>.
export function barChart(rows, { width = 560, rowHeight = 22, labelWidth = 110 } = {}) {
  const max = Math.max(1, ...rows.map((r) => r.value));
  const height = rows.length * rowHeight + 6;
  const svg = el('svg', { viewBox: `0 0 ${width} ${height}`, role: 'img', 'aria-label': 'devices per state' });
  const barSpace = width - labelWidth - 60;
  rows.forEach((r, i) => {
    const y = 3 + i * rowHeight;
    svg.append(el('text', { x: labelWidth - 8, y: y + rowHeight * 0.65, 'text-anchor': 'end' }, r.label));
    svg.append(el('rect', { x: labelWidth, y: y + 3, width: barSpace, height: rowHeight - 8, rx: 3, fill: '#eef1f5' }));
    const w = r.value > 0 ? Math.max(2, (barSpace * r.value) / max) : 0;
    const bar = el('rect', { x: labelWidth, y: y + 3, width: w, height: rowHeight - 8, rx: 3, class: `s-${r.key}` });
    bar.append(el('title', {}, `${r.label}: ${r.value}`));
    svg.append(bar);
    svg.append(el('text', { x: labelWidth + w + 6, y: y + rowHeight * 0.65, class: 'v' }, String(r.value)));
  });
  return svg;
}

// A stacked bar (HTML spans) of counts by state; widths via the CSSOM
// (allowed by the CSP, unlike style attributes).
export function stackedBar(counts, order, total) {
  const bar = document.createElement('div');
  bar.className = 'bar';
  for (const k of order) {
    const v = counts[k] || 0;
    if (!v || !total) continue;
    const s = document.createElement('span');
    s.className = `s-${k}`;
    s.style.width = `${(100 * v) / total}%`;
    s.title = `${k}: ${v}`;
    bar.append(s);
  }
  return bar;
}
