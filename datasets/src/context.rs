//! [`Context`]: a driver's session, embedded or connected to a cluster.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::RecordBatch;
use manta_engine::{Block, Object, Resources, parse_bytes};
use manta_flight::auth::Token;
use manta_scheduler::{Client, ClusterClient, EmbeddedConfig, EmbeddedRuntime};

use crate::dataset::Dataset;
use crate::error::{Error, Result};
use crate::file_options::{CsvOptions, JsonOptions};
use crate::plan::{LogicalPlan, ReadOptions};
use crate::source::{FileFormat, Source};

/// How a context starts.
#[derive(Clone, Debug, Default)]
pub struct Config {
    /// The head to join (`host:port`); `None` runs embedded.
    pub address: Option<String>,
    /// The cluster token (`MANTA_TOKEN`; on the head's machine, its token file will do: see
    /// [`manta_scheduler::cluster_token`]). Embedded, the token of the Flight SQL endpoints
    /// the context serves (default: one made for each).
    pub token: Option<Token>,
    /// Embedded: task threads (default: the machine's CPUs).
    pub num_cpus: Option<usize>,
    /// Embedded: object store budget (default: 30% of memory).
    pub object_store_memory: Option<u64>,
    /// Embedded: custom resources offered.
    pub custom_resources: BTreeMap<String, f64>,
    /// An all-to-all operation whose map outputs total at most this many bytes (and at most a
    /// quarter of the object store budget) is reduced by one task reading them whole, instead
    /// of one task per partition each fetching its partition of every map output (default
    /// 64 MiB; `Some(0)` always partitions). `repartition` always makes its `n` blocks.
    pub small_exchange_bytes: Option<u64>,
    /// Past `small_exchange_bytes`, how much map output one reduce task reads: consecutive
    /// partitions of at most a sixteenth of this merge into ranges of about this many bytes,
    /// with at least one task per CPU (default: `small_exchange_bytes`; `Some(0)`: one task
    /// per partition), and at most a quarter of the object store budget. Spark's advisory partition size, for the same reason:
    /// many small reduce tasks cost more in fetches and scheduling than they save.
    pub reduce_task_bytes: Option<u64>,
    /// Whether SQL queries run as stages of tasks (scans, exchanges, partitioned joins and
    /// aggregates; see [`crate::sql_tasks`]); default: on a cluster, yes; embedded, no
    /// (DataFusion already uses every core of this process).
    pub sql_tasks: Option<bool>,
    /// How often a dataset or SQL task runs again after its worker or node failed (default 3;
    /// see [`crate::retries`]). Process-wide, like Ray Data's `DataContext`.
    pub task_max_retries: Option<u32>,
    /// The most lineage this process keeps to make lost objects again (default 1 GiB, or
    /// `MANTA_MAX_LINEAGE_BYTES`; see `manta_engine::lineage`). Process-wide.
    pub max_lineage_bytes: Option<u64>,
}

/// The default of [`Config::small_exchange_bytes`].
pub const SMALL_EXCHANGE_BYTES: u64 = 64 << 20;

impl Config {
    /// From the environment: `MANTA_ADDRESS`, `MANTA_TOKEN`, `MANTA_NUM_CPUS`, `MANTA_OBJECT_STORE_MEMORY`,
    /// `MANTA_RESOURCES` (`name=amount,...`), `MANTA_SMALL_EXCHANGE_BYTES`,
    /// `MANTA_REDUCE_TASK_BYTES`, `MANTA_SQL_TASKS`
    /// (`1`/`true` or `0`/`false`), `MANTA_TASK_MAX_RETRIES`, `MANTA_MAX_LINEAGE_BYTES`.
    pub fn from_env() -> Result<Self> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let num_cpus = var("MANTA_NUM_CPUS")
            .map(|v| {
                v.parse().map_err(|_| {
                    Error::InvalidArgument(format!("MANTA_NUM_CPUS={v:?} is not a whole number"))
                })
            })
            .transpose()?;
        Ok(Self {
            address: var("MANTA_ADDRESS"),
            token: var(manta_scheduler::cluster_token::ENV)
                .map(|v| Token::new(&v))
                .transpose()
                .map_err(|e| Error::InvalidArgument(format!("MANTA_TOKEN: {e}")))?,
            num_cpus,
            object_store_memory: var("MANTA_OBJECT_STORE_MEMORY")
                .map(|v| parse_bytes(&v))
                .transpose()?,
            custom_resources: var("MANTA_RESOURCES")
                .map(|v| Resources::parse_custom(&v))
                .transpose()?
                .unwrap_or_default(),
            small_exchange_bytes: var("MANTA_SMALL_EXCHANGE_BYTES")
                .map(|v| parse_bytes(&v))
                .transpose()?,
            reduce_task_bytes: var("MANTA_REDUCE_TASK_BYTES")
                .map(|v| parse_bytes(&v))
                .transpose()?,
            sql_tasks: var("MANTA_SQL_TASKS")
                .map(|v| match v.trim().to_ascii_lowercase().as_str() {
                    "1" | "true" | "yes" | "on" => Ok(true),
                    "0" | "false" | "no" | "off" => Ok(false),
                    _ => Err(Error::InvalidArgument(format!(
                        "MANTA_SQL_TASKS={v:?}: expected 1 or 0"
                    ))),
                })
                .transpose()?,
            task_max_retries: var("MANTA_TASK_MAX_RETRIES")
                .map(|v| {
                    v.trim().parse().map_err(|_| {
                        Error::InvalidArgument(format!(
                            "MANTA_TASK_MAX_RETRIES={v:?} is not a whole number"
                        ))
                    })
                })
                .transpose()?,
            max_lineage_bytes: var(manta_engine::lineage::MAX_LINEAGE_BYTES_ENV)
                .map(|v| parse_bytes(&v))
                .transpose()?,
        })
    }
}

struct Inner {
    runtime: Option<tokio::runtime::Runtime>,
    client: Client,
    small_exchange_bytes: u64,
    /// See [`Config::reduce_task_bytes`].
    reduce_task_bytes: u64,
    /// The SQL session whose tables `register` and friends add (see [`crate::sql`]).
    sql: datafusion::prelude::SessionContext,
    /// The token the context's services require: the cluster's, or an embedded one given.
    token: Option<Token>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        let Some(runtime) = self.runtime.take() else {
            return;
        };
        if let Client::Cluster(cluster) = &self.client {
            let cluster = Arc::clone(cluster);
            let _ = runtime.block_on(async move {
                tokio::time::timeout(Duration::from_secs(2), cluster.end_job()).await
            });
        }
        runtime.shutdown_timeout(Duration::from_secs(1));
    }
}

/// A driver's session: where pipelines run. Cheap to clone.
///
/// ```no_run
/// let ctx = manta_datasets::Context::new(manta_datasets::Config::default()).unwrap();
/// let n = ctx.read_parquet("data/lineitem/").unwrap().count().unwrap();
/// ```
#[derive(Clone)]
pub struct Context {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("client", &self.inner.client)
            .finish()
    }
}

impl Context {
    /// Starts the embedded runtime, or joins the cluster at `config.address`.
    pub fn new(config: Config) -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(match config.address {
                // DataFusion's operators run on an embedded driver's runtime.
                None => 2,
                Some(_) => manta_scheduler::io_threads::io_threads(),
            })
            .thread_name("manta-driver")
            .enable_all()
            .build()
            .map_err(|source| Error::Io {
                action: "starting",
                path: "the driver's runtime".into(),
                source,
            })?;
        if let Some(retries) = config.task_max_retries {
            crate::retries::set_task_max_retries(retries);
        }
        if let Some(bytes) = config.max_lineage_bytes {
            manta_engine::lineage::set_max_lineage_bytes(bytes);
        }
        let client = match &config.address {
            Some(address) => Client::Cluster(
                runtime.block_on(ClusterClient::connect(address, config.token.as_ref()))?,
            ),
            None => {
                let mut embedded = EmbeddedConfig::default();
                if let Some(cpus) = config.num_cpus {
                    embedded.num_cpus = cpus;
                }
                if let Some(bytes) = config.object_store_memory {
                    embedded.object_store_memory = bytes;
                }
                embedded.custom_resources = config.custom_resources.clone();
                Client::Embedded(EmbeddedRuntime::new(embedded)?)
            }
        };
        let token = match &client {
            Client::Cluster(cluster) => Some(cluster.token().clone()),
            Client::Embedded(_) => config.token.clone(),
        };
        let sql_tasks = config
            .sql_tasks
            .unwrap_or(matches!(client, Client::Cluster(_)));
        let sql = if sql_tasks {
            let cpus = runtime.block_on(client.total_cpus())?;
            crate::sql::session_with_tasks(&client, cpus)
        } else {
            crate::sql::session()
        };
        Ok(Self {
            inner: Arc::new(Inner {
                runtime: Some(runtime),
                client,
                small_exchange_bytes: config.small_exchange_bytes.unwrap_or(SMALL_EXCHANGE_BYTES),
                reduce_task_bytes: config
                    .reduce_task_bytes
                    .or(config.small_exchange_bytes)
                    .unwrap_or(SMALL_EXCHANGE_BYTES),
                sql,
                token,
            }),
        })
    }

    /// The SQL session (a cheap handle; see [`crate::sql`]).
    pub(crate) fn sql_session(&self) -> datafusion::prelude::SessionContext {
        self.inner.sql.clone()
    }

    /// The token this context's services require, if it has one (see [`Config::token`]).
    pub fn token(&self) -> Option<&Token> {
        self.inner.token.as_ref()
    }

    /// See [`Config::small_exchange_bytes`].
    pub(crate) fn small_exchange_bytes(&self) -> u64 {
        self.inner.small_exchange_bytes
    }

    /// See [`Config::reduce_task_bytes`].
    pub(crate) fn reduce_task_bytes(&self) -> u64 {
        self.inner.reduce_task_bytes
    }

    /// Where tasks run.
    pub fn client(&self) -> &Client {
        &self.inner.client
    }

    /// Whether this context is connected to a cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self.inner.client, Client::Cluster(_))
    }

    /// Runs a future on the context's runtime, blocking this thread.
    pub fn block_on<F: Future>(&self, future: F) -> F::Output {
        self.inner
            .runtime
            .as_ref()
            .expect("runtime lives as long as the context")
            .block_on(future)
    }

    /// A handle to the context's runtime (remote calls run on it).
    pub(crate) fn runtime_handle(&self) -> tokio::runtime::Handle {
        self.inner
            .runtime
            .as_ref()
            .expect("runtime lives as long as the context")
            .handle()
            .clone()
    }

    /// Spawns a future on the context's runtime.
    pub(crate) fn spawn<F>(&self, future: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.inner
            .runtime
            .as_ref()
            .expect("runtime lives as long as the context")
            .spawn(future)
    }

    /// Reads Parquet: a file, a directory of files, or a glob.
    ///
    /// ```no_run
    /// # fn main() -> manta_datasets::Result<()> {
    /// let ctx = manta_datasets::Context::new(Default::default())?;
    /// println!("{} rows", ctx.read_parquet("data/lineitem/")?.count()?);
    /// # Ok(()) }
    /// ```
    pub fn read_parquet(&self, path: &str) -> Result<Dataset> {
        self.read_parquet_with(path, ReadOptions::default())
    }

    /// Reads Parquet with options (resources per read task, batch and task sizes).
    pub fn read_parquet_with(&self, path: &str, options: ReadOptions) -> Result<Dataset> {
        self.read(Source::parquet(path)?, options)
    }

    /// Reads CSV files with a header row, their schema inferred from all their rows (see
    /// [`read_csv_with`](Self::read_csv_with) for other delimiters, no header, a given schema).
    pub fn read_csv(&self, path: &str) -> Result<Dataset> {
        self.read_csv_with(path, &CsvOptions::default())
    }

    /// Reads CSV files with options: delimiter, quote, header or not, a schema or the rows to
    /// infer it from.
    ///
    /// ```no_run
    /// use manta_datasets::CsvOptions;
    /// # fn main() -> manta_datasets::Result<()> {
    /// let ctx = manta_datasets::Context::new(Default::default())?;
    /// let tsv = ctx.read_csv_with("data/events.tsv", &CsvOptions::default().delimiter(b'\t'))?;
    /// # Ok(()) }
    /// ```
    pub fn read_csv_with(&self, path: &str, options: &CsvOptions) -> Result<Dataset> {
        self.read(Source::csv(path, options)?, ReadOptions::default())
    }

    /// Reads newline-delimited JSON, the schema inferred from all the rows (see
    /// [`read_json_with`](Self::read_json_with) for a given schema or fewer rows to infer from).
    pub fn read_json(&self, path: &str) -> Result<Dataset> {
        self.read_json_with(path, &JsonOptions::default())
    }

    /// Reads newline-delimited JSON with options: a schema, or the rows to infer it from (then
    /// a field that first appears later fails the read, naming it).
    pub fn read_json_with(&self, path: &str, options: &JsonOptions) -> Result<Dataset> {
        self.read(Source::json(path, options)?, ReadOptions::default())
    }

    /// Reads Arrow IPC files (file or stream format).
    pub fn read_ipc(&self, path: &str) -> Result<Dataset> {
        self.read(
            Source::files(FileFormat::Ipc, path)?,
            ReadOptions::default(),
        )
    }

    /// Reads text files, one row per line in a column `text`.
    pub fn read_text(&self, path: &str) -> Result<Dataset> {
        self.read(
            Source::files(FileFormat::Text, path)?,
            ReadOptions::default(),
        )
    }

    /// Reads whole files, one row per file: columns `path` and `bytes`.
    pub fn read_binary_files(&self, path: &str) -> Result<Dataset> {
        self.read(
            Source::files(FileFormat::Binary, path)?,
            ReadOptions::default(),
        )
    }

    /// Reads any source with options.
    pub fn read(&self, source: Source, options: ReadOptions) -> Result<Dataset> {
        Ok(Dataset::new(
            self.clone(),
            LogicalPlan::read(source, options),
        ))
    }

    /// The integers `0..n` in an `Int64` column `id`.
    pub fn range(&self, n: u64) -> Dataset {
        Dataset::new(
            self.clone(),
            LogicalPlan::read(Source::Range { n }, ReadOptions::default()),
        )
    }

    /// A dataset of these record batches (which must share one schema), one block each.
    /// Embedded, the batches are shared with the store, not copied.
    pub fn from_arrow(&self, batches: Vec<RecordBatch>) -> Result<Dataset> {
        let Some(first) = batches.first() else {
            return Err(Error::InvalidArgument(
                "from_arrow needs at least one batch (its schema)".into(),
            ));
        };
        let schema = first.schema();
        if let Some(other) = batches
            .iter()
            .find(|b| b.schema_ref().fields() != schema.fields())
        {
            return Err(Error::InvalidArgument(format!(
                "from_arrow: batches have different schemas: {schema:?} and {:?}",
                other.schema()
            )));
        }
        match self.client() {
            Client::Embedded(runtime) => {
                let blocks = batches
                    .into_iter()
                    .map(|b| runtime.put_object(Object::Block(Block::from_batch(b))))
                    .collect::<std::result::Result<Vec<_>, _>>()?;
                Ok(Dataset::new(
                    self.clone(),
                    LogicalPlan::blocks(blocks, Some(schema)),
                ))
            }
            Client::Cluster(_) => {
                self.read(Source::inline(schema, batches)?, ReadOptions::default())
            }
        }
    }

    /// A dataset of serde values (structs or maps become columns), one row each, with the
    /// schema inferred from the values.
    ///
    /// ```no_run
    /// # fn main() -> manta_datasets::Result<()> {
    /// #[derive(serde::Serialize)]
    /// struct Point { x: f64, label: String }
    /// let ctx = manta_datasets::Context::new(Default::default())?;
    /// let ds = ctx.from_items(&[Point { x: 1.0, label: "a".into() }])?;
    /// assert_eq!(ds.count()?, 1);
    /// # Ok(()) }
    /// ```
    pub fn from_items<T: serde::Serialize>(&self, items: &[T]) -> Result<Dataset> {
        let values = items
            .iter()
            .map(serde_json::to_value)
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| Error::InvalidArgument(format!("from_items: {e}")))?;
        if values.is_empty() {
            return Err(Error::InvalidArgument(
                "from_items needs at least one item (its schema)".into(),
            ));
        }
        let schema = arrow::json::reader::infer_json_schema_from_iterator(
            values.iter().map(|v| Ok(v.clone())),
        )?;
        let schema = Arc::new(schema);
        let batch_size = ReadOptions::default().batch_size;
        let mut decoder = arrow::json::ReaderBuilder::new(Arc::clone(&schema))
            .with_batch_size(batch_size)
            .build_decoder()?;
        let mut batches = Vec::new();
        for chunk in values.chunks(batch_size) {
            decoder.serialize(chunk)?;
            batches.extend(decoder.flush()?);
        }
        self.from_arrow(batches)
    }
}
