// /sources: the owner's data sources — list, add, edit, test, remove. The add and edit
// forms are built from each connector type's JSON Schema (GET /api/v1/connector-types).

import {del, get, patch, post} from '../api.js';
import {errorBox, fill, h, path, toast} from '../dom.js';

const MASK = '********';
let typesCache = null;

export async function connectorTypes() {
  if (!typesCache) typesCache = (await get('/api/v1/connector-types')).items;
  return typesCache;
}

function fieldKind(schema) {
  const options = schema.anyOf ? schema.anyOf.filter((s) => s.type !== 'null') : [schema];
  const base = options[0] || {};
  if (base.enum) return {kind: 'enum', values: base.enum};
  if (base.type === 'boolean') return {kind: 'boolean'};
  if (base.type === 'integer' || base.type === 'number') return {kind: 'number', step: base.type === 'integer' ? '1' : 'any', min: base.minimum, max: base.maximum};
  if (base.type === 'array') return {kind: 'list'};
  return {kind: 'text', secret: base.format === 'password' || base.writeOnly === true};
}

function labelOf(name, schema) {
  return schema.title || name;
}

/** The inputs of one config field; returns {row, read()} where read() gives the value. */
function configField(name, schema, {secret, required, value, editing}) {
  const kind = fieldKind(schema);
  const id = `cfg-${name}`;
  const help = schema.description ? h('span', {class: 'field-help', id: `${id}-help`}, schema.description) : null;
  const described = help ? `${id}-help` : null;
  let input;
  let read;
  if (kind.kind === 'boolean') {
    input = h('input', {type: 'checkbox', id, name, 'aria-describedby': described,
                        checked: value === undefined ? schema.default === true : value === true});
    read = () => input.checked;
    return {row: h('div', {class: 'row'}, input, h('label', {for: id}, labelOf(name, schema)), help), read, name};
  }
  if (kind.kind === 'enum') {
    input = h('select', {id, name, 'aria-describedby': described},
      required ? null : h('option', {value: ''}, '(default)'),
      kind.values.map((v) => h('option', {value: String(v), selected: String(value ?? schema.default ?? '') === String(v)}, String(v))));
    read = () => input.value || undefined;
  } else if (kind.kind === 'number') {
    input = h('input', {type: 'number', id, name, step: kind.step, min: kind.min, max: kind.max,
                        placeholder: schema.default ?? '', value: value ?? '', 'aria-describedby': described});
    read = () => (input.value === '' ? undefined : Number(input.value));
  } else if (kind.kind === 'list') {
    input = h('input', {type: 'text', id, name, placeholder: 'comma, separated',
                        value: Array.isArray(value) ? value.join(', ') : '', 'aria-describedby': described});
    read = () => (input.value.trim() === '' ? undefined : input.value.split(',').map((s) => s.trim()).filter(Boolean));
  } else {
    const isSecret = secret || kind.secret;
    input = h('input', {
      type: isSecret ? 'password' : 'text', id, name,
      autocomplete: isSecret ? 'new-password' : 'off', spellcheck: 'false',
      required: required && !(editing && isSecret), 'aria-describedby': described,
      placeholder: isSecret && editing && value === MASK ? 'unchanged' : (schema.default ?? ''),
      value: isSecret ? '' : (value ?? ''),
    });
    // A stored secret left blank is sent back masked: the service keeps the stored value.
    read = () => (input.value === '' ? (isSecret && editing && value === MASK ? MASK : undefined) : input.value);
  }
  const label = h('label', {for: id}, labelOf(name, schema), required ? ' (required)' : '');
  return {row: h('div', {class: 'stack'}, label, input, help), read, name};
}

/** The form of one connector type; onSubmit(body) when sent. */
export function sourceForm(type, {source, onSubmit, onCancel}) {
  const editing = Boolean(source);
  const schema = type.config_schema || {};
  const props = schema.properties || {};
  const required = new Set(schema.required || []);
  const secrets = new Set(type.secret_fields || []);
  const config = source ? source.config : {};
  const hidden = new Set(type.operator_fields || []);
  const fields = Object.entries(props).filter(([name]) => !hidden.has(name)).map(([name, s]) =>
    configField(name, s, {secret: secrets.has(name), required: required.has(name), value: config[name], editing}));
  const main = fields.filter((f) => required.has(f.name) || secrets.has(f.name) || ['root', 'host', 'database', 'user', 'container_name', 'account_url'].includes(f.name));
  const more = fields.filter((f) => !main.includes(f));
  const nameInput = h('input', {id: 'src-name', name: 'name', required: true, maxlength: '200', value: source ? source.name : ''});
  const description = h('input', {id: 'src-description', name: 'description', maxlength: '2000', value: source ? source.description : ''});
  const readOnly = h('input', {type: 'checkbox', id: 'src-read-only', checked: source ? source.read_only : true});
  const tags = h('input', {id: 'src-tags', value: source ? source.tags.join(', ') : '', placeholder: 'comma, separated'});
  const status = h('div', {'aria-live': 'polite'});
  const submit = h('button', {type: 'submit', class: 'primary'}, editing ? 'Save' : 'Add source');
  const form = h('form', {class: 'card stack', 'aria-label': editing ? 'Edit source' : 'Add a source'},
    h('h2', {}, editing ? `Edit ${source.name}` : `New ${type.type} source`),
    h('p', {class: 'muted small'}, type.title),
    h('label', {for: 'src-name'}, 'Name (required)'), nameInput,
    h('label', {for: 'src-description'}, 'Description'), description,
    h('div', {class: 'row'}, readOnly, h('label', {for: 'src-read-only'}, 'Read-only (no uploads)')),
    h('label', {for: 'src-tags'}, 'Tags'), tags,
    main.map((f) => f.row),
    more.length ? h('details', {}, h('summary', {}, 'More settings'), h('div', {class: 'stack'}, more.map((f) => f.row))) : null,
    status,
    h('div', {class: 'row'}, submit, onCancel ? h('button', {type: 'button', onclick: onCancel}, 'Cancel') : null));
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    const cfg = {};
    for (const f of fields) {
      const value = f.read();
      if (value !== undefined) cfg[f.name] = value;
      else if (editing && f.name in config) cfg[f.name] = null;  // cleared: removed
    }
    const body = {
      name: nameInput.value.trim(), description: description.value, read_only: readOnly.checked,
      tags: tags.value.split(',').map((t) => t.trim()).filter(Boolean), config: cfg,
    };
    if (!editing) body.type = type.type;
    submit.disabled = true;
    fill(status);
    try {
      await onSubmit(body);
    } catch (error) {
      fill(status, errorBox(error));
      submit.disabled = false;
    }
  });
  return form;
}

function statusText(result) {
  const parts = [result.ok ? 'Connected' : 'Failed'];
  if (result.latency_ms !== null && result.latency_ms !== undefined) parts.push(`${Math.round(result.latency_ms)} ms`);
  if (result.message) parts.push(result.message);
  return parts.join(' · ');
}

export async function testButton(source, out) {
  fill(out, h('span', {class: 'muted'}, 'Testing…'));
  try {
    const result = await post(path`/api/v1/datasources/${source.id}/test`);
    fill(out, h('span', {class: result.ok ? 'ok' : 'error'}, statusText(result)),
      result.warnings.length ? h('ul', {class: 'small'}, result.warnings.map((w) => h('li', {}, w))) : null);
  } catch (error) {
    fill(out, errorBox(error));
  }
}

export async function sourcesView({main, signal, navigate}) {
  const types = await connectorTypes();
  const byType = new Map(types.map((t) => [t.type, t]));
  const list = h('div');
  const formSlot = h('div');
  const typeSelect = h('select', {id: 'new-type'},
    types.map((t) => h('option', {value: t.type, disabled: !t.available}, t.available ? t.type : `${t.type} (not installed)`)));
  const addButton = h('button', {type: 'button', class: 'primary', onclick: () => {
    const type = byType.get(typeSelect.value);
    fill(formSlot, sourceForm(type, {
      onSubmit: async (body) => {
        const created = await post('/api/v1/datasources', body);
        toast(`Added ${created.name}.`);
        navigate(path`/sources/${created.id}`);
      },
      onCancel: () => fill(formSlot),
    }));
    formSlot.querySelector('input')?.focus();
  }}, 'Add a source');
  fill(main, h('h1', {}, 'Sources'),
    h('div', {class: 'row'}, h('label', {for: 'new-type'}, 'Type'), typeSelect, addButton),
    formSlot, list);

  let cursor = null;
  const rows = h('tbody');
  const more = h('button', {type: 'button', onclick: () => load()}, 'Load more');
  const table = h('table', {class: 'grid'},
    h('thead', {}, h('tr', {}, ['Name', 'Type', 'Access', 'Tags', 'Status', 'Actions'].map((c) => h('th', {scope: 'col'}, c)))),
    rows);
  fill(list, h('div', {class: 'table-wrap'}, table), more);

  function row(source) {
    const out = h('div', {class: 'small'});
    const type = byType.get(source.type);
    const tr = h('tr', {},
      h('td', {}, h('a', {href: path`/sources/${source.id}`, 'data-nav': true}, source.name),
        source.description ? h('div', {class: 'muted small'}, source.description) : null),
      h('td', {}, source.type),
      h('td', {}, source.read_only ? 'read-only' : 'read-write'),
      h('td', {}, source.tags.join(', ')),
      h('td', {}, out),
      h('td', {}, h('div', {class: 'row'},
        h('button', {type: 'button', onclick: () => testButton(source, out)}, 'Test'),
        type && type.sql ? h('a', {class: 'button', href: path`/sources/${source.id}/sql`, 'data-nav': true}, 'SQL') : null,
        type ? h('button', {type: 'button', onclick: () => {
          fill(formSlot, sourceForm(type, {source, onSubmit: async (body) => {
            await patch(path`/api/v1/datasources/${source.id}`, body);
            toast(`Saved ${body.name}.`);
            navigate('/sources', {replace: true});
          }, onCancel: () => fill(formSlot)}));
          formSlot.querySelector('input')?.focus();
        }}, 'Edit') : null,
        h('button', {type: 'button', class: 'danger', onclick: async () => {
          if (!confirm(`Remove the source “${source.name}”? Its files stay where they are.`)) return;
          try {
            await del(path`/api/v1/datasources/${source.id}`);
            tr.remove();
            toast(`Removed ${source.name}.`);
          } catch (error) { fill(out, errorBox(error)); }
        }}, 'Remove'))));
    return tr;
  }

  async function load() {
    const page = await get('/api/v1/datasources', {limit: 50, cursor}, {signal});
    for (const source of page.items) rows.append(row(source));
    cursor = page.next_cursor;
    more.hidden = !cursor;
    if (!rows.children.length) rows.append(h('tr', {}, h('td', {colspan: '6', class: 'muted'}, 'No sources yet: add one above.')));
  }
  await load();
}
