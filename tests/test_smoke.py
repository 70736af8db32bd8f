import psycopg


def test_psycopg_roundtrip(gw_dsn):
    with psycopg.connect(gw_dsn) as conn:
        assert conn.execute("select 1 + 1").fetchone() == (2,)
        assert conn.info.parameter_status("session_authorization") == "alice"
