"""%sdm in a real IPython kernel: the parts that need only the control API (ls, whoami, activity,
configuration, completion, and every one-line error that is decided before touching a database)."""

from __future__ import annotations

import pytest

from tests.support.api_server import free_port

pytestmark = [pytest.mark.postgres, pytest.mark.jupyter]


@pytest.fixture
def kernel(gw_api, kernel_factory):
    k = kernel_factory(gw_api.kernel_env("analyst"))
    k.ok("%load_ext sdm_jupyter")
    return k


def one_line_usage_error(result) -> str:
    """The cell failed with a UsageError whose message is one line, and no Python traceback."""
    assert result.status == "error", result
    assert result.reply["ename"] == "UsageError", result.reply
    message = result.reply["evalue"]
    # IPython prints a UsageError as one stderr line and sends no traceback.
    assert result.error is None and result.stderr.strip() == f"UsageError: {message}"
    assert "\n" not in message and "Traceback" not in result.stderr
    return message


def test_ls_whoami_activity(kernel, gw_api):
    ls = kernel.ok("df = %sdm ls\nprint(df.to_dict('records'))")
    assert "'datasource': 'prod'" in ls.stdout and "'credential': 'read-only'" in ls.stdout
    assert "'via': 'role:analysts'" in ls.stdout

    who = kernel.ok("%sdm whoami")
    assert "user: analyst" in who.result and f"gateway: {gw_api.api_url}" in who.result
    assert "sdms." not in who.result  # no token in the output

    act = kernel.ok("a = %sdm activity -n 5\nprint(len(a), sorted(set(a['user'])), list(a.columns)[:3])")
    assert "['analyst']" in act.stdout and "['ts', 'type', 'user']" in act.stdout


def test_config_traits(kernel):
    kernel.ok("%config SdmMagics.limit = 7")
    out = kernel.ok("m = [c for c in get_ipython().configurables if type(c).__name__ == 'SdmMagics'][0]\n"
                    "print(m.limit, m.fetch_size)")
    assert out.stdout.split() == ["7", "10000"]
    helptext = kernel.ok("%config SdmMagics")
    assert "SdmMagics.limit" in helptext.stdout and "SdmMagics.gateway_url" in helptext.stdout


def test_usage_errors_are_one_line(kernel):
    cases = {
        "%sdm sql": "which datasource?",
        "%sdm sql prod": "no query to run",
        "%%sdm sql prod\n   \n": "no query to run",
        "%sdm sql nowhere SELECT 1": "no datasource 'nowhere' that you may use (yours: prod",
        "%sdm sql prod --as superuser SELECT 1": "you hold no lease or grant for credential 'superuser'",
        "%sdm sql prod SELECT :not_defined_anywhere": ":not_defined_anywhere has no value",
        "%sdm sql prod --limit zero SELECT 1": "--limit: invalid N 'zero'",
        "%sdm sql prod --bogus SELECT 1": "unknown option --bogus",
        "%sdm frobnicate": "unknown sub-command 'frobnicate'",
        "%sdm connect": "which datasource?",
        "%sdm activity -n -3": "-n: invalid N",
    }
    for code, expected in cases.items():
        message = one_line_usage_error(kernel.run(code))
        assert expected in message, (code, message)
    kernel.ok("print('still usable')")


def test_unreachable_gateway_is_one_line(gw_api, kernel_factory):
    k = kernel_factory(gw_api.kernel_env("analyst", SDM_GATEWAY_URL=f"http://127.0.0.1:{free_port()}"))
    k.ok("%load_ext sdm_jupyter")
    message = one_line_usage_error(k.run("%sdm sql prod SELECT 1"))
    assert "cannot reach the sdm gateway" in message and "start it with `sdm gateway`" in message


def test_bad_key_is_one_line(gw_api, kernel_factory):
    k = kernel_factory(gw_api.kernel_env("analyst", SDM_API_KEY="sdmk_wrong"))
    k.ok("%load_ext sdm_jupyter")
    message = one_line_usage_error(k.run("%sdm ls"))
    assert "refused the key from SDM_API_KEY" in message and "sdmk_wrong" not in message


def test_no_identity_is_one_line(gw_api, kernel_factory):
    env = gw_api.kernel_env("analyst")
    del env["SDM_API_KEY"]
    k = kernel_factory(env)
    k.ok("%load_ext sdm_jupyter")
    assert "set SDM_API_KEY" in one_line_usage_error(k.run("%sdm whoami"))


def test_tab_completion(kernel):
    def complete(code: str) -> list[str]:
        kernel.kc.complete(code, len(code))
        reply = kernel.kc.get_shell_msg(timeout=30)
        return reply["content"]["matches"]

    assert "sql" in complete("%sdm s")
    assert "prod" in complete("%sdm sql pr")
    assert "prod" in complete("%%sdm sql ")
    assert complete("%sdm connect prod --as ") == ["read-only"]
