/**
 * The warning before this server is culled: a JupyterLab notification with a "Keep
 * running" button. The server extension (extensions/activity.py) learns the hub's plan
 * with each activity report; this polls it (a poll that does not count as activity) and
 * shows the hub's message. "Keep running" reports activity at once, which puts an idle
 * cull off; a server at its max_hours limit gets the warning without the button.
 *
 * Every request through the hub's proxy counts as activity on the hub, so the poll
 * stands by while the tab is hidden (as JupyterLab's own polls do): a forgotten tab in
 * the background must not keep an idle server alive.
 */
import { Notification } from '@jupyterlab/apputils';

import { request } from './api';

/** GET|POST cloudhop/api/activity: the cull the hub plans, if any. */
export interface ICull {
  action: 'warn' | 'cull';
  reason: 'idle' | 'max_hours';
  message: string;
  extendable: boolean;
  cull_at: string | null;
}

export interface IActivity {
  cull: ICull | null;
  reported: string | null;
  error: string | null;
  interval: number;
}

const activity = (keep = false) =>
  request<IActivity>('cloudhop/api/activity', keep ? { method: 'POST' } : {});

/** Poll the plan every `seconds` and keep one notification in line with it. */
export function startCullWarnings(seconds = 15): void {
  let shown: string | null = null;
  let shownFor = '';

  const clear = () => {
    if (shown) {
      Notification.dismiss(shown);
      shown = null;
      shownFor = '';
    }
  };

  const show = (cull: ICull) => {
    // the same warning with a newer time: updated in place, not shown anew
    const key = `${cull.reason} ${cull.extendable}`;
    if (shown && key === shownFor && Notification.update({ id: shown, message: cull.message, type: 'warning' })) {
      return;
    }
    clear();
    const actions = cull.extendable
      ? [
          {
            label: 'Keep running',
            caption: 'Count this as activity, so the server is not stopped for being idle',
            callback: () => void keep()
          }
        ]
      : [];
    shown = Notification.warning(cull.message, { autoClose: false, actions });
    shownFor = key;
  };

  const apply = (state: IActivity) => (state.cull ? show(state.cull) : clear());

  const keep = async () => {
    try {
      apply(await activity(true));
    } catch (error) {
      Notification.error(`Could not keep the server running: ${(error as Error).message}`, { autoClose: 8000 });
    }
  };

  const poll = async () => {
    if (document.visibilityState === 'hidden') {
      return;
    }
    try {
      apply(await activity());
    } catch {
      // a server without the Cloudhop extension, or one going away: nothing to warn of
    }
  };

  void poll();
  window.setInterval(() => void poll(), seconds * 1000);
  document.addEventListener('visibilitychange', () => void poll());
}
