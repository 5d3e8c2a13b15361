/**
 * Cloudhop in JupyterLab: a status bar item (where this server runs and at what price),
 * a sidebar (GPUs, moving the server, Ray, snapshots) and palette commands. Everything
 * comes from this server's Cloudhop REST API, the one `cloudhop.panel()` uses too.
 */
import { ILabShell, JupyterFrontEnd, JupyterFrontEndPlugin } from '@jupyterlab/application';
import { ICommandPalette } from '@jupyterlab/apputils';
import { IStatusBar } from '@jupyterlab/statusbar';

import { startCullWarnings } from './cullwarning';
import { InfoModel } from './model';
import { CloudhopSidebar } from './sidebar';
import { CloudhopStatus } from './status';
import { startUnsavedReports } from './unsaved';

const CATEGORY = 'Cloudhop';
const SHOW = 'cloudhop:show-sidebar';
const MOVE = 'cloudhop:move';

/** The path of the document in the main area (the one to reopen on a move's target). */
function documentPath(app: JupyterFrontEnd): string | null {
  const widget = app.shell.currentWidget as unknown as { context?: { path?: string } } | null;
  return widget?.context?.path || null;
}

const plugin: JupyterFrontEndPlugin<void> = {
  id: '@cloudhop/jupyterlab:plugin',
  description: 'Cloudhop: where this server runs, its GPUs, moving it, its Ray cluster and snapshots.',
  autoStart: true,
  optional: [ICommandPalette, IStatusBar, ILabShell],
  activate: (app: JupyterFrontEnd, palette: ICommandPalette | null, statusBar: IStatusBar | null) => {
    const model = new InfoModel();
    // a move takes the files as they are on disk: first save what is open here
    const saveAll = async () => {
      if (app.commands.hasCommand('docmanager:save-all')) {
        await app.commands.execute('docmanager:save-all');
      }
    };
    const sidebar = new CloudhopSidebar(model, saveAll, () => documentPath(app));
    app.shell.add(sidebar, 'left', { rank: 900 });

    app.commands.addCommand(SHOW, {
      label: 'Cloudhop: Show sidebar',
      caption: 'Where this server runs, its GPUs, moving it, its Ray cluster and snapshots',
      execute: () => app.shell.activateById(sidebar.id)
    });
    app.commands.addCommand(MOVE, {
      label: 'Cloudhop: Move this server…',
      caption: 'Move this server, its files and running kernels, to another provider, region or GPU',
      execute: async () => {
        app.shell.activateById(sidebar.id);
        await sidebar.move.openDialog();
      }
    });
    if (palette) {
      palette.addItem({ command: SHOW, category: CATEGORY });
      palette.addItem({ command: MOVE, category: CATEGORY });
    }
    if (statusBar) {
      const item = new CloudhopStatus(model, () => void app.commands.execute(SHOW));
      statusBar.registerStatusItem('@cloudhop/jupyterlab:status', {
        item,
        align: 'left',
        rank: 0,
        isActive: () => item.active,
        activeStateChanged: model.changed
      });
    }
    model.start();
    startCullWarnings(); // the warning before a cull, with "Keep running"
    // unsaved documents are saved before a stop, a spot rescue or a move takes a snapshot
    startUnsavedReports(app);
  }
};

export default plugin;
