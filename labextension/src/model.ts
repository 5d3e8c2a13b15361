/**
 * The server's info (GET cloudhop/api/info), polled for the status bar and the sidebar
 * alike, so both show the same thing and the server is asked once.
 */
import { ISignal, Signal } from '@lumino/signaling';

import { api, IInfo } from './api';

export class InfoModel {
  info: IInfo | null = null;
  error: string | null = null;

  constructor(private readonly interval = 15000) {}

  get changed(): ISignal<this, void> {
    return this._changed;
  }

  /** Read the info now and then every `interval` ms. */
  start(): void {
    if (this._timer === null) {
      void this.refresh();
      this._timer = window.setInterval(() => void this.refresh(), this.interval);
    }
  }

  async refresh(): Promise<void> {
    try {
      this.info = await api.info();
      this.error = null;
    } catch (error) {
      this.error = (error as Error).message;
    }
    this._changed.emit();
  }

  private _timer: number | null = null;
  private _changed = new Signal<this, void>(this);
}
