// Tables from structured data (columns and rows), never from HTML: each cell is text.

import {fill, h} from './dom.js';

const PAGE = 100;
const NUMERIC = /^(int|float|numeric|decimal|double|real|smallint|bigint|integer|money)/i;

function cellText(value) {
  if (value === null || value === undefined) return null;
  if (typeof value === 'object') return JSON.stringify(value);
  return String(value);
}

/**
 * A paged grid of rows. columns: [{name, type}] or names; rows: arrays (or objects keyed
 * by column name). Returns an element.
 */
export function grid(columns, rows, {caption, pageSize = PAGE} = {}) {
  const cols = columns.map((c) => (typeof c === 'string' ? {name: c, type: ''} : c));
  const wrap = h('div', {class: 'grid-box'});
  const status = h('p', {class: 'muted small', 'aria-live': 'polite'});
  const tableWrap = h('div', {class: 'table-wrap', tabindex: '0', role: 'region',
                              'aria-label': caption || 'Result'});
  let page = 0;
  const pages = Math.max(1, Math.ceil(rows.length / pageSize));
  const prev = h('button', {type: 'button', onclick: () => show(page - 1)}, 'Previous');
  const next = h('button', {type: 'button', onclick: () => show(page + 1)}, 'Next');

  function show(n) {
    page = Math.min(Math.max(0, n), pages - 1);
    const head = h('tr', {}, cols.map((c) => h('th', {scope: 'col', title: c.type || null}, c.name)));
    const body = rows.slice(page * pageSize, (page + 1) * pageSize).map((row) => {
      const values = Array.isArray(row) ? row : cols.map((c) => row[c.name]);
      return h('tr', {}, values.map((value, i) => {
        const text = cellText(value);
        const numeric = cols[i] && NUMERIC.test(cols[i].type || '');
        return h('td', {class: text === null ? 'null' : numeric ? 'num' : null},
                 text === null ? 'null' : text);
      }));
    });
    fill(tableWrap, h('table', {class: 'grid'},
      caption ? h('caption', {class: 'muted small'}, caption) : null,
      h('thead', {}, head), h('tbody', {}, body)));
    const first = rows.length ? page * pageSize + 1 : 0;
    status.textContent = `Rows ${first}–${Math.min(rows.length, (page + 1) * pageSize)} of ${rows.length}`;
    prev.disabled = page === 0;
    next.disabled = page >= pages - 1;
  }

  show(0);
  return fill(wrap, tableWrap, h('div', {class: 'row'}, prev, next, status));
}

/**
 * Rows as CSV text (RFC 4180 quoting), for a local download of what is on screen. A text
 * cell that a spreadsheet would run as a formula (= + - @ tab CR first) gets a leading '.
 */
export function toCsv(columns, rows) {
  const cols = columns.map((c) => (typeof c === 'string' ? {name: c, type: ''} : c));
  const quote = (value, i) => {
    let text = cellText(value) ?? '';
    const numeric = i !== undefined && NUMERIC.test(cols[i].type || '');
    if (typeof value === 'string' && !numeric && /^[=+\-@\t\r]/.test(text)) text = `'${text}`;
    return /[",\r\n]/.test(text) ? `"${text.replaceAll('"', '""')}"` : text;
  };
  const head = cols.map((c) => quote(c.name)).join(',');
  return [head, ...rows.map((r) => r.map(quote).join(','))].join('\r\n');
}
