"""The dual-key unlock: the message both sides sign/check, and the proxy-side client.

The control-plane half lives in ``sdm_proxy.control.unlock``; wire listeners only ever import
``sdm_proxy.unlock.client`` so they cannot reach the vault except through a signed request.
"""
