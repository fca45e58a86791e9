//! PostgreSQL for the outbox tests: the machine's database, a schema per test.

use std::time::Duration;

pub const DEFAULT_PG_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// The test database (`FITVIZ_EVENTS_OUTBOX_TEST_URL`, by default the machine's).
pub fn pg_url() -> String {
    std::env::var("FITVIZ_EVENTS_OUTBOX_TEST_URL").unwrap_or_else(|_| DEFAULT_PG_URL.to_owned())
}

/// Whether PostgreSQL answers. In CI (`CI` set) a missing database fails the test;
/// elsewhere the test is skipped with a loud message.
pub async fn pg_available() -> bool {
    let connected = tokio::time::timeout(
        Duration::from_secs(5),
        tokio_postgres::connect(&pg_url(), tokio_postgres::NoTls),
    )
    .await;
    if matches!(connected, Ok(Ok(_))) {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!(
            "CI is set but PostgreSQL does not answer at {}: the outbox tests must run in CI",
            pg_url()
        );
    }
    eprintln!(
        "\n\n************************************************************\n\
         SKIPPING outbox test: PostgreSQL does not answer at {}.\n\
         Start it (pg_ctlcluster 15 main start) to run this test.\n\
         ************************************************************\n",
        pg_url()
    );
    false
}

/// Returns from the test when there is no database (outside CI).
#[macro_export]
macro_rules! require_postgres {
    () => {
        if !$crate::support::postgres::pg_available().await {
            return;
        }
    };
}

/// A client of the test database; its connection runs on a task.
pub async fn client() -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(&pg_url(), tokio_postgres::NoTls)
        .await
        .expect("connect to PostgreSQL");
    tokio::spawn(connection);
    client
}

/// A schema name unique to this test run (lower case: unquoted SQL).
pub fn unique_schema(test: &str) -> String {
    format!("fvtest_{test}_{}", uuid::Uuid::now_v7().simple())
}

/// Drops the test's schema and everything in it.
pub async fn drop_schema(schema: &str) {
    client()
        .await
        .batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
        .await
        .expect("drop the test schema");
}

/// Terminates the backends whose `application_name` is `name` (only the test's own
/// connections: the names carry the test's schema). Returns how many.
pub async fn terminate_backends(name: &str) -> i64 {
    client()
        .await
        .query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = $1",
            &[&name],
        )
        .await
        .expect("terminate backends")
        .get(0)
}
