"""Run a notebook headless (nbclient) the way JupyterLab would: each execute request carries the
cell's id as ``cellId`` metadata and the kernel gets ``JPY_SESSION_NAME`` (the notebook path), so
the audit log attributes every statement to its cell."""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbclient import NotebookClient


class AttributingNotebookClient(NotebookClient):
    """nbclient sends no cell metadata; this one sends ``{"cellId": <cell id>}`` like JupyterLab."""

    _sdm_cell_id: str | None = None

    async def async_execute_cell(self, cell, cell_index, execution_count=None, store_history=True):
        self._sdm_cell_id = cell.get("id")
        return await super().async_execute_cell(cell, cell_index, execution_count, store_history)

    async def async_start_new_kernel_client(self):
        kc = await super().async_start_new_kernel_client()

        def execute(code, silent=False, store_history=True, user_expressions=None, allow_stdin=None,
                    stop_on_error=True):
            content = dict(code=code, silent=silent, store_history=store_history,
                           user_expressions=user_expressions or {},
                           allow_stdin=kc.allow_stdin if allow_stdin is None else allow_stdin,
                           stop_on_error=stop_on_error)
            metadata = {"cellId": self._sdm_cell_id} if self._sdm_cell_id else {}
            msg = kc.session.msg("execute_request", content, metadata=metadata)
            kc.shell_channel.send(msg)
            return msg["header"]["msg_id"]

        kc.execute = execute
        return kc


def execute_notebook(path: Path, *, env: dict[str, str], session_name: str, timeout: int = 600,
                     output: Path | None = None):
    """Execute ``path`` in a fresh kernel with ``env``; returns the executed notebook."""
    nb = nbformat.read(path, as_version=4)
    client = AttributingNotebookClient(nb, timeout=timeout, kernel_name="python3",
                                       resources={"metadata": {"path": str(path.parent)}})
    kernel_env = dict(env, JPY_SESSION_NAME=session_name)
    try:
        client.execute(env=kernel_env)
    finally:
        if output is not None:
            nbformat.write(nb, output)
    return nb
