// /sources/{id}: a folder view with cursor paging for file sources; schemas, tables and
// columns for databases.

import {download, get} from '../api.js';
import {errorBox, fill, formatBytes, formatTime, h, path} from '../dom.js';
import {grid} from '../grid.js';
import {connectorTypes, testButton} from './sources.js';

function crumbs(source, prefix) {
  const parts = prefix ? prefix.replace(/\/$/, '').split('/') : [];
  const links = [h('a', {href: path`/sources/${source.id}`, 'data-nav': true}, source.name)];
  let acc = '';
  for (const part of parts) {
    acc += `${part}/`;
    links.push(h('span', {'aria-hidden': 'true'}, '/'));
    links.push(h('a', {href: `${path`/sources/${source.id}`}?prefix=${encodeURIComponent(acc)}`, 'data-nav': true}, part));
  }
  return h('nav', {class: 'crumbs', 'aria-label': 'Folder'}, links);
}

const PREVIEWABLE = /\.(csv|tsv|txt|json|jsonl|ndjson|parquet)$/i;

async function loadPreview(source, item, box) {
  fill(box, h('p', {class: 'muted small'}, 'Reading the first rows…'));
  try {
    const preview = await get(path`/api/v1/datasources/${source.id}/preview`, {path: item.path, rows: 50});
    const note = `${preview.format.toUpperCase()}: first ${preview.rows.length} rows` +
      (preview.truncated ? ' (there are more)' : '');
    fill(box, h('h3', {}, 'Preview'), grid(preview.columns, preview.rows, {caption: note}));
  } catch (error) {
    fill(box, h('h3', {}, 'Preview'), errorBox(error));
  }
}

function metadataPanel(source, item) {
  const rows = [
    ['Path', item.path], ['Kind', item.kind], ['Size', formatBytes(item.size)],
    ['Modified', formatTime(item.last_modified)], ['Type', item.content_type || ''],
    ['ETag', item.etag || ''], ['Checksum', item.checksum || ''],
  ];
  const status = h('div', {'aria-live': 'polite'});
  const previewBox = h('div', {'aria-live': 'polite'});
  if (PREVIEWABLE.test(item.name)) loadPreview(source, item, previewBox);
  return h('section', {class: 'card', 'aria-label': 'Item'},
    h('h2', {}, item.name),
    h('table', {class: 'grid'}, h('tbody', {}, rows.filter(([, v]) => v !== '').map(([k, v]) =>
      h('tr', {}, h('th', {scope: 'row'}, k), h('td', {}, String(v)))))),
    h('div', {class: 'row'}, h('button', {type: 'button', class: 'primary', onclick: async () => {
      fill(status, h('span', {class: 'muted'}, 'Downloading…'));
      try {
        await download(path`/api/v1/datasources/${source.id}/download`, {path: item.path}, item.name);
        fill(status);
      } catch (error) { fill(status, errorBox(error)); }
    }}, 'Download')), status, previewBox);
}

async function filesView(main, source, query, signal, navigate) {
  const prefix = query.get('prefix') || '';
  const detail = h('div');
  const rows = h('tbody');
  const more = h('button', {type: 'button'}, 'Load more');
  const filter = h('input', {type: 'search', id: 'glob', placeholder: 'e.g. **/*.csv', value: query.get('glob') || ''});
  const testOut = h('span', {class: 'small'});
  fill(main,
    h('h1', {}, source.name),
    h('div', {class: 'row spread'}, crumbs(source, prefix),
      h('div', {class: 'row'}, h('button', {type: 'button', onclick: () => testButton(source, testOut)}, 'Test'), testOut)),
    h('form', {class: 'row', role: 'search', onsubmit: (event) => {
      event.preventDefault();
      const target = new URLSearchParams();
      if (prefix) target.set('prefix', prefix);
      if (filter.value) target.set('glob', filter.value);
      navigate(`${location.pathname}?${target}`);
    }}, h('label', {for: 'glob'}, 'Filter (glob)'), filter, h('button', {type: 'submit'}, 'Apply')),
    h('div', {class: 'table-wrap'}, h('table', {class: 'grid'},
      h('caption', {class: 'muted small'}, prefix ? `In ${prefix}` : 'Top level'),
      h('thead', {}, h('tr', {}, ['Name', 'Size', 'Modified'].map((c) => h('th', {scope: 'col'}, c)))),
      rows)),
    more, detail);
  let cursor = null;
  async function load() {
    more.disabled = true;
    const glob = query.get('glob');
    const page = await get(path`/api/v1/datasources/${source.id}/items`,
      glob ? {glob, limit: 100, cursor} : {prefix, delimiter: '/', limit: 100, cursor}, {signal});
    for (const item of page.items) {
      let link;
      if (item.kind === 'directory') {
        const target = `${path`/sources/${source.id}`}?prefix=${encodeURIComponent(item.path.endsWith('/') ? item.path : `${item.path}/`)}`;
        link = h('a', {href: target, 'data-nav': true}, `${item.name}/`);
      } else {
        link = h('a', {href: '#', onclick: (event) => {
          event.preventDefault();
          fill(detail, metadataPanel(source, item));
          detail.querySelector('h2')?.setAttribute('tabindex', '-1');
          detail.querySelector('h2')?.focus();
        }}, item.name);
      }
      rows.append(h('tr', {}, h('td', {}, link), h('td', {class: 'num'}, formatBytes(item.size)),
        h('td', {}, formatTime(item.last_modified))));
    }
    if (!rows.children.length) rows.append(h('tr', {}, h('td', {colspan: '3', class: 'muted'}, 'Nothing here.')));
    cursor = page.next_cursor;
    more.hidden = !cursor;
    more.disabled = false;
  }
  more.addEventListener('click', () => load().catch((error) => fill(detail, errorBox(error))));
  await load();
}

async function databaseView(main, source, signal) {
  const tree = h('div', {class: 'schema-tree'}, h('p', {class: 'muted'}, 'Reading the schema…'));
  fill(main, h('h1', {}, source.name),
    h('p', {}, h('a', {class: 'button primary', href: path`/sources/${source.id}/sql`, 'data-nav': true}, 'Open the SQL editor')),
    tree);
  const schema = await get(path`/api/v1/datasources/${source.id}/schema`, {}, {signal});
  const bySchema = new Map();
  for (const table of schema.tables) {
    if (!bySchema.has(table.schema_name)) bySchema.set(table.schema_name, []);
    bySchema.get(table.schema_name).push(table);
  }
  const columnTable = (t) => h('table', {class: 'grid'},
    h('thead', {}, h('tr', {}, ['Column', 'Type', 'Nullable'].map((c) => h('th', {scope: 'col'}, c)))),
    h('tbody', {}, t.columns.map((c) => h('tr', {},
      h('td', {}, c.name), h('td', {}, c.type), h('td', {}, c.nullable ? 'yes' : 'no')))));
  const tableItem = (t) => h('li', {}, h('details', {},
    h('summary', {}, `${t.name} — ${t.kind}, ~${t.estimated_rows.toLocaleString()} rows`),
    t.comment ? h('p', {class: 'muted small'}, t.comment) : null,
    columnTable(t)));
  const schemaItem = ([name, tables]) => h('li', {}, h('details', {open: bySchema.size === 1},
    h('summary', {}, `${name} (${tables.length})`),
    h('ul', {}, tables.map(tableItem))));
  fill(tree, h('ul', {}, [...bySchema.entries()].map(schemaItem)));
}

export async function browseView({main, params, query, signal, navigate}) {
  const [id] = params;
  const [source, types] = await Promise.all([get(path`/api/v1/datasources/${id}`, {}, {signal}), connectorTypes()]);
  const type = types.find((t) => t.type === source.type);
  if (type && type.sql) await databaseView(main, source, signal);
  else await filesView(main, source, query, signal, navigate);
}
