/**
 * What the user typed and has not saved yet is saved before this server is snapshotted
 * (a stop, a spot rescue, a move: extensions/unsaved.py). This page tells the server which
 * of its documents have unsaved changes (`POST cloudhop/api/unsaved`, at each change and
 * every minute while any remain), and saves them when the server asks: an event on
 * jupyter_server's event bus, which JupyterLab already listens to.
 *
 * Looking for changes is local (every few seconds); only a change is sent.
 */
import { JupyterFrontEnd } from '@jupyterlab/application';

import { request } from './api';

/** the event the server sends before a snapshot (extensions/unsaved.py, SCHEMA_ID) */
const SAVE_REQUEST = 'urn:cloudhop:events:save-request';
/** while documents stay unsaved, the page says so again this often (the server forgets
 * a page after 150 s, so a closed tab is not waited for) */
const REPEAT_MS = 60_000;

interface IContextLike {
  path: string;
  model: { dirty: boolean };
  save: () => Promise<void>;
}

/** The document contexts of the main area's widgets (each once). */
function openContexts(app: JupyterFrontEnd): IContextLike[] {
  const seen = new Set<IContextLike>();
  for (const widget of app.shell.widgets('main')) {
    const context = (widget as unknown as { context?: IContextLike }).context;
    if (context && context.model && typeof context.save === 'function') {
      seen.add(context);
    }
  }
  return [...seen];
}

function pageId(): string {
  const bytes = new Uint8Array(12);
  crypto.getRandomValues(bytes);
  return Array.from(bytes, b => b.toString(16).padStart(2, '0')).join('');
}

/** Report this page's unsaved documents, and save them when the server asks. */
export function startUnsavedReports(app: JupyterFrontEnd, seconds = 3): void {
  const client = pageId();
  let sent = '';
  let sentAt = 0;

  const report = async (force = false) => {
    const paths = openContexts(app)
      .filter(c => c.model.dirty)
      .map(c => c.path)
      .sort();
    const key = paths.join('\n');
    const repeat = paths.length > 0 && Date.now() - sentAt > REPEAT_MS;
    if (!force && key === sent && !repeat) {
      return;
    }
    try {
      await request('cloudhop/api/unsaved', { method: 'POST', body: JSON.stringify({ client, paths }) });
      sent = key;
      sentAt = Date.now();
    } catch (error) {
      console.warn('Cloudhop: could not report unsaved documents', error);
    }
  };

  const saveAll = async () => {
    for (const context of openContexts(app)) {
      if (context.model.dirty) {
        try {
          await context.save();
        } catch (error) {
          console.warn(`Cloudhop: could not save ${context.path} before a snapshot`, error);
        }
      }
    }
    await report(true);
  };

  window.setInterval(() => void report(), seconds * 1000);
  app.serviceManager.events.stream.connect((_, event) => {
    if (event.schema_id === SAVE_REQUEST) {
      void saveAll();
    }
  });
}
