// Building the page. Every string that reaches the DOM here goes through textContent or
// setAttribute on an element made with createElement: no markup is ever parsed from a
// string (the page's Trusted Types policy would throw if anything tried).

const UNSAFE_URL_CHARS = /[\u0000-\u0020\u007f-\u009f\\]/;

/** Whether a URL may go into href/src: a path of this site, a fragment, or a blob: URL. */
export function safeUrl(value) {
  const url = String(value);
  if (UNSAFE_URL_CHARS.test(url)) return false;
  return (url.startsWith('/') && !url.startsWith('//')) || url.startsWith('#') ||
    url.startsWith('blob:' + location.origin + '/');
}

/**
 * h('a', {href: '/x', class: 'c', onclick: fn}, 'text', child) → an element.
 * Strings among the children become text nodes; null/false children are skipped.
 */
export function h(tag, props, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === 'class') el.className = String(value);
    else if (key === 'text') el.textContent = String(value);
    else if (key === 'dataset') Object.assign(el.dataset, value);
    else if (key.startsWith('on')) {
      if (typeof value !== 'function') throw new TypeError('event handlers must be functions');
      el.addEventListener(key.slice(2).toLowerCase(), value);
    } else if (key === 'style' || key === 'srcdoc' || key === 'innerHTML') {
      throw new TypeError(`${key} is not set from strings here`);
    } else if (key === 'href' || key === 'src' || key === 'action' || key === 'formaction') {
      if (!safeUrl(value)) throw new TypeError('refused an unsafe URL');
      el.setAttribute(key, String(value));
    } else if (value === true) el.setAttribute(key, '');
    else el.setAttribute(key, String(value));
  }
  append(el, ...children);
  return el;
}

export function append(parent, ...children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    parent.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return parent;
}

/** Replace an element's children. */
export function fill(parent, ...children) {
  parent.replaceChildren();
  return append(parent, ...children);
}

/** A path of this app with each dynamic segment encoded: path`/sources/${id}/sql`. */
export function path(strings, ...values) {
  let out = strings[0];
  values.forEach((value, i) => { out += encodeURIComponent(String(value)) + strings[i + 1]; });
  return out;
}

export function toast(message) {
  const box = document.getElementById('toast');
  if (!box) return;
  box.textContent = String(message);
  box.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { box.hidden = true; }, 5000);
}

/** An error (an API problem or anything else) as a paragraph of words. */
export function errorBox(error) {
  const text = error && error.detail ? error.detail : String(error && error.message || error);
  const code = error && error.code ? ` (${error.code})` : '';
  return h('p', {class: 'notice error', role: 'alert'}, text + code);
}

export function formatBytes(size) {
  if (size === null || size === undefined) return '';
  let value = Number(size);
  for (const unit of ['B', 'KiB', 'MiB', 'GiB', 'TiB']) {
    if (value < 1024 || unit === 'TiB') {
      return unit === 'B' ? `${value} B` : `${value.toFixed(1)} ${unit}`;
    }
    value /= 1024;
  }
  return String(size);
}

export function formatTime(iso) {
  if (!iso) return '';
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? String(iso) : date.toLocaleString();
}
