// SQL highlighting for the editor: a <pre> of coloured spans under a transparent
// <textarea> (the textarea stays the real, accessible editor; the <pre> is aria-hidden).
// Tokens become text in spans: nothing typed is ever parsed as markup.

import {fill, h} from './dom.js';

const KEYWORDS = new Set(`select from where group by order having limit offset join left right
inner outer full cross on using as and or not in is null like ilike between case when then else
end distinct union all intersect except with recursive values asc desc nulls first last over
partition window filter exists any some cast true false interval lateral fetch next rows only
count sum avg min max coalesce nullif date timestamp extract`.split(/\s+/));

const TOKEN = new RegExp([
  String.raw`(--[^\n]*|/\*[\s\S]*?(?:\*/|$))`,       // 1 comment
  String.raw`('(?:[^']|'')*'?)`,                      // 2 string
  String.raw`(\$(\w*)\$[\s\S]*?(?:\$\4\$|$))`,        // 3 dollar-quoted (4: its tag)
  String.raw`("(?:[^"]|"")*"?)`,                      // 5 quoted identifier
  String.raw`(\b\d+(?:\.\d+)?(?:[eE][+-]?\d+)?\b)`,   // 6 number
  String.raw`([A-Za-z_][A-Za-z0-9_$]*)`,              // 7 word
  String.raw`(\$\d+)`,                                // 8 parameter
].join('|'), 'gy');

export function tokens(sql) {
  const out = [];
  let last = 0;
  TOKEN.lastIndex = 0;
  while (TOKEN.lastIndex < sql.length) {
    const start = TOKEN.lastIndex;
    const match = TOKEN.exec(sql);
    if (!match) {  // anything else: one character of plain text
      TOKEN.lastIndex = start + 1;
      continue;
    }
    if (start > last) out.push(['plain', sql.slice(last, start)]);
    const [text] = match;
    let kind = 'plain';
    if (match[1]) kind = 'comment';
    else if (match[2] || match[3]) kind = 'string';
    else if (match[5]) kind = 'ident';
    else if (match[6] || match[8]) kind = 'number';
    else if (match[7] && KEYWORDS.has(text.toLowerCase())) kind = 'keyword';
    out.push([kind, text]);
    last = TOKEN.lastIndex;
  }
  if (last < sql.length) out.push(['plain', sql.slice(last)]);
  return out;
}

/** Wrap a textarea in a highlighting editor; returns the wrapper element. */
export function highlightEditor(textarea) {
  const pre = h('pre', {class: 'sql-highlight', 'aria-hidden': 'true'});
  const wrap = h('div', {class: 'sql-editor'}, pre, textarea);
  textarea.classList.add('sql-input');
  const paint = () => {
    fill(pre, tokens(textarea.value).map(([kind, text]) =>
      kind === 'plain' ? text : h('span', {class: `tok-${kind}`}, text)), '\n');
    pre.scrollTop = textarea.scrollTop;
    pre.scrollLeft = textarea.scrollLeft;
  };
  textarea.addEventListener('input', paint);
  textarea.addEventListener('scroll', () => {
    pre.scrollTop = textarea.scrollTop;
    pre.scrollLeft = textarea.scrollLeft;
  });
  paint();
  return wrap;
}
