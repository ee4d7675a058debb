"""The notebook side of sdm (magic and server extension).

This package never imports the gateway's control plane or vault: it reaches the gateway over HTTP
and the database wire protocols only, so it can be installed in a user image on its own. (The one
exception is ``sdm_jupyter.demo``, the ``sdm demo`` command, which joins both sides on purpose.)

    %load_ext sdm_jupyter          # the %sdm magic
    jupyter server extension list  # shows sdm_jupyter (REST under /sdm/api/)
"""

__version__ = "0.1.0"


def load_ipython_extension(ipython) -> None:
    from .magic import load_ipython_extension as _load

    _load(ipython)


def unload_ipython_extension(ipython) -> None:
    from .magic import unload_ipython_extension as _unload

    _unload(ipython)


def _jupyter_server_extension_points():
    from .server.extension import SdmExtension

    return [{"module": "sdm_jupyter", "app": SdmExtension}]
