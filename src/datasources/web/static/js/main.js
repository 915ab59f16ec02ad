// The app shell: signs the page in, routes the deep links on the client, and renders
// one view at a time into <main>.

import {loadSession, me, signOut} from './api.js';
import {errorBox, fill, h} from './dom.js';
import {chatsView, chatView} from './views/chats.js';
import {sourcesView} from './views/sources.js';
import {browseView} from './views/browse.js';
import {sqlView} from './views/sql.js';
import {settingsView} from './views/settings.js';

const routes = [
  [/^\/$/, chatsView, 'Chats'],
  [/^\/chats\/([^/]+)$/, chatView, 'Chat'],
  [/^\/sources$/, sourcesView, 'Sources'],
  [/^\/sources\/([^/]+)$/, browseView, 'Browse'],
  [/^\/sources\/([^/]+)\/sql$/, sqlView, 'SQL'],
  [/^\/settings$/, settingsView, 'Settings'],
];

let current = null;  // the AbortController of the view on screen

export function navigate(target, {replace = false} = {}) {
  if (replace) history.replaceState(null, '', target);
  else history.pushState(null, '', target);
  render();
}

function markNav() {
  const section = location.pathname.startsWith('/sources') ? '/sources'
    : location.pathname.startsWith('/settings') ? '/settings' : '/';
  for (const link of document.querySelectorAll('.mainnav a')) {
    if (link.getAttribute('href') === section) link.setAttribute('aria-current', 'page');
    else link.removeAttribute('aria-current');
  }
}

async function render() {
  const main = document.getElementById('main');
  if (current) current.abort();
  current = new AbortController();
  markNav();
  for (const [pattern, view, title] of routes) {
    const match = location.pathname.match(pattern);
    if (!match) continue;
    const params = match.slice(1).map((part) => {
      try { return decodeURIComponent(part); } catch { return part; }
    });
    document.title = `${title} — datasources`;
    fill(main, h('p', {class: 'muted'}, 'Loading…'));
    try {
      await view({main, params, query: new URLSearchParams(location.search),
                  signal: current.signal, navigate});
    } catch (error) {
      if (error && error.name === 'AbortError') return;
      fill(main, h('h1', {}, title), errorBox(error));
    }
    const heading = main.querySelector('h1');
    if (heading && document.activeElement === document.body) {
      heading.setAttribute('tabindex', '-1');
      heading.focus({preventScroll: true});
    }
    return;
  }
  document.title = 'Not found — datasources';
  fill(main, h('h1', {}, 'Not found'), h('p', {}, 'There is no page at this address.'));
}

document.addEventListener('click', (event) => {
  const link = event.target instanceof Element ? event.target.closest('a[data-nav]') : null;
  if (!link || event.defaultPrevented || event.button !== 0 || event.metaKey ||
      event.ctrlKey || event.shiftKey || event.altKey) return;
  const href = link.getAttribute('href');
  if (!href || !href.startsWith('/') || href.startsWith('//')) return;
  event.preventDefault();
  navigate(href);
});

window.addEventListener('popstate', render);

async function start() {
  document.getElementById('sign-out').addEventListener('click', signOut);
  try {
    await loadSession();
  } catch (error) {
    fill(document.getElementById('main'), errorBox(error));
    return;
  }
  const who = document.getElementById('who');
  who.textContent = `${me.name}`;
  who.title = `owner ${me.owner}`;
  await render();
}

start();
