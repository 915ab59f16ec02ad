// @-completion in the composer: sources first, then paths (files) or schema.table
// (databases), all from the API. Keyboard: arrows move, Enter or Tab takes, Escape closes.

import {get} from './api.js';
import {fill, h, path} from './dom.js';

const MENTION = /@([A-Za-z0-9_.-]*)(?::([^\s]*))?$/;

export function attachCompletion(input, {sqlTypes}) {
  const list = h('ul', {class: 'completions', role: 'listbox', id: 'composer-completions',
                        'aria-label': 'Suggestions', hidden: true});
  input.setAttribute('role', 'combobox');
  input.setAttribute('aria-autocomplete', 'list');
  input.setAttribute('aria-controls', list.id);
  input.setAttribute('aria-expanded', 'false');
  let sources = null;
  const schemas = new Map();
  let options = [];
  let active = -1;
  let token = null;
  let generation = 0;

  function close() {
    list.hidden = true;
    input.setAttribute('aria-expanded', 'false');
    input.removeAttribute('aria-activedescendant');
    options = [];
    active = -1;
  }

  function highlight(index) {
    active = index;
    [...list.children].forEach((li, i) => li.setAttribute('aria-selected', String(i === index)));
    if (index >= 0) input.setAttribute('aria-activedescendant', `completion-${index}`);
  }

  function show(found) {
    options = found.slice(0, 20);
    if (!options.length) { close(); return; }
    fill(list, options.map((option, i) => h('li', {
      id: `completion-${i}`, role: 'option', 'aria-selected': 'false',
      onmousedown: (event) => { event.preventDefault(); take(i); },
    }, option.label)));
    list.hidden = false;
    input.setAttribute('aria-expanded', 'true');
    highlight(0);
  }

  function take(index) {
    const option = options[index];
    if (!option || !token) return;
    const before = input.value.slice(0, token.start);
    const after = input.value.slice(input.selectionStart);
    input.value = before + option.insert + after;
    const caret = before.length + option.insert.length;
    input.setSelectionRange(caret, caret);
    close();
    if (option.more) update();  // a source or a folder: go on completing inside it
  }

  async function suggestions(sourceText, rest) {
    if (!sources) sources = (await get('/api/v1/datasources', {limit: 200})).items;
    if (rest === undefined) {
      const typed = sourceText.toLowerCase();
      return sources.filter((s) => s.id.startsWith(typed) || s.name.toLowerCase().startsWith(typed))
        .map((s) => ({label: s.name === s.id ? s.id : `${s.id} — ${s.name}`, insert: `@${s.id}:`, more: true}));
    }
    const source = sources.find((s) => s.id === sourceText);
    if (!source) return [];
    if (sqlTypes.has(source.type)) {
      if (!schemas.has(source.id)) {
        const schema = await get(path`/api/v1/datasources/${source.id}/schema`);
        schemas.set(source.id, schema.tables.map((t) => `${t.schema_name}.${t.name}`));
      }
      return schemas.get(source.id).filter((t) => t.startsWith(rest))
        .map((t) => ({label: t, insert: `@${source.id}:${t} `}));
    }
    const slash = rest.lastIndexOf('/');
    const folder = slash >= 0 ? rest.slice(0, slash + 1) : '';
    const page = await get(path`/api/v1/datasources/${source.id}/items`, {prefix: folder, delimiter: '/', limit: 100});
    return page.items.filter((item) => item.path.startsWith(rest)).map((item) => {
      const isFolder = item.kind === 'directory';
      const target = isFolder && !item.path.endsWith('/') ? `${item.path}/` : item.path;
      return {label: isFolder ? `${item.name}/` : item.name, insert: `@${source.id}:${target}${isFolder ? '' : ' '}`, more: isFolder};
    });
  }

  async function update() {
    const text = input.value.slice(0, input.selectionStart);
    const match = text.match(MENTION);
    if (!match || (match.index > 0 && /\S/.test(text[match.index - 1]))) { close(); return; }
    token = {start: match.index};
    const mine = ++generation;
    try {
      const found = await suggestions(match[1], match[2]);
      if (mine === generation) show(found);
    } catch {
      if (mine === generation) close();
    }
  }

  input.addEventListener('input', update);
  input.addEventListener('blur', () => setTimeout(close, 100));
  input.addEventListener('keydown', (event) => {
    if (list.hidden || event.ctrlKey || event.metaKey) return;
    if (event.key === 'ArrowDown') { event.preventDefault(); highlight((active + 1) % options.length); }
    else if (event.key === 'ArrowUp') { event.preventDefault(); highlight((active - 1 + options.length) % options.length); }
    else if (event.key === 'Enter' || event.key === 'Tab') { event.preventDefault(); take(active); }
    else if (event.key === 'Escape') { event.preventDefault(); close(); }
  });
  return list;
}
