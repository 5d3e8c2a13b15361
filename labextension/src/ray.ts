/** The Ray cluster beside this server: nodes, resize and the dashboard (GET/POST cloudhop/ray). */
import { api, APIError, IRay } from './api';
import { fill, h } from './dom';

const NONE = 'No Ray cluster on this server: start a server with Ray workers from the spawn form.';

export class RaySection {
  readonly node = h('section', { class: 'ch-section ch-ray' });

  constructor() {
    this.node.append(h('h3', {}, 'Ray cluster'), this._body, this._message);
  }

  /** Read the cluster; `present` false (this server has none) says so without asking. */
  async refresh(present = true): Promise<void> {
    if (!present) {
      fill(this._body, h('p', { class: 'ch-note' }, NONE));
      return;
    }
    let ray: IRay;
    try {
      ray = await api.ray();
    } catch (error) {
      const none = error instanceof APIError && error.status === 404;
      fill(
        this._body,
        h('p', { class: 'ch-note' }, none ? NONE : `Ray status unavailable: ${(error as Error).message}`)
      );
      return;
    }
    const workers = ray.hub?.workers || [];
    const count = h('input', { type: 'number', min: '0', value: String(ray.hub?.requested ?? workers.length), class: 'ch-ray-count' });
    const resize = h('button', { class: 'jp-mod-styled ch-ray-resize' }, 'Resize');
    resize.addEventListener('click', () => void this.resize(Number(count.value), resize));
    fill(
      this._body,
      h('p', {}, `${ray.alive} node(s) alive`, ray.address ? ` · head ${ray.address}` : null, ' · ', h('a', { href: ray.dashboard_url, target: '_blank', rel: 'noopener' }, 'Ray dashboard')),
      ray.nodes.length
        ? h(
            'table',
            { class: 'ch-ray-nodes' },
            h('tr', {}, h('th', {}, 'node'), h('th', {}, 'state'), h('th', {}, 'CPU'), h('th', {}, 'GPU')),
            ray.nodes.map(n =>
              h('tr', {}, h('td', {}, `${n.head ? 'head ' : ''}${n.ip}`), h('td', {}, n.state), h('td', {}, n.resources.CPU ?? 0), h('td', {}, n.resources.GPU ?? 0))
            )
          )
        : h('p', { class: 'ch-note' }, 'Ray lists no nodes yet.'),
      workers.length
        ? h('ul', { class: 'ch-ray-workers' }, workers.map(w => h('li', {}, `worker ${w.index}: ${w.state} on ${w.provider}/${w.region}${w.detail ? ` (${w.detail})` : ''}`)))
        : null,
      h('div', { class: 'ch-ray-resize-row' }, h('label', {}, 'Workers ', count), resize),
      ray.errors.length ? h('p', { class: 'ch-note' }, ray.errors.join('; ')) : null
    );
  }

  private async resize(workers: number, button: HTMLButtonElement): Promise<void> {
    button.disabled = true;
    fill(this._message, h('p', { class: 'ch-note' }, `Resizing to ${workers} worker(s)…`));
    try {
      await api.resizeRay(workers);
      fill(this._message);
    } catch (error) {
      fill(this._message, h('p', { class: 'ch-error' }, (error as Error).message));
    }
    button.disabled = false;
    await this.refresh();
  }

  private _body = h('div', {}, h('p', { class: 'ch-note' }, 'reading…'));
  private _message = h('div');
}
