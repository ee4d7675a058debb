"""`sdm demo`: the one place that joins the notebook side and the gateway (DESIGN §3).

Everything that imports ``sdm_proxy`` lives in this package; the rest of ``sdm_jupyter`` talks to the
gateway over HTTP and the PostgreSQL wire protocol only.
"""
