// /settings: who is signed in, and their own API keys (create shows a key once; revoke).

import {del, get, me, post} from '../api.js';
import {errorBox, fill, formatTime, h, path} from '../dom.js';

export async function settingsView({main, signal}) {
  const rows = h('tbody');
  const shown = h('div', {'aria-live': 'polite'});
  const name = h('input', {id: 'key-name', required: true, maxlength: '200', placeholder: 'e.g. laptop'});
  async function load() {
    const keys = (await get('/api/v1/keys', {}, {signal})).items;
    fill(rows, keys.map((key) => h('tr', {},
      h('td', {}, key.name), h('td', {}, h('code', {}, key.id)), h('td', {}, formatTime(key.created_at)),
      h('td', {}, key.revoked_at ? `revoked ${formatTime(key.revoked_at)}` : 'active'),
      h('td', {}, key.revoked_at ? null : h('button', {type: 'button', class: 'danger', onclick: async () => {
        if (!confirm(`Revoke the key “${key.name}”? Programs using it stop working.`)) return;
        try { await del(path`/api/v1/keys/${key.id}`); await load(); } catch (error) { fill(shown, errorBox(error)); }
      }}, 'Revoke')))));
    if (!keys.length) rows.append(h('tr', {}, h('td', {colspan: '5', class: 'muted'}, 'No keys.')));
  }
  const form = h('form', {class: 'row', 'aria-label': 'New API key', onsubmit: async (event) => {
    event.preventDefault();
    try {
      const created = await post('/api/v1/keys', {name: name.value.trim()});
      name.value = '';
      fill(shown, h('div', {class: 'card stack'},
        h('p', {}, 'Your new key. Copy it now: it is not shown again.'),
        h('pre', {}, h('code', {}, created.key))));
      await load();
    } catch (error) { fill(shown, errorBox(error)); }
  }}, h('label', {for: 'key-name'}, 'Name'), name, h('button', {type: 'submit', class: 'primary'}, 'Create an API key'));
  fill(main, h('h1', {}, 'Settings'),
    h('section', {class: 'card'}, h('h2', {}, 'You'),
      h('p', {}, `Signed in as ${me.name}. Owner ${me.owner}: you see what this owner's API keys see.`)),
    h('section', {class: 'card stack'}, h('h2', {}, 'API keys'),
      h('p', {class: 'muted'}, 'For programs: send Authorization: Bearer <key>.'), form, shown,
      h('div', {class: 'table-wrap'}, h('table', {class: 'grid'},
        h('thead', {}, h('tr', {}, ['Name', 'Id', 'Created', 'State', ''].map((c) => h('th', {scope: 'col'}, c)))), rows))));
  await load();
}
