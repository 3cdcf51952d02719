//! The Flight SQL endpoint (`Context::serve_flight_sql`), driven by clients no part of Manta
//! wrote: arrow-flight's Flight SQL client, and Python's ADBC driver (installed with pip into a
//! virtual environment; skipped, saying why, only where pip cannot install it).

use crate::common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use arrow::array::{Array, Int64Array, RecordBatch, StringArray};
use arrow_flight::sql::client::FlightSqlServiceClient;
use arrow_flight::sql::{CommandGetDbSchemas, CommandGetTables, SqlInfo};
use futures::TryStreamExt;
use manta::prelude::*;
use tonic::transport::Channel;

use common::tpch::{self, cells};

type Client = FlightSqlServiceClient<Channel>;

/// A client presenting `token` as a bearer token.
async fn connect(address: &str, token: &manta::Token) -> Client {
    let mut client = connect_without_token(address).await;
    client.set_token(token.secret().to_string());
    client
}

async fn connect_without_token(address: &str) -> Client {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    FlightSqlServiceClient::new(channel)
}

/// Every batch of every endpoint of `info`.
async fn fetch(
    client: &mut Client,
    info: arrow_flight::FlightInfo,
) -> Result<Vec<RecordBatch>, arrow_flight::error::FlightError> {
    let mut batches = Vec::new();
    for endpoint in info.endpoint {
        let stream = client.do_get(endpoint.ticket.unwrap()).await?;
        batches.extend(stream.try_collect::<Vec<_>>().await?);
    }
    Ok(batches)
}

async fn query(client: &mut Client, sql: &str) -> Result<Vec<RecordBatch>, String> {
    let info = client
        .execute(sql.to_string(), None)
        .await
        .map_err(|e| e.to_string())?;
    fetch(client, info).await.map_err(|e| e.to_string())
}

/// An embedded context serving the TPC-H tables and a pipeline `numbers` (id, id squared), to
/// clients that may only query.
fn serving_context() -> (manta::Context, manta::datasets::FlightSqlServer) {
    serving_context_with(manta::datasets::SqlAccess::read_only())
}

fn serving_context_with(
    access: manta::datasets::SqlAccess,
) -> (manta::Context, manta::datasets::FlightSqlServer) {
    let ctx = manta::init_with(manta::Config::default()).unwrap();
    for (table, path) in tpch::tables() {
        ctx.register_parquet(table, &path).unwrap();
    }
    let numbers = ctx.range(1000).with_column("sq", col("id") * col("id"));
    ctx.register("numbers", &numbers).unwrap();
    let options = manta::datasets::FlightSqlOptions {
        access,
        ..Default::default()
    };
    let server = ctx.serve_flight_sql_with("127.0.0.1:0", options).unwrap();
    (ctx, server)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn flight_sql_client_queries_prepares_lists_and_creates_tables() {
    let tmp = tempfile::tempdir().unwrap();
    let (_ctx, server) = serving_context_with(manta::datasets::SqlAccess::writable_under([tmp
        .path()
        .display()
        .to_string()]));
    let address = server.address().to_string();
    runtime().block_on(async {
        let mut client = connect(&address, server.token()).await;

        // A TPC-H query: the answer file's rows.
        let batches = query(&mut client, &tpch::query(3)).await.unwrap();
        assert_eq!(tpch::check(3, &cells(&batches)), None);

        // A prepared statement, bound twice (`?` and `$n` placeholders both work).
        let mut prepared = client
            .prepare(
                "SELECT id, sq FROM numbers WHERE id > ? AND id < $2 ORDER BY id".into(),
                None,
            )
            .await
            .unwrap();
        assert_eq!(prepared.parameter_schema().unwrap().fields().len(), 2);
        for (low, high) in [(10_i64, 20_i64), (500, 503)] {
            let params = RecordBatch::try_from_iter([
                ("$1", std::sync::Arc::new(Int64Array::from(vec![low])) as _),
                ("$2", std::sync::Arc::new(Int64Array::from(vec![high])) as _),
            ])
            .unwrap();
            prepared.set_parameters(params).unwrap();
            let info = prepared.execute().await.unwrap();
            let rows = cells(&fetch(&mut client, info).await.unwrap());
            let expected: Vec<Vec<String>> = (low + 1..high)
                .map(|id| vec![id.to_string(), (id * id).to_string()])
                .collect();
            assert_eq!(rows, expected, "bound {low}, {high}");
        }
        prepared.close().await.unwrap();

        // Metadata: catalogs, schemas, tables with their schemas, server info.
        let info = client.get_catalogs().await.unwrap();
        let catalogs = cells(&fetch(&mut client, info).await.unwrap());
        assert_eq!(catalogs, vec![vec!["datafusion".to_string()]]);
        let info = client
            .get_db_schemas(CommandGetDbSchemas {
                catalog: None,
                db_schema_filter_pattern: None,
            })
            .await
            .unwrap();
        let schemas = cells(&fetch(&mut client, info).await.unwrap());
        assert!(schemas.contains(&vec!["datafusion".to_string(), "public".to_string()]));
        let info = client
            .get_tables(CommandGetTables {
                catalog: None,
                db_schema_filter_pattern: None,
                table_name_filter_pattern: Some("n%".into()),
                table_types: vec![],
                include_schema: true,
            })
            .await
            .unwrap();
        let tables = fetch(&mut client, info).await.unwrap();
        let names = column_strings(&tables, "table_name");
        assert_eq!(names, vec!["nation", "numbers"]);
        let schema_bytes = tables[0]
            .column_by_name("table_schema")
            .unwrap()
            .as_any()
            .downcast_ref::<arrow::array::BinaryArray>()
            .unwrap()
            .value(1)
            .to_vec();
        let numbers_schema =
            arrow::ipc::convert::try_schema_from_ipc_buffer(&schema_bytes).unwrap();
        let fields: Vec<&str> = numbers_schema
            .fields()
            .iter()
            .map(|f| f.name().as_str())
            .collect();
        assert_eq!(fields, vec!["id", "sq"]);
        let info = client
            .get_sql_info(vec![SqlInfo::FlightSqlServerName])
            .await
            .unwrap();
        let sql_info = cells(&fetch(&mut client, info).await.unwrap());
        assert!(sql_info[0][1].contains("Manta"), "{sql_info:?}");

        // CREATE EXTERNAL TABLE, as an update and as a query; then the new tables answer.
        let csv = tmp.path().join("people.csv");
        let ages = [31_i64, 47, 8, 64];
        let text: String = std::iter::once("name,age\n".to_string())
            .chain(ages.iter().enumerate().map(|(i, a)| format!("p{i},{a}\n")))
            .collect();
        std::fs::write(&csv, text).unwrap();
        let changed = client
            .execute_update(
                format!(
                    "CREATE EXTERNAL TABLE people STORED AS CSV LOCATION '{}' \
                     OPTIONS ('format.has_header' 'true')",
                    csv.display()
                ),
                None,
            )
            .await
            .unwrap();
        assert_eq!(changed, 0);
        query(
            &mut client,
            &format!(
                "CREATE EXTERNAL TABLE people_too STORED AS CSV LOCATION '{}' \
                 OPTIONS ('format.has_header' 'true')",
                csv.display()
            ),
        )
        .await
        .unwrap();
        for table in ["people", "people_too"] {
            let sum = cells(
                &query(&mut client, &format!("SELECT sum(age) FROM {table}"))
                    .await
                    .unwrap(),
            );
            assert_eq!(sum, vec![vec![ages.iter().sum::<i64>().to_string()]]);
        }
    });
}

fn column_strings(batches: &[RecordBatch], name: &str) -> Vec<String> {
    batches
        .iter()
        .flat_map(|b| {
            let column = b.column_by_name(name).unwrap();
            let strings = arrow::compute::cast(column, &arrow::datatypes::DataType::Utf8).unwrap();
            let strings = strings.as_any().downcast_ref::<StringArray>().unwrap();
            (0..strings.len())
                .map(|i| strings.value(i).to_string())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Syntax, name and type errors reach the client with DataFusion's message (the position of
/// a syntax error included); a client that gives up on a long query cuts it off; and the
/// server goes on answering.
#[test]
fn bad_queries_and_cancelled_ones_are_clear_errors_and_the_server_goes_on() {
    let (_ctx, server) = serving_context();
    let address = server.address().to_string();
    runtime().block_on(async {
        let mut client = connect(&address, server.token()).await;
        let syntax = query(&mut client, "SELEC id FROM numbers")
            .await
            .unwrap_err();
        assert!(syntax.contains("Line: 1, Column"), "{syntax}");
        let table = query(&mut client, "SELECT * FROM nowhere")
            .await
            .unwrap_err();
        assert!(table.contains("nowhere"), "{table}");
        let column = query(&mut client, "SELECT nothing FROM numbers")
            .await
            .unwrap_err();
        assert!(column.contains("nothing"), "{column}");
        let types = query(&mut client, "SELECT id + true FROM numbers")
            .await
            .unwrap_err();
        assert!(types.contains("Boolean"), "{types}");
        let bound = client
            .prepare("SELECT id FROM numbers WHERE id = $1".into(), None)
            .await
            .unwrap()
            .execute()
            .await
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert!(bound.contains("$1"), "an unbound parameter: {bound}");

        // A query that would run for minutes (a self-join with 600 matches per row); the
        // client gives up on it and the call ends with that error.
        let long = "SELECT count(*) FROM lineitem a JOIN lineitem b \
                    ON a.l_orderkey % 1000 = b.l_orderkey % 1000";
        let info = client.execute(long.into(), None).await.unwrap();
        let mut other = client.clone();
        let cancelled =
            tokio::time::timeout(Duration::from_millis(300), fetch(&mut other, info)).await;
        assert!(cancelled.is_err(), "the client's deadline ended the call");

        // The server goes on answering.
        let count = cells(
            &query(&mut client, "SELECT count(*) FROM numbers")
                .await
                .unwrap(),
        );
        assert_eq!(count, vec![vec!["1000".to_string()]]);
    });
}

/// Python's ADBC Flight SQL driver runs TPC-H query 1 and a prepared statement with a bound
/// `?`, and gets the right answers: presenting the token as a header, and as a password.
#[test]
fn python_adbc_driver_gets_the_right_answers() {
    let Some(python) = adbc_python() else {
        return;
    };
    let (ctx, server) = serving_context();
    let uri = format!("grpc://{}", server.address());
    let tmp = tempfile::tempdir().unwrap();

    let q1 = tmp.path().join("q1.sql");
    std::fs::write(&q1, tpch::query(1)).unwrap();
    let rows = run_adbc(&python, &uri, server.token(), Login::Header, &q1, None);
    assert_eq!(tpch::check(1, &rows), None);

    let counted = tmp.path().join("count.sql");
    std::fs::write(
        &counted,
        "SELECT count(*) FROM lineitem WHERE l_quantity > ?",
    )
    .unwrap();
    let rows = run_adbc(
        &python,
        &uri,
        server.token(),
        Login::UserPassword,
        &counted,
        Some(45),
    );
    let expected = cells(
        &ctx.sql("SELECT count(*) FROM lineitem WHERE l_quantity > 45")
            .unwrap()
            .to_arrow()
            .unwrap(),
    );
    assert_eq!(rows, expected);
}

/// How the ADBC client presents the token.
#[derive(Clone, Copy, Debug)]
enum Login {
    /// As an `authorization: Bearer` header on every call.
    Header,
    /// As the password of a handshake, then as the bearer token the handshake answers.
    UserPassword,
}

fn run_adbc(
    python: &Path,
    uri: &str,
    token: &manta::Token,
    login: Login,
    query: &Path,
    param: Option<i64>,
) -> Vec<Vec<String>> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/adbc_query.py");
    let mut command = Command::new(python);
    command.arg(script).arg(uri).arg(query);
    command.env("MANTA_TOKEN", token.secret());
    if let Login::UserPassword = login {
        command.env("ADBC_LOGIN", "1");
    }
    if let Some(param) = param {
        command.arg(param.to_string());
    }
    let out = command.output().unwrap();
    assert!(
        out.status.success(),
        "adbc_query.py failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|line| line.split('\t').map(str::to_string).collect())
        .collect()
}

/// A Python with `adbc_driver_flightsql` and `pyarrow`: a virtual environment kept in the user's
/// cache, made with pip on first use. `None`, with the reason printed, where that cannot be.
fn adbc_python() -> Option<PathBuf> {
    let home = std::env::var_os("HOME").map(PathBuf::from)?;
    let venv = home.join(".cache/manta/adbc-venv");
    let python = venv.join("bin/python");
    let ready = |python: &Path| {
        Command::new(python)
            .args(["-c", "import adbc_driver_flightsql.dbapi, pyarrow"])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if ready(&python) {
        return Some(python);
    }
    let made = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&venv)
        .output();
    if !made.as_ref().is_ok_and(|o| o.status.success()) {
        println!("SKIPPED: python3 -m venv failed: {made:?}");
        return None;
    }
    let pip = Command::new(venv.join("bin/pip"))
        .args(["install", "--quiet", "adbc_driver_flightsql", "pyarrow"])
        .output();
    match pip {
        Ok(out) if out.status.success() && ready(&python) => Some(python),
        other => {
            println!("SKIPPED: pip could not install adbc_driver_flightsql and pyarrow: {other:?}");
            None
        }
    }
}

/// Without the token, or with another, every call is UNAUTHENTICATED and nothing runs: not a
/// query, not a statement that would make a table. With the token as a handshake's password,
/// the handshake answers the bearer token and queries work.
#[test]
fn a_client_without_the_token_or_with_another_is_refused_before_anything_runs() {
    let (ctx, server) = serving_context();
    let address = server.address().to_string();
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("t.csv");
    std::fs::write(&file, "a\n1\n").unwrap();
    let create = format!(
        "CREATE EXTERNAL TABLE sneaky STORED AS CSV LOCATION '{}' OPTIONS ('format.has_header' 'true')",
        file.display()
    );
    runtime().block_on(async {
        let anonymous = connect_without_token(&address).await;
        let wrong = connect(&address, &manta::Token::generate()).await;
        for mut client in [anonymous, wrong] {
            for sql in ["SELECT 1", create.as_str()] {
                let refused = client
                    .execute(sql.to_string(), None)
                    .await
                    .unwrap_err()
                    .to_string();
                // tonic says UNAUTHENTICATED in words.
                assert!(
                    refused.contains("does not have valid authentication credentials"),
                    "{sql}: {refused}"
                );
            }
            let refused = client
                .handshake("manta", "not the token")
                .await
                .unwrap_err();
            let refused = refused.to_string();
            assert!(
                refused.contains("does not have valid authentication credentials"),
                "{refused}"
            );
        }
        let mut login = connect_without_token(&address).await;
        login
            .handshake("anyone", server.token().secret())
            .await
            .unwrap();
        let count = cells(
            &query(&mut login, "SELECT count(*) FROM numbers")
                .await
                .unwrap(),
        );
        assert_eq!(count, vec![vec!["1000".to_string()]]);
    });
    // Nothing an outsider sent ran: no table was made.
    assert!(ctx.sql("SELECT * FROM sneaky").is_err());
}

/// By default clients only query: statements that read or write files or change the catalog
/// are PERMISSION_DENIED and change nothing. With a writable directory, they run there and
/// only there.
#[test]
fn flight_sql_is_read_only_unless_told_where_clients_may_write() {
    let tmp = tempfile::tempdir().unwrap();
    let allowed = tmp.path().join("allowed");
    let outside = tmp.path().join("outside");
    std::fs::create_dir_all(&allowed).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    for dir in [&allowed, &outside] {
        std::fs::write(dir.join("t.csv"), "a\n1\n2\n").unwrap();
    }
    let create = |name: &str, dir: &Path| {
        format!(
            "CREATE EXTERNAL TABLE {name} STORED AS CSV LOCATION '{}' \
             OPTIONS ('format.has_header' 'true')",
            dir.join("t.csv").display()
        )
    };
    let copy = |dir: &Path| {
        format!(
            "COPY (SELECT 1 AS x) TO '{}' STORED AS CSV",
            dir.join("copied.csv").display()
        )
    };
    let denied = |result: Result<Vec<RecordBatch>, String>, what: &str| {
        let error = result.expect_err(what);
        // tonic says PERMISSION_DENIED in words.
        assert!(
            error.contains("does not have permission"),
            "{what}: {error}"
        );
    };

    let (ctx, server) = serving_context();
    runtime().block_on(async {
        let mut client = connect(&server.address().to_string(), server.token()).await;
        for statement in [
            create("shadow", &outside),
            copy(&outside),
            "CREATE VIEW v AS SELECT 1".to_string(),
            "DROP TABLE numbers".to_string(),
            "SET datafusion.execution.batch_size = 1".to_string(),
            "INSERT INTO numbers VALUES (1, 1)".to_string(),
        ] {
            denied(query(&mut client, &statement).await, &statement);
            let update = client.execute_update(statement.clone(), None).await;
            assert!(update.is_err(), "{statement} ran as an update");
        }
        // Queries still run.
        let count = cells(
            &query(&mut client, "SELECT count(*) FROM numbers")
                .await
                .unwrap(),
        );
        assert_eq!(count, vec![vec!["1000".to_string()]]);
    });
    assert!(!outside.join("copied.csv").exists());
    assert!(ctx.sql("SELECT * FROM shadow").is_err());
    assert!(ctx.sql("SELECT * FROM v").is_err());
    drop((ctx, server));

    let (ctx, server) = serving_context_with(manta::datasets::SqlAccess::writable_under([allowed
        .display()
        .to_string()]));
    runtime().block_on(async {
        let mut client = connect(&server.address().to_string(), server.token()).await;
        query(&mut client, &create("mine", &allowed)).await.unwrap();
        query(&mut client, &copy(&allowed)).await.unwrap();
        denied(
            query(&mut client, &create("theirs", &outside)).await,
            "outside",
        );
        denied(query(&mut client, &copy(&outside)).await, "copy outside");
        let sneaky = format!(
            "CREATE EXTERNAL TABLE sneaky STORED AS CSV LOCATION '{}/../outside/t.csv'",
            allowed.display()
        );
        denied(query(&mut client, &sneaky).await, "a path climbing out");
        denied(
            query(&mut client, "SET datafusion.execution.batch_size = 1").await,
            "SET",
        );
        let sum = cells(&query(&mut client, "SELECT sum(a) FROM mine").await.unwrap());
        assert_eq!(sum, vec![vec!["3".to_string()]]);
    });
    assert!(allowed.join("copied.csv").exists());
    assert!(!outside.join("copied.csv").exists());
    assert!(ctx.sql("SELECT * FROM theirs").is_err());
}

/// A query nested deeper than a thread's stack could plan (a 40 KB chain of `+`, or of `OR`)
/// is a clear error and the server goes on; one as deep as the limit allows plans and answers
/// right.
#[test]
fn deeply_nested_queries_are_refused_and_the_server_goes_on() {
    let (_ctx, server) = serving_context();
    runtime().block_on(async {
        let mut client = connect(&server.address().to_string(), server.token()).await;
        let plus = format!("SELECT 1{}", "+1".repeat(20_000));
        let or = format!(
            "SELECT count(*) FROM numbers WHERE id = 0{}",
            (1..10_000)
                .map(|i| format!(" OR id = {i}"))
                .collect::<String>()
        );
        for deep in [plus, or] {
            let error = query(&mut client, &deep).await.unwrap_err();
            assert!(error.contains("past the limit"), "{error}");
        }
        // Under the limit: 901 ones added up, and 450 ids picked one OR at a time.
        let sum = cells(
            &query(&mut client, &format!("SELECT 1{}", "+1".repeat(900)))
                .await
                .unwrap(),
        );
        assert_eq!(sum, vec![vec!["901".to_string()]]);
        let picked = format!(
            "SELECT count(*) FROM numbers WHERE id = 0{}",
            (1..450)
                .map(|i| format!(" OR id = {}", i * 2))
                .collect::<String>()
        );
        let count = cells(&query(&mut client, &picked).await.unwrap());
        assert_eq!(count, vec![vec!["450".to_string()]]);
    });
}

/// Each client (connection) has a session of its own: what one creates or drops, the others
/// and the operator's context never see; tables the operator registers later, every client
/// sees.
#[test]
fn each_clients_ddl_stays_in_its_own_session() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("t.csv"), "a\n1\n2\n").unwrap();
    let (ctx, server) = serving_context_with(manta::datasets::SqlAccess::writable_under([tmp
        .path()
        .display()
        .to_string()]));
    let address = server.address().to_string();
    let tables = async |client: &mut Client| {
        let info = client
            .get_tables(CommandGetTables {
                catalog: None,
                db_schema_filter_pattern: None,
                table_name_filter_pattern: None,
                table_types: vec![],
                include_schema: false,
            })
            .await
            .unwrap();
        column_strings(&fetch(client, info).await.unwrap(), "table_name")
    };
    let runtime = runtime();
    let (mut a, mut b) = runtime.block_on(async {
        let mut a = connect(&address, server.token()).await;
        let mut b = connect(&address, server.token()).await;
        let create = format!(
            "CREATE EXTERNAL TABLE mine STORED AS CSV LOCATION '{}' \
             OPTIONS ('format.has_header' 'true')",
            tmp.path().join("t.csv").display()
        );
        query(&mut a, &create).await.unwrap();
        query(&mut a, "CREATE VIEW v AS SELECT sum(a) AS s FROM mine")
            .await
            .unwrap();
        query(&mut a, "DROP TABLE numbers").await.unwrap();

        // A sees its own catalog.
        let sum = cells(&query(&mut a, "SELECT s FROM v").await.unwrap());
        assert_eq!(sum, vec![vec!["3".to_string()]]);
        assert!(query(&mut a, "SELECT * FROM numbers").await.is_err());
        let a_tables = tables(&mut a).await;
        assert!(a_tables.contains(&"mine".to_string()), "{a_tables:?}");
        assert!(!a_tables.contains(&"numbers".to_string()), "{a_tables:?}");

        // B, the shared one.
        for name in ["mine", "v"] {
            let error = query(&mut b, &format!("SELECT * FROM {name}"))
                .await
                .expect_err(name);
            assert!(error.contains("not found"), "{name}: {error}");
        }
        let count = cells(&query(&mut b, "SELECT count(*) FROM numbers").await.unwrap());
        assert_eq!(count, vec![vec!["1000".to_string()]]);
        let b_tables = tables(&mut b).await;
        assert!(
            b_tables.contains(&"numbers".to_string()) && !b_tables.contains(&"mine".to_string())
        );
        // B may make a table of the same name; it is B's.
        query(&mut b, &create).await.unwrap();
        query(&mut b, "DROP TABLE mine").await.unwrap();
        let sum = cells(&query(&mut a, "SELECT sum(a) FROM mine").await.unwrap());
        assert_eq!(sum, vec![vec!["3".to_string()]]);
        (a, b)
    });

    // The operator's context saw none of it, and what it registers now, both clients see.
    assert!(ctx.sql("SELECT * FROM mine").is_err());
    assert!(ctx.sql("SELECT * FROM v").is_err());
    ctx.register("later", &ctx.range(7)).unwrap();
    runtime.block_on(async {
        for client in [&mut a, &mut b] {
            let count = cells(&query(client, "SELECT count(*) FROM later").await.unwrap());
            assert_eq!(count, vec![vec!["7".to_string()]]);
        }
    });
    assert_eq!(
        cells(
            &ctx.sql("SELECT count(*) FROM numbers")
                .unwrap()
                .to_arrow()
                .unwrap()
        ),
        vec![vec!["1000".to_string()]]
    );
}

#[test]
fn a_tls_endpoint_answers_over_tls_and_a_plain_client_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = common::TestCa::new(tmp.path());
    manta::flight::tls::trust_file(&ca.ca).unwrap();
    let ctx = manta::init_with(manta::Config::default()).unwrap();
    let numbers = ctx.range(1000).with_column("sq", col("id") * col("id"));
    ctx.register("numbers", &numbers).unwrap();
    let options = manta::datasets::FlightSqlOptions {
        tls: Some(manta::flight::tls::ServerIdentity::from_files(&ca.cert, &ca.key).unwrap()),
        ..Default::default()
    };
    let server = ctx.serve_flight_sql_with("127.0.0.1:0", options).unwrap();
    let port = server.address().port();
    runtime().block_on(async {
        let channel = manta::flight::tls::endpoint(&format!("https://127.0.0.1:{port}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut client = FlightSqlServiceClient::new(channel);
        client.set_token(server.token().secret().to_string());
        let answer = cells(
            &query(&mut client, "SELECT count(*), sum(sq) FROM numbers")
                .await
                .unwrap(),
        );
        let expected: i64 = (0..1000i64).map(|i| i * i).sum();
        assert_eq!(answer, vec![vec!["1000".to_string(), expected.to_string()]]);

        // A plain client gets an error (at connecting or at its first call), not an answer.
        let plain = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
            .unwrap()
            .connect()
            .await;
        if let Ok(channel) = plain {
            let mut plain = FlightSqlServiceClient::new(channel);
            plain.set_token(server.token().secret().to_string());
            assert!(query(&mut plain, "SELECT 1").await.is_err());
        }
    });
}
