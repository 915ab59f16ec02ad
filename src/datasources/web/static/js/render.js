// Reply parts as DOM: text, code, output, tables from data, images from the workspace.
// Everything here came from a model, a kernel or a file name: all of it is text.

import {download, post, request} from './api.js';
import {errorBox, fill, h, path, toast} from './dom.js';
import {grid} from './grid.js';

/**
 * Model text, a safe subset of markdown: ``` fences become code blocks, `code` spans and
 * paragraphs are kept; links, images and HTML stay literal text (nothing is fetched or
 * followed).
 */
export function markdown(text) {
  const out = [];
  const pieces = String(text).split(/^```[^\n]*\n?/m);
  pieces.forEach((piece, i) => {
    if (i % 2 === 1) {
      out.push(h('pre', {}, h('code', {}, piece.replace(/\n$/, ''))));
      return;
    }
    for (const para of piece.split(/\n{2,}/)) {
      if (!para.trim()) continue;
      const p = h('p');
      para.split(/(`[^`\n]+`)/).forEach((span) => {
        if (span.length > 2 && span.startsWith('`') && span.endsWith('`')) p.append(h('code', {}, span.slice(1, -1)));
        else p.append(document.createTextNode(span));
      });
      out.push(p);
    }
  });
  return out;
}

function tablePart(data) {
  if (!data || typeof data !== 'object') return h('p', {class: 'muted'}, 'An empty table.');
  if (data.preview && Array.isArray(data.columns)) {  // a data brief
    const stats = data.columns.map((c) => [c.name, c.type, c.null_fraction, c.distinct, c.min ?? '', c.max ?? '']);
    return h('div', {class: 'stack'},
      h('h3', {}, `${data.title} — ${data.rows} rows`),
      grid([{name: 'column'}, {name: 'type'}, {name: 'null fraction', type: 'float'}, {name: 'distinct', type: 'int'}, {name: 'min'}, {name: 'max'}], stats, {caption: 'Columns'}),
      grid(data.preview.columns || [], data.preview.rows || [], {caption: 'First rows'}));
  }
  const columns = (data.columns || []).map((c, i) => (typeof c === 'string' ? {name: c, type: (data.types || [])[i] || ''} : c));
  const caption = data.path ? `${data.path}${data.truncated ? ` (first ${data.rows.length} of ${data.row_count} rows)` : ''}` : 'Table';
  return grid(columns, Array.isArray(data.rows) ? data.rows : [], {caption});
}

/**
 * The API address of a workspace file. Each segment is encoded, and '.' or '..' segments
 * are refused: a URL would resolve them and reach another route of the API.
 */
export function workspaceFileUrl(chatId, relative) {
  const segments = String(relative).split('/');
  if (segments.some((s) => s === '' || s === '.' || s === '..')) throw new TypeError('refused an unsafe path');
  return `${path`/api/v1/chats/${chatId}/files/`}${segments.map(encodeURIComponent).join('/')}`;
}

async function imagePart(chatId, part) {
  const figure = h('figure', {}, h('p', {class: 'muted small'}, 'Loading the image…'));
  try {
    const response = await request('GET', workspaceFileUrl(chatId, part.path), {raw: true});
    const blob = await response.blob();
    // Only PNG is shown inline; the bytes come from sandboxed code (an SVG could script).
    const png = new Blob([blob], {type: 'image/png'});
    const img = h('img', {class: 'part-img', alt: `Figure ${part.name || ''}`.trim(), src: URL.createObjectURL(png)});
    fill(figure, img, h('figcaption', {class: 'muted small'}, part.name || part.path));
  } catch (error) {
    fill(figure, errorBox(error));
  }
  return figure;
}

export function codeBlock(code, chatId, {runnable = true} = {}) {
  const out = h('div', {'aria-live': 'polite'});
  const copy = h('button', {type: 'button', onclick: async () => {
    try { await navigator.clipboard.writeText(code); copy.textContent = 'Copied'; } catch { copy.textContent = 'Copy failed'; }
  }}, 'Copy');
  const rerun = runnable ? h('button', {type: 'button', onclick: async () => {
    rerun.disabled = true;
    fill(out, h('p', {class: 'muted small'}, 'Running…'));
    try {
      const result = await post(path`/api/v1/chats/${chatId}/execute`, {code});
      fill(out, ...(await Promise.all(result.parts.map((p) => renderPart(chatId, p)))));
    } catch (error) {
      fill(out, errorBox(error));
    } finally { rerun.disabled = false; }
  }}, 'Run again') : null;
  return h('div', {class: 'part-code'}, h('pre', {}, h('code', {}, code)), h('div', {class: 'row'}, copy, rerun), out);
}

/** One part as an element (a promise: images are fetched). */
export async function renderPart(chatId, part) {
  switch (part.type) {
    case 'text': return h('div', {class: 'part-text'}, markdown(part.text || ''));
    case 'code': return codeBlock(part.text || '', chatId);
    case 'stdout': case 'result': return h('pre', {class: `part-${part.type}`}, part.text || '');
    case 'stderr': return h('pre', {class: 'part-stderr'}, part.text || '');
    case 'table': return tablePart(part.data);
    case 'image': return imagePart(chatId, part);
    case 'file': return h('p', {}, h('button', {type: 'button', onclick: () =>
      Promise.resolve().then(() => download(workspaceFileUrl(chatId, part.path), {}, part.name || 'file'))
        .catch((e) => toast(e.detail || String(e)))},
    `Download ${part.name || part.path}`));
    case 'error': return h('div', {class: 'notice error', role: 'alert'}, h('strong', {}, part.name || 'Error'), ': ', part.text || '');
    default: return h('pre', {}, JSON.stringify(part));
  }
}
