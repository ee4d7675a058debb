"""The Jupyter server extension: REST for the JupyterLab panel, kernel environment, managed gateway."""
