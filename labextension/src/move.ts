/**
 * Moving this server: the Move dialog (the server's targets, cheapest first, with their
 * price and what a move leaves out), the move's progress by phase, the question a move
 * awaiting the user's accept asks, and the browser following to the new server when the
 * move is done, as `cloudhop.panel()` does in a notebook.
 */
import { Dialog, showDialog } from '@jupyterlab/apputils';
import { URLExt } from '@jupyterlab/coreutils';
import { Widget } from '@lumino/widgets';

import { api, IMigration, IOffers, ISkipped, ITarget } from './api';
import { fill, h } from './dom';
import { bytes } from './format';

const FINAL = ['done', 'failed'];
const WAITING = 'awaiting-accept';
/** The phases of a move (extensions/migrate.py); `awaiting-accept` shows when a move waits there. */
const PHASES = ['snapshotting', 'launching', 'restoring', 'verifying', 'done'];
/** How many left-out paths the question lists before "and N more". */
const SHOWN = 10;

/** The dialog's body: one radio per target and what stays behind. */
class TargetPicker extends Widget {
  constructor(offers: IOffers) {
    super();
    this.addClass('ch-move-picker');
    const list = h('div', { class: 'ch-targets', role: 'radiogroup' });
    offers.targets.forEach((t, i) => {
      const radio = h('input', { type: 'radio', name: 'ch-target', value: String(i), checked: i === 0 });
      list.append(h('label', { class: 'ch-target' }, radio, t.label));
    });
    const left = offers.left_out;
    this.node.append(
      offers.targets.length
        ? h('p', {}, 'Cheapest first. Your files and the variables of running kernels move; this server stops once the new one has them.')
        : h('p', {}, 'There is nowhere to move: the hub offers you no other place (an admin decides which providers and regions your group may use).'),
      list,
      h(
        'p',
        { class: 'ch-left-out' },
        `Left behind: ${left.patterns.length ? `paths matching ${left.patterns.join(', ')}, ` : ''}files over ${bytes(left.max_file_bytes)}, ` +
          'devices, FIFOs and sockets, and links leading out of your workspace. If anything of yours is left out, ' +
          'this server keeps running until you accept.'
      )
    );
    this._targets = offers.targets;
  }

  getValue(): ITarget | null {
    const checked = this.node.querySelector<HTMLInputElement>('input[name="ch-target"]:checked');
    return checked ? this._targets[Number(checked.value)] : null;
  }

  private _targets: ITarget[];
}

/** The user's paths a move left out (not caches its tool rebuilds, not variables). */
function leftOut(m: IMigration): ISkipped[] {
  return (m.skipped || []).filter(s => s.kind !== undefined && !s.cache);
}

function seconds(from: number | undefined, to: number | undefined): string {
  return from !== undefined && to !== undefined ? ` ${Math.max(0, to - from).toFixed(0)} s` : '';
}

/**
 * The Move part of the sidebar. `saveAll()` saves the documents open in the browser (a
 * move takes the files as they are on disk), `documentPath()` names the notebook to
 * reopen on the target (the move keeps paths and sessions), `navigate(url)` sends the
 * browser there.
 */
export class MoveSection {
  readonly node = h('section', { class: 'ch-section ch-move' });

  constructor(
    private readonly saveAll: () => Promise<unknown>,
    private readonly documentPath: () => string | null,
    private readonly navigate: (url: string) => void = url => window.location.assign(url)
  ) {
    this._button.addEventListener('click', () => void this.openDialog());
    this.node.append(h('h3', {}, 'Move this server'), this._button, this._status);
  }

  /** Follow a move this server already runs (one started elsewhere, or before a reload). */
  resume(migrations: IMigration[]): void {
    const running = migrations.find(m => !FINAL.includes(m.state));
    if (running && this._following !== running.id) {
      this.follow(running);
    }
  }

  async openDialog(): Promise<void> {
    let offers: IOffers;
    try {
      offers = await api.offers();
    } catch (error) {
      fill(this._status, h('p', { class: 'ch-error' }, `No targets: ${(error as Error).message}`));
      return;
    }
    const result = await showDialog({
      title: 'Move this server',
      body: new TargetPicker(offers),
      buttons: offers.targets.length
        ? [Dialog.cancelButton(), Dialog.okButton({ label: 'Move', className: 'ch-move-confirm' })]
        : [Dialog.cancelButton({ label: 'Close' })],
      focusNodeSelector: 'input[name="ch-target"]:checked'
    });
    const target = result.value as ITarget | null;
    if (!result.button.accept || !target) {
      return;
    }
    this._button.disabled = true;
    try {
      await this.saveAll();
    } catch (error) {
      this._button.disabled = false;
      fill(this._status, h('p', { class: 'ch-error' }, `Not moved: saving the open documents failed (${(error as Error).message})`));
      return;
    }
    try {
      this.follow(await api.move(target.options));
    } catch (error) {
      this._button.disabled = false;
      fill(this._status, h('p', { class: 'ch-error' }, (error as Error).message));
    }
  }

  /**
   * Show `m` and poll it every second until it ends or waits for the user; when it is
   * done, go to the target.
   */
  follow(m: IMigration): void {
    this._following = m.id;
    this._button.disabled = true;
    this.render(m);
    const tick = async () => {
      try {
        m = await api.migration(m.id);
      } catch (error) {
        this.render({ ...m, state: 'failed', error: `lost contact with this server: ${(error as Error).message}` });
        return;
      }
      this.render(m);
      if (m.state === 'done' && m.target_url) {
        this.navigate(this.targetPage(m.target_url));
      } else if (m.state === 'failed') {
        this._button.disabled = false;
        this._following = null;
      } else if (m.state !== WAITING) {
        window.setTimeout(tick, 1000);
      }
    };
    this._tick = tick;
    if (m.state !== WAITING) {
      window.setTimeout(tick, 1000);
    }
  }

  /** The target's JupyterLab, with the document open here reopened there. */
  targetPage(targetUrl: string): string {
    const path = this.documentPath();
    return path ? URLExt.join(targetUrl, 'lab', 'tree', URLExt.encodeParts(path)) : URLExt.join(targetUrl, 'lab');
  }

  /** The user accepts what the move left out: this server stops, the browser follows. */
  private async accept(m: IMigration, button: HTMLButtonElement): Promise<void> {
    button.disabled = true;
    try {
      const accepted = await api.accept(m.id);
      this.render(accepted);
      if (accepted.state === 'done' && accepted.target_url) {
        this.navigate(this.targetPage(accepted.target_url));
      }
    } catch (error) {
      button.disabled = false;
      this._question.append(h('p', { class: 'ch-error' }, (error as Error).message));
      void this._tick?.();
    }
  }

  private question(m: IMigration): HTMLElement {
    const mine = leftOut(m);
    const lines = mine
      .slice(0, SHOWN)
      .map(s => h('li', {}, h('code', {}, s.path ?? '?'), ` (${s.size !== null && s.size !== undefined ? bytes(s.size) : 'size unknown'}: ${s.reason})`));
    if (mine.length > SHOWN) {
      lines.push(h('li', {}, `and ${mine.length - SHOWN} more`));
    }
    const accept = h('button', { class: 'jp-mod-styled jp-mod-warn ch-accept' }, 'Accept and stop the source');
    accept.addEventListener('click', () => void this.accept(m, accept));
    fill(
      this._question,
      h('p', {}, h('b', {}, `${m.left_out || 'Some files'} ${mine.length === 1 ? 'was' : 'were'} left out of the move:`)),
      h('ul', { class: 'ch-left-out-list' }, lines),
      h('p', {}, 'The new server runs. Stop this server anyway? What was left out goes with it unless you copy it first (its terminal and file browser still work).'),
      h('div', { class: 'ch-accept-row' }, accept, m.target_url ? h('a', { href: this.targetPage(m.target_url), target: '_blank', rel: 'noopener' }, 'Open the new server') : null)
    );
    return this._question;
  }

  private render(m: IMigration): void {
    const timeline = m.timeline || {};
    const phases = [...PHASES];
    if (m.state === WAITING || timeline[WAITING] !== undefined) {
      phases.splice(phases.indexOf('done'), 0, WAITING);
    }
    const failed = m.state === 'failed';
    // a failed move failed in the last phase it began
    const at = failed ? phases.reduce((last, p, i) => (timeline[p] !== undefined ? i : last), -1) : phases.indexOf(m.state);
    const steps = h(
      'ol',
      { class: 'ch-phases' },
      phases.map((p, i) => {
        const state = m.state === 'done' || i < at ? 'done' : i === at ? (failed ? 'failed' : 'current') : 'pending';
        const end = timeline[phases[i + 1]] ?? (state === 'current' ? Date.now() / 1000 : state === 'failed' ? m.finished ?? undefined : undefined);
        return h('li', { class: `ch-phase ch-phase-${state}`, 'data-phase': p }, p, p === 'done' ? '' : seconds(timeline[p], end));
      })
    );
    const total = m.bytes_total || 0;
    const sent = m.bytes_sent || 0;
    const progress = total
      ? h(
          'div',
          { class: 'ch-bytes' },
          h('progress', { max: String(total), value: String(Math.min(sent, total)) }),
          // what is sent counts the snapshot's manifest too, which the total (the files) does not
          sent <= total ? ` ${bytes(sent)} of ${bytes(total)} sent` : ` ${bytes(sent)} sent`
        )
      : null;
    const variables = (m.skipped || []).filter(s => s.name !== undefined);
    let outcome: HTMLElement | null = null;
    if (failed) {
      outcome = h('p', { class: 'ch-error' }, `The move failed: ${m.error}. This server is unchanged.`);
    } else if (m.state === WAITING) {
      outcome = this.question(m);
    } else if (m.state === 'done' && m.target_url) {
      outcome = h('p', { class: 'ch-done' }, 'Done. Opening the new server… ', h('a', { href: this.targetPage(m.target_url), target: '_top' }, 'open it'));
    }
    fill(
      this._status,
      h('p', { class: 'ch-move-state' }, `Move ${m.id}: ${m.state}`),
      steps,
      progress,
      variables.length
        ? h('details', { class: 'ch-skipped' }, h('summary', {}, `${variables.length} variable(s) not moved`), h('ul', {}, variables.map(v => h('li', {}, `${v.path}: ${v.name} (${v.reason})`))))
        : null,
      outcome
    );
  }

  private _button = h('button', { class: 'jp-mod-styled jp-mod-accept ch-move-open' }, 'Move this server…');
  private _status = h('div', { class: 'ch-move-status' });
  private _question = h('div', { class: 'ch-question' });
  private _following: string | null = null;
  private _tick: (() => Promise<void>) | null = null;
}
