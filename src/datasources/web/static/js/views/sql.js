// /sources/{id}/sql: a read-only SQL editor (Ctrl/Cmd+Enter runs) and a paged result grid.

import {get, post} from '../api.js';
import {errorBox, fill, h, path} from '../dom.js';
import {grid, toCsv} from '../grid.js';
import {highlightEditor} from '../sqlhighlight.js';

const DRAFTS = 'datasources.sql.';

export async function sqlView({main, params, signal}) {
  const [id] = params;
  const source = await get(path`/api/v1/datasources/${id}`, {}, {signal});
  const draftKey = DRAFTS + source.id;
  const editor = h('textarea', {id: 'sql', class: 'code', rows: '8', spellcheck: 'false',
    'aria-describedby': 'sql-help', autocapitalize: 'off'});
  editor.value = sessionStorage.getItem(draftKey) || 'SELECT 1';
  const editorBox = highlightEditor(editor);
  const maxRows = h('input', {id: 'max-rows', type: 'number', min: '1', max: '100000', value: '1000'});
  const run = h('button', {type: 'submit', class: 'primary'}, 'Run');
  const out = h('div', {'aria-live': 'polite'});
  let last = null;
  const exportCsv = h('button', {type: 'button', disabled: true, onclick: () => {
    if (!last) return;
    const blob = new Blob([toCsv(last.columns, last.rows)], {type: 'text/csv'});
    const href = URL.createObjectURL(blob);
    const link = h('a', {href, download: `${source.id}-result.csv`});
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(href), 10000);
  }}, 'Export CSV');

  async function execute() {
    sessionStorage.setItem(draftKey, editor.value);
    run.disabled = true;
    fill(out, h('p', {class: 'muted'}, 'Running…'));
    try {
      const result = await post(path`/api/v1/datasources/${source.id}/query`,
        {sql: editor.value, max_rows: Number(maxRows.value) || 1000});
      last = result;
      exportCsv.disabled = false;
      const note = `${result.row_count} row${result.row_count === 1 ? '' : 's'} in ${Math.round(result.elapsed_ms)} ms` +
        (result.truncated ? ' (cut at the row limit)' : '');
      fill(out, h('p', {class: 'muted small'}, note), grid(result.columns, result.rows, {caption: 'Query result'}));
    } catch (error) {
      last = null;
      exportCsv.disabled = true;
      fill(out, errorBox(error));
    } finally {
      run.disabled = false;
    }
  }

  editor.addEventListener('keydown', (event) => {
    if (event.key === 'Enter' && (event.ctrlKey || event.metaKey)) {
      event.preventDefault();
      execute();
    }
  });
  const form = h('form', {class: 'stack', 'aria-label': 'SQL query', onsubmit: (event) => {
    event.preventDefault();
    execute();
  }},
  h('label', {for: 'sql'}, 'SQL'),
  editorBox,
  h('p', {class: 'field-help', id: 'sql-help'}, 'One read-only statement. Ctrl+Enter (⌘+Enter) runs it; statements that write are refused.'),
  h('div', {class: 'row'}, run, h('label', {for: 'max-rows'}, 'Row limit'), maxRows, exportCsv));
  fill(main, h('h1', {}, `SQL — ${source.name}`),
    h('p', {}, h('a', {href: path`/sources/${source.id}`, 'data-nav': true}, 'Tables and columns')),
    form, out);
  editor.focus();
}
