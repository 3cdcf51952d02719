//! One SQL session per Flight SQL client, so that one client's DDL is nobody else's.
//!
//! A client is a connection (its remote address), as a temporary table belongs to a connection
//! in a database server; ADBC and JDBC keep one connection per database handle. Its session
//! shares everything with the endpoint's (the tables the operator serves, including ones
//! registered later; configuration; Manta's planner) except the catalog, which it sees through
//! an overlay ([`OverlayCatalogList`]): tables and views it creates, and tables it drops, are
//! recorded in the overlay and never reach the shared catalog.
//!
//! Sessions are kept for [`IDLE_SESSION`] after a client's last call, and at most
//! [`MAX_SESSIONS`] of them (the least recently used goes first).

use std::collections::HashMap;
use std::fmt::Debug;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use datafusion::catalog::{CatalogProvider, CatalogProviderList, SchemaProvider, TableProvider};
use datafusion::common::{exec_err, not_impl_err};
use datafusion::error::Result;
use datafusion::execution::SessionStateBuilder;
use datafusion::prelude::SessionContext;
use parking_lot::{Mutex, RwLock};

/// Sessions at most.
pub const MAX_SESSIONS: usize = 1024;

/// How long a session outlives its client's last call.
pub const IDLE_SESSION: Duration = Duration::from_secs(3600);

/// The clients' sessions over one shared session.
pub struct Sessions {
    shared: SessionContext,
    by_client: Mutex<HashMap<SocketAddr, (SessionContext, Instant)>>,
}

impl Sessions {
    /// No sessions yet, over `shared`.
    pub fn new(shared: SessionContext) -> Self {
        Self {
            shared,
            by_client: Mutex::default(),
        }
    }

    /// The session of the client at `client` (a new one for a new client; a throwaway one if
    /// the transport does not say who is calling).
    pub fn of(&self, client: Option<SocketAddr>) -> SessionContext {
        let Some(client) = client else {
            return self.new_session();
        };
        let mut sessions = self.by_client.lock();
        let now = Instant::now();
        if let Some((session, used)) = sessions.get_mut(&client) {
            *used = now;
            return session.clone();
        }
        if sessions.len() >= MAX_SESSIONS {
            sessions.retain(|_, (_, used)| now.duration_since(*used) < IDLE_SESSION);
        }
        if sessions.len() >= MAX_SESSIONS
            && let Some(oldest) = sessions
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(c, _)| *c)
        {
            sessions.remove(&oldest);
        }
        let session = self.new_session();
        sessions.insert(client, (session.clone(), now));
        session
    }

    fn new_session(&self) -> SessionContext {
        let state = self.shared.state();
        let catalogs = Arc::new(OverlayCatalogList::new(Arc::clone(state.catalog_list())));
        SessionContext::new_with_state(
            SessionStateBuilder::new_from_existing(state)
                .with_catalog_list(catalogs)
                .build(),
        )
    }
}

/// What a session changed over one shared name: a value of its own, or `None` for dropped.
type Changes<T> = RwLock<HashMap<String, Option<Arc<T>>>>;

/// The shared catalogs, as one session sees them.
#[derive(Debug)]
pub struct OverlayCatalogList {
    shared: Arc<dyn CatalogProviderList>,
    own: Changes<dyn CatalogProvider>,
}

impl OverlayCatalogList {
    /// Nothing changed yet over `shared`.
    pub fn new(shared: Arc<dyn CatalogProviderList>) -> Self {
        Self {
            shared,
            own: RwLock::default(),
        }
    }
}

impl CatalogProviderList for OverlayCatalogList {
    fn register_catalog(
        &self,
        name: String,
        catalog: Arc<dyn CatalogProvider>,
    ) -> Option<Arc<dyn CatalogProvider>> {
        let previous = self.catalog(&name);
        self.own.write().insert(name, Some(catalog));
        previous
    }

    fn catalog_names(&self) -> Vec<String> {
        names(self.shared.catalog_names(), &self.own)
    }

    fn catalog(&self, name: &str) -> Option<Arc<dyn CatalogProvider>> {
        overlay(&self.own, name, || {
            Some(Arc::new(OverlayCatalog {
                shared: self.shared.catalog(name)?,
                own: RwLock::default(),
            }))
        })
    }
}

/// One shared catalog's schemas, as one session sees them.
#[derive(Debug)]
struct OverlayCatalog {
    shared: Arc<dyn CatalogProvider>,
    own: Changes<dyn SchemaProvider>,
}

impl CatalogProvider for OverlayCatalog {
    fn schema_names(&self) -> Vec<String> {
        names(self.shared.schema_names(), &self.own)
    }

    fn schema(&self, name: &str) -> Option<Arc<dyn SchemaProvider>> {
        overlay(&self.own, name, || {
            Some(Arc::new(OverlaySchema {
                shared: self.shared.schema(name)?,
                own: RwLock::default(),
            }))
        })
    }

    fn register_schema(
        &self,
        name: &str,
        schema: Arc<dyn SchemaProvider>,
    ) -> Result<Option<Arc<dyn SchemaProvider>>> {
        let previous = self.schema(name);
        self.own.write().insert(name.to_string(), Some(schema));
        Ok(previous)
    }

    fn deregister_schema(
        &self,
        name: &str,
        cascade: bool,
    ) -> Result<Option<Arc<dyn SchemaProvider>>> {
        let Some(schema) = self.schema(name) else {
            return Ok(None);
        };
        if !cascade && !schema.table_names().is_empty() {
            return not_impl_err!("schema {name} is not empty: DROP SCHEMA ... CASCADE drops it");
        }
        self.own.write().insert(name.to_string(), None);
        Ok(Some(schema))
    }
}

/// One shared schema's tables, as one session sees them.
#[derive(Debug)]
struct OverlaySchema {
    shared: Arc<dyn SchemaProvider>,
    own: Changes<dyn TableProvider>,
}

#[async_trait]
impl SchemaProvider for OverlaySchema {
    fn table_names(&self) -> Vec<String> {
        names(self.shared.table_names(), &self.own)
    }

    async fn table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        let own = self.own.read().get(name).cloned();
        match own {
            Some(own) => Ok(own),
            None => self.shared.table(name).await,
        }
    }

    fn register_table(
        &self,
        name: String,
        table: Arc<dyn TableProvider>,
    ) -> Result<Option<Arc<dyn TableProvider>>> {
        if self.table_exist(&name) {
            return exec_err!("The table {name} already exists");
        }
        self.own.write().insert(name, Some(table));
        Ok(None)
    }

    fn deregister_table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        let own = self.own.read().get(name).cloned();
        let previous = match own {
            Some(own) => own,
            // Shared tables are in memory: looking one up does not wait on anything.
            None => futures::executor::block_on(self.shared.table(name))?,
        };
        if previous.is_some() {
            self.own.write().insert(name.to_string(), None);
        }
        Ok(previous)
    }

    fn table_exist(&self, name: &str) -> bool {
        match self.own.read().get(name) {
            Some(own) => own.is_some(),
            None => self.shared.table_exist(name),
        }
    }
}

/// What a session sees under `name`: its own change, else an overlay of the shared value
/// (`wrap`, `None` if there is none), made once and kept so that later changes stick.
fn overlay<T: ?Sized>(
    own: &Changes<T>,
    name: &str,
    wrap: impl FnOnce() -> Option<Arc<T>>,
) -> Option<Arc<T>> {
    if let Some(own) = own.read().get(name) {
        return own.clone();
    }
    let wrapped = wrap()?;
    own.write()
        .entry(name.to_string())
        .or_insert(Some(wrapped))
        .clone()
}

/// The shared names with a session's changes applied, sorted.
fn names<T: ?Sized>(shared: Vec<String>, own: &Changes<T>) -> Vec<String> {
    let own = own.read();
    let mut names: Vec<String> = shared
        .into_iter()
        .filter(|name| !own.contains_key(name))
        .chain(
            own.iter()
                .filter(|(_, v)| v.is_some())
                .map(|(k, _)| k.clone()),
        )
        .collect();
    names.sort();
    names
}
