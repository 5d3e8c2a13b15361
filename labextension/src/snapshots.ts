/**
 * This server's snapshots: the one it was restored from (GET cloudhop/api/restore) and
 * those its moves took (in GET cloudhop/api/info's migrations).
 */
import { api, APIError, IInfo, IRestoreReport } from './api';
import { fill, h } from './dom';

const FRESH = 'This server started empty, not from a snapshot.';

export class SnapshotSection {
  readonly node = h('section', { class: 'ch-section ch-snapshots' });

  constructor() {
    this.node.append(h('h3', {}, 'Snapshots'), this._restored, this._taken);
  }

  /** Read the restore report; `restored` false (a fresh server) says so without asking. */
  async refresh(restored = true): Promise<void> {
    if (!restored) {
      fill(this._restored, h('p', { class: 'ch-note' }, FRESH));
      return;
    }
    let report: IRestoreReport;
    try {
      report = await api.restore();
    } catch (error) {
      const fresh = error instanceof APIError && error.status === 404;
      fill(this._restored, h('p', { class: 'ch-note' }, fresh ? FRESH : (error as Error).message));
      return;
    }
    const files = Object.keys(report.files || {}).length;
    const kernels = Object.keys(report.kernels || {}).length;
    fill(
      this._restored,
      h('p', { class: 'ch-restored' }, `Restored from snapshot ${report.snapshot}: ${report.state}, ${files} file(s), ${kernels} kernel(s)`, report.error ? ` (${report.error})` : null)
    );
  }

  showMoves(info: IInfo): void {
    const taken = info.migrations.filter(m => m.snapshot);
    fill(
      this._taken,
      taken.length
        ? h('ul', {}, taken.map(m => h('li', {}, `${m.snapshot}: taken to move to ${m.target_server ?? '?'} (${m.state})`)))
        : null
    );
  }

  private _restored = h('div', {}, h('p', { class: 'ch-note' }, 'reading…'));
  private _taken = h('div');
}
