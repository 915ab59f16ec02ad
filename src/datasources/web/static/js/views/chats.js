// / and /chats/{id}: the chat list, one chat's history, the composer (replies streamed
// as server-sent events) and the workspace's files with their provenance.

import {del, download, events, get, patch, post} from '../api.js';
import {errorBox, fill, formatBytes, h, path, toast} from '../dom.js';
import {attachCompletion} from '../complete.js';
import {codeBlock, markdown, renderPart, workspaceFileUrl} from '../render.js';
import {connectorTypes} from './sources.js';

const OFFLINE_HELP = 'Reference data with @source:path or @source:schema.table. Without a model ' +
  'configured: ```python blocks run in the chat\'s sandbox, a message starting with /sql queries a ' +
  'referenced database, and any other message with references gets a brief of each.';

async function chatList(currentId, navigate, signal) {
  const list = h('ul', {class: 'chat-list'});
  const page = await get('/api/v1/chats', {limit: 200}, {signal});
  const items = [...page.items].reverse();  // newest first
  for (const chat of items) {
    const title = chat.title || 'Untitled chat';
    list.append(h('li', {},
      h('a', {href: path`/chats/${chat.id}`, 'data-nav': true,
              'aria-current': chat.id === currentId ? 'page' : null}, title),
      h('button', {type: 'button', class: 'danger small', 'aria-label': `Delete chat ${title}`, onclick: async () => {
        if (!confirm(`Delete the chat “${title}”, its files and its session?`)) return;
        try {
          await del(path`/api/v1/chats/${chat.id}`);
          toast('Chat deleted.');
          navigate('/', {replace: chat.id === currentId});
        } catch (error) { toast(error.detail || String(error)); }
      }}, '✕')));
  }
  if (!items.length) list.append(h('li', {class: 'muted'}, 'No chats yet.'));
  const title = h('input', {id: 'new-chat-title', maxlength: '200', placeholder: 'Title (optional)'});
  const form = h('form', {class: 'stack', 'aria-label': 'New chat', onsubmit: async (event) => {
    event.preventDefault();
    try {
      const chat = await post('/api/v1/chats', {title: title.value.trim()});
      navigate(path`/chats/${chat.id}`);
    } catch (error) { form.append(errorBox(error)); }
  }}, h('label', {for: 'new-chat-title'}, 'New chat'), title, h('button', {type: 'submit', class: 'primary'}, 'Start a chat'));
  return h('nav', {'aria-label': 'Chats', class: 'stack'}, form, h('h2', {}, 'Chats'), list);
}

export async function chatsView({main, signal, navigate}) {
  const list = await chatList(null, navigate, signal);
  fill(main, h('div', {class: 'layout-chat'}, list,
    h('section', {}, h('h1', {}, 'Chats'),
      h('p', {}, 'Start a chat on the left, or pick one. Each chat has its own workspace and Python session.'),
      h('p', {class: 'muted'}, OFFLINE_HELP)),
    h('div')));
}

function provenance(file) {
  const bits = [];
  if (file.source_id) bits.push(`from ${file.source_id}`);
  if (file.remote) bits.push(file.remote);
  if (file.sha256) bits.push(`sha256 ${String(file.sha256).slice(0, 12)}…`);
  return bits.join(' · ');
}

async function filesPanel(chatId, panel) {
  try {
    const files = (await get(path`/api/v1/chats/${chatId}/files`)).items;
    const list = h('ul', {class: 'files'});
    for (const file of files) {
      const where = String(file.path);
      list.append(h('li', {},
        h('button', {type: 'button', onclick: () => Promise.resolve()
          .then(() => download(workspaceFileUrl(chatId, where), {}, where.split('/').pop()))
          .catch((e) => toast(e.detail || String(e)))}, where),
        h('div', {class: 'muted small'}, [formatBytes(file.bytes), provenance(file)].filter(Boolean).join(' · '))));
    }
    if (!files.length) list.append(h('li', {class: 'muted'}, 'No files yet.'));
    fill(panel, h('h2', {}, 'Workspace'), list);
  } catch (error) {
    fill(panel, h('h2', {}, 'Workspace'), errorBox(error));
  }
}

// An 'execution' is code the user ran (Run again, or POST …/execute): its code, then output.
const ROLE_LABELS = {user: 'You', assistant: 'Reply', execution: 'Code run'};

async function messageElement(chatId, message) {
  const body = message.role === 'user'
    ? h('div', {class: 'part-text'}, markdown(message.content))
    : h('div', {}, ...(await Promise.all(message.parts.map((p) => renderPart(chatId, p)))));
  return h('article', {class: `msg ${message.role}`},
    h('div', {class: 'role'}, ROLE_LABELS[message.role] || 'Reply'), body);
}

export async function chatView({main, params, signal, navigate}) {
  const [id] = params;
  const chat = await get(path`/api/v1/chats/${id}`, {}, {signal});
  const list = await chatList(chat.id, navigate, signal);
  const messages = h('div', {class: 'messages', role: 'log', 'aria-label': 'Messages'});
  const files = h('aside', {'aria-label': 'Workspace files'});
  const input = h('textarea', {id: 'composer', rows: '4', 'aria-describedby': 'composer-help',
    placeholder: 'Ask about @source:path … (type @ for suggestions; Ctrl+Enter sends)'});
  const send = h('button', {type: 'submit', class: 'primary'}, 'Send');
  const types = await connectorTypes();
  const completions = attachCompletion(input, {sqlTypes: new Set(types.filter((t) => t.sql).map((t) => t.type))});
  const composer = h('form', {class: 'composer stack', 'aria-label': 'Message'},
    h('label', {for: 'composer'}, 'Message'), h('div', {class: 'composer-box'}, input, completions),
    h('p', {class: 'field-help', id: 'composer-help'}, OFFLINE_HELP),
    h('div', {class: 'row'}, send));
  const heading = h('h1', {}, chat.title || 'Untitled chat');
  const titleRow = h('div', {class: 'row spread'}, heading,
    h('button', {type: 'button', onclick: () => renameForm()}, 'Rename'));
  function renameForm() {
    const field = h('input', {id: 'chat-title', maxlength: '200', value: chat.title});
    const form = h('form', {class: 'row', 'aria-label': 'Rename the chat', onsubmit: async (event) => {
      event.preventDefault();
      try {
        const renamed = await patch(path`/api/v1/chats/${chat.id}`, {title: field.value});
        chat.title = renamed.title;
        heading.textContent = renamed.title || 'Untitled chat';
        document.title = `${heading.textContent} — datasources`;
        form.replaceWith(titleRow);
        const current = list.querySelector('a[aria-current=page]');
        if (current) current.textContent = heading.textContent;
      } catch (error) { form.append(errorBox(error)); }
    }}, h('label', {for: 'chat-title'}, 'Title'), field, h('button', {type: 'submit', class: 'primary'}, 'Save'),
    h('button', {type: 'button', onclick: () => form.replaceWith(titleRow)}, 'Cancel'));
    titleRow.replaceWith(form);
    field.focus();
    field.select();
  }
  fill(main, h('div', {class: 'layout-chat'}, list,
    h('section', {class: 'stack'}, titleRow, messages, composer), files));

  let cursor = null;
  do {
    const page = await get(path`/api/v1/chats/${chat.id}/messages`, {limit: 200, cursor}, {signal});
    for (const message of page.items) messages.append(await messageElement(chat.id, message));
    cursor = page.next_cursor;
  } while (cursor);
  filesPanel(chat.id, files);

  async function sendMessage() {
    const content = input.value;
    if (!content.trim()) return;
    send.disabled = true;
    messages.append(h('article', {class: 'msg user'}, h('div', {class: 'role'}, 'You'),
      h('div', {class: 'part-text'}, markdown(content))));
    const reply = h('div');
    const status = h('p', {class: 'muted small', 'aria-live': 'polite'}, 'Working…');
    messages.append(h('article', {class: 'msg assistant', 'aria-busy': 'true'},
      h('div', {class: 'role'}, 'Reply'), status, reply));
    let text = null;  // the text part being streamed
    let streamed = '';
    try {
      for await (const {event, data} of events(path`/api/v1/chats/${chat.id}/messages`, {content})) {
        if (event === 'text_delta') {
          streamed += data.text || '';
          if (!text) { text = h('div', {class: 'part-text'}); reply.append(text); }
          fill(text, markdown(streamed));
          continue;
        }
        text = null;
        streamed = '';
        if (event === 'fetch_progress') status.textContent = `Fetching ${data.ref}…`;
        else if (event === 'fetch_done') status.textContent = `Fetched ${data.ref}.`;
        else if (event === 'code') reply.append(codeBlock(String(data.code || ''), chat.id));
        else if (event === 'tool') reply.append(h('p', {class: 'muted small'}, `Tool: ${data.name || ''}`));
        else if (event === 'output' || event === 'display') reply.append(await renderPart(chat.id, data));
        else if (event === 'error') reply.append(errorBox({detail: data.message, code: data.code}));
        else if (event === 'done') status.textContent = 'Done.';
      }
      input.value = '';
    } catch (error) {
      reply.append(errorBox(error));
      status.textContent = 'Failed.';
    } finally {
      reply.parentElement.removeAttribute('aria-busy');
      send.disabled = false;
      filesPanel(chat.id, files);
    }
  }
  composer.addEventListener('submit', (event) => { event.preventDefault(); sendMessage(); });
  input.addEventListener('keydown', (event) => {
    if (event.key === 'Enter' && (event.ctrlKey || event.metaKey)) { event.preventDefault(); sendMessage(); }
  });
  input.focus();
}
