"""A gateway whose data keys are wrapped by AWS KMS, and a credential kept in AWS Secrets Manager,
both against moto's standalone server (the AWS stand-in; real boto3 over real HTTP)."""

from __future__ import annotations

import json

import boto3
import pytest

from sdm_proxy.control import catalog
from sdm_proxy.control.unlock import unlock
from sdm_proxy.errors import VaultError
from sdm_proxy.unlock.message import answer_info
from sdm_proxy.vault.transport import open_from_gateway
from tests.support.gateway_state import GatewayState, signed
from tests.support.moto_server import dummy_aws_environment

pytestmark = pytest.mark.moto


@pytest.fixture
def aws(moto_server, tmp_path, monkeypatch):
    with dummy_aws_environment(tmp_path):
        # boto3 reads per-service endpoints from the environment, as it would in production.
        monkeypatch.setenv("AWS_ENDPOINT_URL_KMS", moto_server.endpoint_url)
        monkeypatch.setenv("AWS_ENDPOINT_URL_SECRETS_MANAGER", moto_server.endpoint_url)
        yield moto_server


def test_init_with_kms_against_moto_server_seals_and_unlocks(aws, tmp_path):
    kms = boto3.client("kms", endpoint_url=aws.endpoint_url)
    key_arn = kms.create_key(Description="sdm test")["KeyMetadata"]["Arn"]
    st = GatewayState.create(tmp_path / "home", kms_key_id=key_arn)
    try:
        assert json.loads(st.home.config_path.read_text())["key_provider"] == {"type": "aws-kms", "key_id": key_arn}
        assert not st.home.master_key_path.exists()
        st.add_datasource("prod", credentials={"read-only": ("app_ro", "kms-wrapped-pw")})
        st.role_leasing("analysts", "prod", "read-only")
        ann = st.add_user("ann", roles_=("analysts",))
        proxy = st.enrolled_proxy()
        body, request, ephemeral = signed(proxy, st.session_token(ann))
        answer = unlock(st.cp, body)
        assert open_from_gateway(answer["sealed_secret"], ephemeral, answer_info(request, answer)).reveal() == b"kms-wrapped-pw"
    finally:
        st.close()


def test_init_with_an_unknown_kms_key_against_moto_server_fails_and_leaves_nothing(aws, tmp_path):
    with pytest.raises(VaultError):
        GatewayState.create(tmp_path / "home", kms_key_id="arn:aws:kms:us-east-1:123456789012:key/nope")
    assert not (tmp_path / "home").exists()


def test_a_failed_init_in_a_directory_that_existed_removes_only_what_it_made(aws, tmp_path):
    """Review: a failed `sdm init` with SDM_HOME=$HOME removed ~/keys and ~/tls with the user's
    own files in them."""
    from sdm_proxy.control.bootstrap import init_home
    from sdm_proxy.home import SdmHome

    home = tmp_path / "home"
    (home / "keys").mkdir(parents=True)
    (home / "keys" / "important.txt").write_text("mine")
    (home / "tls").mkdir()
    (home / "tls" / "mine.pem").write_text("mine")
    (home / "notes.txt").write_text("mine")
    with pytest.raises(VaultError):
        init_home(SdmHome(home), kms_key_id="arn:aws:kms:us-east-1:123456789012:key/nope")
    assert sorted(str(p.relative_to(home)) for p in home.rglob("*")) == [
        "keys", "keys/important.txt", "notes.txt", "tls", "tls/mine.pem"]


def test_secret_ref_in_secrets_manager_against_moto_server_unlocks(aws, tmp_path):
    sm = boto3.client("secretsmanager", endpoint_url=aws.endpoint_url)
    sm.create_secret(Name="prod/db/orders", SecretString=json.dumps({"password": "from-secrets-manager"}))
    st = GatewayState.create(tmp_path / "home")
    try:
        st.add_datasource("prod")
        view = catalog.add_credential(st.cp, st.admin, "prod", "orders", username="app_orders",
                                      secret_ref="aws-sm:prod/db/orders#password")
        assert view["storage"] == "secret-ref" and "from-secrets-manager" not in json.dumps(view)
        st.role_leasing("analysts", "prod", "orders")
        ann = st.add_user("ann", roles_=("analysts",))
        proxy = st.enrolled_proxy()
        body, request, ephemeral = signed(proxy, st.session_token(ann), credential="orders")
        answer = unlock(st.cp, body)
        secret = open_from_gateway(answer["sealed_secret"], ephemeral, answer_info(request, answer))
        assert secret.reveal() == b"from-secrets-manager"
    finally:
        st.close()
