//! [`Context`]: a driver's session, embedded or connected to a cluster.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use manta_engine::{Resources, parse_bytes};
use manta_scheduler::{Client, ClusterClient, EmbeddedConfig, EmbeddedRuntime};

use crate::dataset::Dataset;
use crate::error::{Error, Result};
use crate::parquet_source::ParquetSource;
use crate::plan::{LogicalPlan, ReadOptions};

/// How a context starts.
#[derive(Clone, Debug, Default)]
pub struct Config {
    /// The head to join (`host:port`); `None` runs embedded.
    pub address: Option<String>,
    /// Embedded: task threads (default: the machine's CPUs).
    pub num_cpus: Option<usize>,
    /// Embedded: object store budget (default: 30% of memory).
    pub object_store_memory: Option<u64>,
    /// Embedded: custom resources offered.
    pub custom_resources: BTreeMap<String, f64>,
}

impl Config {
    /// From the environment: `MANTA_ADDRESS`, `MANTA_NUM_CPUS`, `MANTA_OBJECT_STORE_MEMORY`,
    /// `MANTA_RESOURCES` (`name=amount,...`).
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
            num_cpus,
            object_store_memory: var("MANTA_OBJECT_STORE_MEMORY")
                .map(|v| parse_bytes(&v))
                .transpose()?,
            custom_resources: var("MANTA_RESOURCES")
                .map(|v| Resources::parse_custom(&v))
                .transpose()?
                .unwrap_or_default(),
        })
    }
}

struct Inner {
    runtime: Option<tokio::runtime::Runtime>,
    client: Client,
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
            .worker_threads(2)
            .thread_name("manta-driver")
            .enable_all()
            .build()
            .map_err(|source| Error::Io {
                action: "starting",
                path: "the driver's runtime".into(),
                source,
            })?;
        let client = match &config.address {
            Some(address) => Client::Cluster(runtime.block_on(ClusterClient::connect(address))?),
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
        Ok(Self {
            inner: Arc::new(Inner {
                runtime: Some(runtime),
                client,
            }),
        })
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

    /// A dataset of the Parquet files at `path` (a file, a directory or a glob).
    pub fn read_parquet(&self, path: &str) -> Result<Dataset> {
        self.read_parquet_with(path, ReadOptions::default())
    }

    /// [`read_parquet`](Self::read_parquet) with options (resources, batch size).
    pub fn read_parquet_with(&self, path: &str, options: ReadOptions) -> Result<Dataset> {
        let source = ParquetSource::open(path)?;
        Ok(Dataset::new(
            self.clone(),
            LogicalPlan {
                source: Arc::new(source),
                read_options: options,
                ops: Vec::new(),
            },
        ))
    }
}
