"""The control plane on PostgreSQL state (the scale-out setup): same models and migrations, and two
control planes (as two gateway processes would) sharing one database and one audit chain."""

from __future__ import annotations

import secrets
import threading

import psycopg
import pytest

from sdm_proxy.audit.verify import verify_db
from sdm_proxy.control import roles
from sdm_proxy.control.context import ControlPlane
from sdm_proxy.control.unlock import unlock
from tests.support.gateway_state import GatewayState, signed

pytestmark = pytest.mark.postgres


@pytest.fixture
def state_url(pg_cluster):
    name = f"sdm_state_{secrets.token_hex(4)}"
    with psycopg.connect(**{**pg_cluster.connect_kwargs("bootstrap"), "dbname": "postgres"}, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    user, pw = pg_cluster.superuser, pg_cluster.superuser_password
    yield f"postgresql+psycopg://{user}:{pw}@{pg_cluster.host}:{pg_cluster.port}/{name}"


def test_init_and_unlock_on_postgres_state(state_url, tmp_path):
    st = GatewayState.create(tmp_path / "home", database_url=state_url)
    try:
        st.add_datasource("prod", credentials={"read-only": ("app_ro", "pg-state-pw")})
        st.role_leasing("analysts", "prod", "read-only")
        ann = st.add_user("ann", roles_=("analysts",))
        answer = unlock(st.cp, signed(st.enrolled_proxy(), st.session_token(ann))[0])
        assert answer["db_user"] == "app_ro"
        assert verify_db(st.cp.db, st.cp.audit.signer.public_key).ok
    finally:
        st.close()


def test_two_control_planes_share_state_and_one_audit_chain(state_url, tmp_path):
    st = GatewayState.create(tmp_path / "home", database_url=state_url)
    other = ControlPlane.open(st.home)  # a second gateway process on the same state
    try:
        st.add_datasource("prod", credentials={"read-only": ("app_ro", "pw")})
        errors: list[Exception] = []

        def make_roles(cp, prefix):
            try:
                for i in range(15):
                    roles.create_role(cp, st.admin, f"{prefix}{i}")
            except Exception as exc:  # noqa: BLE001 - collected and asserted below
                errors.append(exc)

        threads = [threading.Thread(target=make_roles, args=(cp, p)) for cp, p in ((st.cp, "a"), (other, "b"))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        # a change made through one is seen at once by the other
        assert len(roles.list_roles(other, st.admin)) == 30
        report = verify_db(other.db, other.audit.signer.public_key)
        assert report.ok and report.events >= 32, report.summary()
    finally:
        other.close()
        st.close()


def test_a_retried_batch_skips_what_a_late_commit_chained_on_postgres_state(state_url, tmp_path):
    """The retry's look for events already chained runs inside its own transaction, after the head
    row is locked (``SELECT ... FOR UPDATE``): a batch chained in between by another connection
    (a COMMIT that completed late) is seen, not chained twice."""
    from sdm_proxy.audit.events import query_event
    from sdm_proxy.audit.records import records_of

    st = GatewayState.create(tmp_path / "home", database_url=state_url)
    other = ControlPlane.open(st.home)  # another connection to the same chain
    try:
        events = [query_event(user="u", session_id="s", proxy_id="p", datasource="d", credential="c",
                              db_user="x", protocol="postgres", query=f"SELECT {n}") for n in range(6)]
        records = records_of(events)
        other.audit.append_spooled(records[:4])  # the "lost" commit, done by someone else
        assert st.cp.audit.append_spooled(records, only_new=True) == 2
        ids = [e.id for e in st.cp.audit.iter_events() if e.type == "query"]
        assert ids == [e.id for e in events]
        assert verify_db(st.cp.db, st.cp.audit.signer.public_key).ok
    finally:
        other.close()
        st.close()


def test_two_gateways_adding_the_same_user_at_once_get_a_conflict_not_an_internal_error(state_url, tmp_path):
    """Each checks that the name is free, then inserts: the second insert waits on the first's
    uncommitted row and then breaks the unique constraint. That is a 409 Conflict (review: it was
    an IntegrityError, a 500 from the API)."""
    from sdm_proxy.control import users
    from sdm_proxy.control.models import User
    from sdm_proxy.errors import Conflict

    st = GatewayState.create(tmp_path / "home", database_url=state_url)
    other = ControlPlane.open(st.home)
    inserted, release = threading.Event(), threading.Event()

    def first_gateway():
        with st.cp.db.transaction() as s:
            s.add(User(name="zoe", is_admin=False))
            s.flush()  # the row exists, uncommitted: the other gateway's check does not see it
            inserted.set()
            release.wait(10)

    try:
        t = threading.Thread(target=first_gateway)
        t.start()
        assert inserted.wait(10)
        threading.Timer(0.5, release.set).start()  # commit while the other insert waits on the row
        with pytest.raises(Conflict, match="changed concurrently"):
            users.add_user(other, st.admin, "zoe")
        t.join()
    finally:
        release.set()
        other.close()
        st.close()
